"""Device selection. GPU imports stay lazy: a CPU machine never imports cupy or cudf."""

from __future__ import annotations

import importlib

# What each stage needs on --device=gpu. gather is I/O bound: the same code serves both.
GPU_NEEDS: dict[str, tuple[str, ...]] = {
    "gather": (),
    "preprocess": ("cupy", "cudf"),
    "train": ("cupy",),
    "infer": ("cupy",),
}


class DeviceUnavailable(Exception):
    """The requested device cannot run this stage here; the message says what is missing."""


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


def require_device(stage: str, device: str) -> None:
    if device == "cpu":
        return
    if device != "gpu":
        raise DeviceUnavailable(f"--device must be cpu or gpu, got {device!r}")
    needs = GPU_NEEDS.get(stage, ())
    if not needs:
        return
    problems = gpu_problems(needs)
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
