"""Devices: where a stage computes. GPU imports stay lazy: a CPU machine never imports cupy.

A :class:`Device` carries what the code that computes needs to know of it: the array namespace
its kernels run in (numpy or cupy, through array_api_compat, so one kernel serves both) and the
device parameters of LightGBM. The stages take it as a parameter; there is no copy of a stage
per device.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

# What each stage computes with on --device=gpu: the CUDA array namespace (preprocess's feature
# kernel, infer's forest walk) or LightGBM's OpenCL learner (train, the `gpu` device type of its
# PyPI wheel). gather and the dashboard are I/O bound: --device=gpu runs them as on the CPU.
GPU_NEEDS: dict[str, str] = {"preprocess": "cuda", "infer": "cuda", "train": "opencl"}
_CL_DEVICE_TYPE_ALL = 0xFFFFFFFF
_CL_SUCCESS = 0
_CL_PLATFORM_NOT_FOUND_KHR = -1001


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
        problems = gpu_problems("cuda")
        if problems:
            raise DeviceUnavailable("the GPU array namespace cannot load: " + "; ".join(problems))
        import array_api_compat.cupy

        return array_api_compat.cupy

    def lightgbm_params(self) -> dict[str, Any]:
        """LightGBM's parameters for training on this device: its OpenCL learner on the GPU
        (the PyPI wheel is built with it, not with its CUDA learner), histograms in float64
        so that its splits are the CPU learner's but for ties (docs/gpu.md)."""
        if self.kind == "cpu":
            return {"device_type": "cpu"}
        return {"device_type": "gpu", "gpu_use_dp": True}


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


def gpu_problems(needs: str = "cuda") -> list[str]:
    """What stops GPU work of that kind ("cuda" or "opencl") on this machine, each problem
    naming what is missing; empty when it can run."""
    return _cuda_problems() if needs == "cuda" else _opencl_problems()


_RUNTIME = (
    "on Kubernetes the node needs the NVIDIA driver and the pod the NVIDIA container runtime: "
    "set gpu.runtimeClassName (e.g. nvidia) where it is not the node's default runtime"
)
_ALLOTTED = (
    "a pod must request one (the chart sets resources.limits nvidia.com/gpu for stages with "
    "device: gpu) from the NVIDIA device plugin or GPU operator"
)


def _cuda_problems() -> list[str]:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return [f"no NVIDIA driver here (libcuda.so.1 cannot be loaded); {_RUNTIME}"]
    try:
        import cupy
    except Exception as exc:
        return [
            f"python package 'cupy' cannot be imported ({type(exc).__name__}: {exc}): run the "
            "GPU image (tag <version>-gpu, as values-gpu.yaml sets it) or pip install "
            "'fraudpipe[gpu]'"
        ]
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        count, why = 0, f" ({exc})"
    else:
        why = ""
    if count < 1:
        visible = os.environ.get("NVIDIA_VISIBLE_DEVICES", "unset")
        return [
            f"the NVIDIA driver sees no GPU{why} (NVIDIA_VISIBLE_DEVICES={visible}): {_ALLOTTED}"
        ]
    return []


def _opencl_problems() -> list[str]:
    try:
        cl = ctypes.CDLL("libOpenCL.so.1")
    except OSError:
        return [
            "no OpenCL loader (libOpenCL.so.1), which LightGBM's GPU learner needs: the GPU "
            "image has it (apt ocl-icd-libopencl1)"
        ]
    n = ctypes.c_uint(0)
    rc = cl.clGetPlatformIDs(0, None, ctypes.byref(n))
    if rc not in (_CL_SUCCESS, _CL_PLATFORM_NOT_FOUND_KHR) or n.value == 0:
        return [
            "no OpenCL platform: the NVIDIA driver's OpenCL library is registered by "
            "/etc/OpenCL/vendors/nvidia.icd (in the GPU image) and mounted by the NVIDIA "
            f"container runtime when NVIDIA_DRIVER_CAPABILITIES includes compute; {_RUNTIME}"
        ]
    platforms = (ctypes.c_void_p * n.value)()
    cl.clGetPlatformIDs(n.value, platforms, None)
    devices = 0
    for platform in platforms:
        found = ctypes.c_uint(0)
        if cl.clGetDeviceIDs(
            ctypes.c_void_p(platform), ctypes.c_uint64(_CL_DEVICE_TYPE_ALL), 0, None,
            ctypes.byref(found),
        ) == _CL_SUCCESS:  # fmt: skip
            devices += found.value
    if devices == 0:
        return [f"OpenCL sees no device: {_ALLOTTED}"]
    return []


def require_device(stage: str, kind: str) -> Device:
    """The device a stage runs on; DeviceUnavailable, naming what is missing, when it cannot
    run there."""
    dev = device(kind)
    needs = GPU_NEEDS.get(stage)
    if dev.kind == "cpu" or needs is None:
        return dev
    problems = gpu_problems(needs)
    if problems:
        raise DeviceUnavailable(
            f"--device=gpu for stage '{stage}' cannot run here: "
            + "; ".join(problems)
            + ". Or run the stage with --device=cpu."
        )
    return dev
