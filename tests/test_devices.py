"""The device seam: what a Device carries, and what --device=gpu says without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fraudpipe.config import load_settings
from fraudpipe.devices import CPU, Device, DeviceUnavailable, device, gpu_problems, to_numpy
from fraudpipe.model import GPU_MAX_BIN, train_booster
from fraudpipe.scoring import MODEL_FILE, open_scorer
from tests.test_forest import ulps
from tests.test_scoring import rows


def test_the_cpu_carries_numpy_and_lightgbm_cpu() -> None:
    assert device("cpu") is CPU
    assert CPU.xp.__name__ == "array_api_compat.numpy"
    x = CPU.xp.asarray(np.arange(3))
    assert to_numpy(x) is x  # numpy through the namespace: no copy
    assert CPU.lightgbm_params() == {"device_type": "cpu"}
    assert Device("gpu").lightgbm_params() == {"device_type": "gpu", "gpu_use_dp": True}
    with pytest.raises(DeviceUnavailable, match="cpu or gpu"):
        device("tpu")


def test_training_takes_its_device_from_the_device() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (X[:, 0] > 0.8).astype(np.int8)
    cfg = load_settings(None, {"train": {"num_boost_round": 3, "threads": 1}}).train
    booster = train_booster(X, y, cfg, ["a", "b", "c"], device=CPU)
    assert "[device_type: cpu]" in booster.model_to_string()


@pytest.mark.skipif(not gpu_problems("cuda"), reason="cupy and a CUDA device are here")
def test_without_a_gpu_the_gpu_namespace_says_what_is_missing() -> None:
    with pytest.raises(DeviceUnavailable, match=r"NVIDIA driver|cupy"):
        _ = Device("gpu").xp


_OPENCL = gpu_problems("opencl")


@pytest.mark.skipif(
    bool(_OPENCL),
    reason="no OpenCL device for LightGBM's GPU learner (on a CPU: apt install pocl-opencl-icd): "
    + "; ".join(_OPENCL),
)
def test_a_model_trained_on_the_gpu_learner_scores_as_any_model(tmp_path: Path) -> None:
    """LightGBM's GPU (OpenCL) learner, as train runs it on --device=gpu: on a GPU node the
    driver's OpenCL, in CI PoCL's on the CPU. Its model is a model.txt like any other: every
    scorer follows it (the walk on cupy: test_gpu.py), and it is the CPU learner's model but
    for ties in gain (float64 histograms)."""
    X, y = rows(20_000, seed=10)
    train = {"num_boost_round": 40, "threads": 2, "max_bin": GPU_MAX_BIN}
    cfg = load_settings(None, {"train": train}).train
    names = [f"f{i}" for i in range(X.shape[1])]
    on_gpu = train_booster(X, y, cfg, names, device=Device("gpu"))
    on_cpu = train_booster(X, y, cfg, names, device=CPU)
    assert "[device_type: gpu]" in on_gpu.model_to_string()
    (tmp_path / MODEL_FILE).write_text(on_gpu.model_to_string())
    Z, _ = rows(5_000, seed=11)
    expected = on_gpu.predict(Z.astype(np.float64))
    for kind in ("arrays", "compiled"):
        assert ulps(open_scorer(kind, tmp_path, {}).score(Z), expected) <= 1, kind
    assert np.abs(expected - on_cpu.predict(Z.astype(np.float64))).max() < 1e-3


def test_the_gpu_learner_refuses_more_bins_than_it_holds() -> None:
    """train.max_bin's default (4095) is more than LightGBM's OpenCL learner holds: training
    says so, naming the field, before LightGBM fails; 255 trains (the test above)."""
    X, y = rows(1_000, seed=12)
    cfg = load_settings(None, {"train": {"num_boost_round": 2}}).train
    names = [f"f{i}" for i in range(X.shape[1])]
    with pytest.raises(ValueError, match=r"train\.max_bin is 4095.*set train\.max_bin: 255"):
        train_booster(X, y, cfg, names, device=Device("gpu"))
    assert "[max_bin: 4095]" in train_booster(X, y, cfg, names, device=CPU).model_to_string()


@pytest.mark.skipif(bool(_OPENCL), reason="needs an OpenCL device: " + "; ".join(_OPENCL))
def test_the_train_stage_with_too_many_bins_for_the_gpu_exits_2_naming_the_field(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fraudpipe",
            "worker",
            "--stage",
            "train",
            "--device",
            "gpu",
            "--once",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "train.max_bin is 4095" in done.stderr
