"""The GPU half against the CPU half, on a machine with an NVIDIA GPU and the gpu extra
(`make test-gpu`): the forest walked on cupy scores as LightGBM, and runs on the device.
Elsewhere: the feature kernel on cupy, with the other namespaces (test_features.py, the same
bits as numpy and as the naive reference); LightGBM's GPU learner (test_devices.py, on PoCL's
OpenCL for the CPU where there is no GPU). Skipped without a GPU, naming what is missing."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np

from fraudpipe.devices import Device
from fraudpipe.forest import ArrayForestScorer
from tests.conftest import ON_GPU
from tests.test_forest import ulps
from tests.test_scoring import model, rows  # noqa: F401  (the module's model fixture)

pytestmark = ON_GPU
GPU = Device("gpu")


def test_scores_on_the_gpu_are_lightgbm_scores(model: tuple[lgb.Booster, Path, np.ndarray]) -> None:  # noqa: F811
    booster, _, X_train = model
    scorer = ArrayForestScorer(booster, GPU)
    X_fresh, _ = rows(50_000, seed=8)
    for X in (X_fresh, X_train):
        raw = scorer.raw(X)
        assert type(raw).__module__.startswith("cupy")  # computed, and kept, in device memory
        expected = booster.predict(X.astype(np.float64), raw_score=True)
        assert np.abs(raw.get() - expected).max() <= 1e-12
        assert ulps(scorer.score(X), booster.predict(X.astype(np.float64))) <= 1


def test_the_walk_runs_on_the_device(model: tuple[lgb.Booster, Path, np.ndarray]) -> None:  # noqa: F811
    import cupy
    from cupyx.profiler import benchmark

    booster, _, _ = model
    scorer = ArrayForestScorer(booster, GPU)
    X = cupy.asarray(rows(200_000, seed=9)[0], dtype=cupy.float64)
    timed = benchmark(scorer.raw, (X,), n_repeat=3, n_warmup=1)
    gpu_s = float(np.median(timed.gpu_times))
    assert gpu_s > 0  # kernels ran on the device, timed by its own events
    print(f"the walk: {X.shape[0] / gpu_s / 1e6:.1f}M rows/s on the GPU")
