"""Devices: where a stage computes. GPU imports stay lazy: a CPU machine never imports cupy.

A :class:`Device` carries what the code that computes needs to know of it: the array namespace
its kernels run in (numpy or cupy, through array_api_compat, so one kernel serves both) and the
device parameters of LightGBM. The stages take it as a parameter; there is no copy of a stage
per device.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

# What each stage needs on --device=gpu. gather is I/O bound: the same code serves both.
GPU_NEEDS: dict[str, tuple[str, ...]] = {
    "gather": (),
    "preprocess": ("cupy", "cudf"),
    "train": ("cupy",),
    "infer": ("cupy",),
}


class DeviceUnavailable(Exception):
    """The requested device cannot run this stage here; the message says what is missing."""


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "gpu"]

    @cached_property
    def xp(self) -> Any:
        """The array namespace of the standard (array_api_compat's numpy or cupy)."""
        if self.kind == "cpu":
            import array_api_compat.numpy

            return array_api_compat.numpy
        problems = gpu_problems(("cupy",))
        if problems:
            raise DeviceUnavailable("the GPU array namespace cannot load: " + "; ".join(problems))
        import array_api_compat.cupy

        return array_api_compat.cupy

    def lightgbm_params(self) -> dict[str, Any]:
        """LightGBM's parameters for training on this device."""
        return {"device_type": "cpu" if self.kind == "cpu" else "cuda"}


CPU = Device("cpu")


def device(kind: str) -> Device:
    if kind not in ("cpu", "gpu"):
        raise DeviceUnavailable(f"--device must be cpu or gpu, got {kind!r}")
    return CPU if kind == "cpu" else Device("gpu")


def to_numpy(x: Any) -> np.ndarray:
    """An array of any namespace as a numpy array on the host (no copy when it is one)."""
    if isinstance(x, np.ndarray):
        return x
    get = getattr(x, "get", None)  # cupy: a copy from device memory
    return np.asarray(get() if callable(get) else np.from_dlpack(x))


def gpu_problems(modules: tuple[str, ...]) -> list[str]:
    """What stops the GPU path on this machine (empty when it can run)."""
    problems = []
    for mod in modules:
        try:
            importlib.import_module(mod)
        except Exception as exc:
            problems.append(f"python package '{mod}' is not importable ({type(exc).__name__})")
    if "cupy" in modules and not problems:
        try:
            import cupy

            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as exc:
            problems.append(f"no usable CUDA device ({exc})")
        else:
            if count < 1:
                problems.append("no CUDA device visible")
    return problems


def require_device(stage: str, kind: str) -> Device:
    """The device a stage runs on; DeviceUnavailable when it cannot run there."""
    dev = device(kind)
    if dev.kind == "cpu" or not GPU_NEEDS.get(stage, ()):
        return dev
    problems = gpu_problems(GPU_NEEDS[stage])
    if problems:
        raise DeviceUnavailable(
            f"--device=gpu for stage '{stage}' cannot run here: "
            + "; ".join(problems)
            + ". Install the GPU extras (pip install 'fraudpipe[gpu]') on a machine with an "
            "NVIDIA GPU, or use --device=cpu."
        )
    raise DeviceUnavailable(
        f"--device=gpu for stage '{stage}': this build has no GPU implementation of the stage "
        "yet; use --device=cpu."
    )
