"""The device seam: what a Device carries, and what --device=gpu says without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from fraudpipe.config import load_settings
from fraudpipe.devices import CPU, Device, DeviceUnavailable, device, gpu_problems, to_numpy
from fraudpipe.model import train_booster


def test_the_cpu_carries_numpy_and_lightgbm_cpu() -> None:
    assert device("cpu") is CPU
    assert CPU.xp.__name__ == "array_api_compat.numpy"
    x = CPU.xp.asarray(np.arange(3))
    assert to_numpy(x) is x  # numpy through the namespace: no copy
    assert CPU.lightgbm_params() == {"device_type": "cpu"}
    assert Device("gpu").lightgbm_params() == {"device_type": "cuda"}
    with pytest.raises(DeviceUnavailable, match="cpu or gpu"):
        device("tpu")


def test_training_takes_its_device_from_the_device() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (X[:, 0] > 0.8).astype(np.int8)
    cfg = load_settings(None, {"train": {"num_boost_round": 3, "threads": 1}}).train
    booster = train_booster(X, y, cfg, ["a", "b", "c"], device=CPU)
    assert "[device_type: cpu]" in booster.model_to_string()


@pytest.mark.skipif(not gpu_problems(("cupy",)), reason="cupy and a CUDA device are here")
def test_without_a_gpu_the_gpu_namespace_says_what_is_missing() -> None:
    with pytest.raises(DeviceUnavailable, match="cupy"):
        _ = Device("gpu").xp
