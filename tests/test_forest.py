"""The forest walked as arrays (forest.py), the GPU's scorer, against LightGBM's own predict:
under numpy and under array_api_strict (so the walk uses nothing a GPU namespace lacks), on
rows that lie on thresholds, on NaN and zero values of every missing-value rule, and on a
model trained by LightGBM's GPU (OpenCL) learner. The same walk on cupy: tests/test_gpu.py."""

from __future__ import annotations

from pathlib import Path

import array_api_strict
import lightgbm as lgb
import numpy as np
import pytest

from fraudpipe import forest
from fraudpipe.devices import CPU, Device
from fraudpipe.forest import ArrayForestScorer, Nodes
from fraudpipe.scoring import MODEL_FILE, ModelLoadError, open_scorer, resolve
from tests.test_scoring import model, rows  # noqa: F401  (the module's model fixture)


def ulps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest distance between two float32 arrays in units in the last place."""
    ia, ib = a.astype(np.float32).view(np.int32), b.astype(np.float32).view(np.int32)
    return int(np.abs(ia.astype(np.int64) - ib.astype(np.int64)).max(initial=0))


def test_the_walk_scores_as_lightgbm(model: tuple[lgb.Booster, Path, np.ndarray]) -> None:  # noqa: F811
    booster, where, X_train = model
    scorer = open_scorer("arrays", where, {})
    assert isinstance(scorer, ArrayForestScorer)
    X_fresh, _ = rows(5_000, seed=3)
    for X in (X_fresh, X_train[:5_000]):  # training rows lie on thresholds
        raw = scorer.raw(X)
        expected = booster.predict(X.astype(np.float64), raw_score=True)
        assert np.abs(raw - expected).max() <= 1e-12
        got = scorer.score(X)
        assert got.dtype == np.float32 and got.shape == (len(X),)
        assert ulps(got, booster.predict(X.astype(np.float64))) <= 1
    assert scorer.score(X_fresh[:0]).shape == (0,)
    with pytest.raises(ValueError, match="12 features"):
        scorer.score(X_fresh[:, :3])


def test_every_threshold_and_its_neighbours_go_the_way_lightgbm_sends_them(
    model: tuple[lgb.Booster, Path, np.ndarray],  # noqa: F811
) -> None:
    """Rows made of the thresholds themselves and the doubles either side of them."""
    booster, _, _ = model
    nodes = Nodes.of(booster)
    split = np.isfinite(nodes.threshold)
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3_000, nodes.n_features))
    pick = rng.integers(0, int(split.sum()), size=X.shape)
    t = nodes.threshold[split][pick]
    X = np.where(rng.random(X.shape) < 0.5, t, X)
    X = np.where(rng.random(X.shape) < 0.2, np.nextafter(X, np.inf), X)
    scorer = ArrayForestScorer(booster)
    assert np.abs(scorer.raw(X) - booster.predict(X, raw_score=True)).max() <= 1e-12


@pytest.mark.parametrize("missing", ["none", "zero", "nan"])
def test_missing_values_take_the_default_way_of_each_rule(missing: str) -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(4_000, 4))
    X[rng.random(X.shape) < 0.15] = np.nan
    X[rng.random(X.shape) < 0.15] = 0.0
    y = (np.nan_to_num(X[:, 0], nan=1.0) + X[:, 1] ** 2 > 0.7).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_leaves": 15, "num_threads": 1}
    params |= {"none": {"use_missing": False}, "zero": {"zero_as_missing": True}, "nan": {}}[
        missing
    ]
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=30)
    rules = set(Nodes.of(booster).missing[np.isfinite(Nodes.of(booster).threshold)].tolist())
    assert rules == {"none": {0}, "zero": {1}, "nan": {2}}[missing]
    Z = rng.normal(size=(2_000, 4))
    Z[rng.random(Z.shape) < 0.2] = np.nan
    Z[rng.random(Z.shape) < 0.2] = 0.0
    Z[rng.random(Z.shape) < 0.05] = -0.0
    raw = ArrayForestScorer(booster).raw(Z)
    assert np.abs(raw - booster.predict(Z, raw_score=True)).max() <= 1e-12


def test_the_walk_under_the_strict_namespace_matches_numpy(
    model: tuple[lgb.Booster, Path, np.ndarray],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """array_api_strict refuses anything outside the standard: the walk runs on cupy as on it.
    Small chunks make it concatenate several."""
    booster, _, _ = model
    monkeypatch.setattr(forest, "CHUNK_PAIRS", 20_000)
    X, _ = rows(600, seed=6)
    X[::11, 2] = np.nan
    strict = ArrayForestScorer(booster, xp=array_api_strict)
    raw = strict.raw(array_api_strict.asarray(X.astype(np.float64)))
    assert type(raw).__module__.startswith("array_api_strict")  # computed in that namespace
    assert np.array_equal(np.asarray(raw), ArrayForestScorer(booster).raw(X))
    assert np.array_equal(strict.score(X), ArrayForestScorer(booster).score(X))


def test_models_the_walk_does_not_follow_are_refused_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    X = rng.integers(0, 5, size=(500, 2)).astype(float)
    y = (X[:, 0] == 2).astype(int)
    params = {"objective": "binary", "verbose": -1, "min_data_per_group": 5, "num_threads": 1}
    categorical = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[0]), 5)
    (tmp_path / MODEL_FILE).write_text(categorical.model_to_string())
    with pytest.raises(ModelLoadError, match="categorical"):
        open_scorer("arrays", tmp_path, {})
    regression = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(X, y), 3)
    with pytest.raises(ValueError, match="binary models only"):
        ArrayForestScorer(regression)


def test_auto_is_compiled_on_the_cpu_and_the_walk_on_the_gpu() -> None:
    assert resolve("auto", CPU) == "compiled"
    assert resolve("auto", Device("gpu")) == "arrays"
    assert resolve("onnx", Device("gpu")) == "onnx"
