"""Every scorer against LightGBM's own predict, on the pipeline's features and a model of the
default size; the compiled form's failure paths."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from fraudpipe.config import TrainSettings
from fraudpipe.model import export_onnx, train_booster
from fraudpipe.scoring import (
    MODEL_FILE,
    ONNX_FILE,
    SCORERS,
    CompiledScorer,
    ModelLoadError,
    compile_forest,
    compiled_name,
    digest,
    open_scorer,
)

N_FEATURES = 12
# How far each scorer may be from LightGBM. compiled computes in float64 as LightGBM does: only
# the float32 result rounds. onnx compares float32 thresholds: a value that lies between a
# threshold and its float32 rounding goes the other way, so a few rows differ by a leaf.
TOLERANCE = {"compiled": 1e-7, "arrays": 1e-7, "lightgbm": 1e-7, "onnx": 0.1}
OFF_BY_A_LEAF = {
    "compiled": 0.0,
    "arrays": 0.0,
    "lightgbm": 0.0,
    "onnx": 0.005,
}  # share of rows > 1e-6 off


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    X[:, 0] = np.round(rng.exponential(50, n), 2)  # amounts to the cent: many ties
    X[:, 1] = rng.integers(0, 40, n)  # counts
    X[:, 2] = np.where(rng.random(n) < 0.3, -1.0, X[:, 2])  # the "none" sentinel
    y = (X[:, 0] / 50 + X[:, 3] * X[:, 4] + rng.normal(size=n) > 3).astype(np.int8)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[lgb.Booster, Path, np.ndarray]:
    """A version directory as train writes it, with the default forest size."""
    X, y = rows(30_000, seed=1)
    cfg = TrainSettings(num_boost_round=200, num_leaves=31, threads=2)
    names = [f"f{i}" for i in range(N_FEATURES)]
    booster = train_booster(X, y, cfg, names)
    where = tmp_path_factory.mktemp("version")
    text = booster.model_to_string()
    (where / MODEL_FILE).write_text(text)
    (where / ONNX_FILE).write_bytes(export_onnx(booster, N_FEATURES))
    (where / compiled_name()).write_bytes(compile_forest(text))
    return booster, where, X


def manifest(where: Path) -> dict[str, object]:
    return {
        "compiled": {compiled_name(): {"sha256": digest((where / compiled_name()).read_bytes())}}
    }


@pytest.mark.parametrize("kind", SCORERS)
def test_every_scorer_scores_as_lightgbm(
    model: tuple[lgb.Booster, Path, np.ndarray], kind: str
) -> None:
    booster, where, X_train = model
    scorer = open_scorer(kind, where, manifest(where), threads=1)  # type: ignore[arg-type]
    X_fresh, _ = rows(20_000, seed=2)
    for X in (X_fresh, X_train):  # training rows lie on thresholds: the hard case
        expected = booster.predict(X.astype(np.float64))
        got = scorer.score(X)
        assert got.dtype == np.float32 and got.shape == (len(X),)
        diff = np.abs(got.astype(np.float64) - expected)
        assert diff.max() <= TOLERANCE[kind], (kind, diff.max())
        assert (diff > 1e-6).mean() <= OFF_BY_A_LEAF[kind], (kind, (diff > 1e-6).mean())
    assert scorer.score(X_fresh[:0]).shape == (0,)
    with pytest.raises(ValueError, match=f"{N_FEATURES} features"):
        scorer.score(X_fresh[:, :3])


def test_compiled_scorer_threads_agree(model: tuple[lgb.Booster, Path, np.ndarray]) -> None:
    _, where, X = model
    one = open_scorer("compiled", where, manifest(where), threads=1).score(X)
    two = open_scorer("compiled", where, manifest(where), threads=2).score(X)
    assert np.array_equal(one, two)


def test_a_compiled_object_not_whole_is_refused(
    model: tuple[lgb.Booster, Path, np.ndarray], tmp_path: Path
) -> None:
    _, where, _ = model
    recorded = manifest(where)
    for name in (MODEL_FILE, ONNX_FILE):
        (tmp_path / name).write_bytes((where / name).read_bytes())
    obj = (where / compiled_name()).read_bytes()
    (tmp_path / compiled_name()).write_bytes(obj[: len(obj) // 2])
    with pytest.raises(ModelLoadError, match="does not match the sha256"):
        open_scorer("compiled", tmp_path, recorded)


def test_a_version_without_its_compiled_object_is_compiled_on_load(
    model: tuple[lgb.Booster, Path, np.ndarray], tmp_path: Path
) -> None:
    """A version from elsewhere (another architecture, or saved before compiled scoring)."""
    booster, where, X = model
    (tmp_path / MODEL_FILE).write_bytes((where / MODEL_FILE).read_bytes())
    scorer = open_scorer("compiled", tmp_path, {})
    assert isinstance(scorer, CompiledScorer) and scorer.compiled_here_s is not None
    assert np.abs(scorer.score(X) - booster.predict(X)).max() <= TOLERANCE["compiled"]
    (tmp_path / MODEL_FILE).write_text("not a model")
    with pytest.raises(ModelLoadError, match=MODEL_FILE):
        open_scorer("compiled", tmp_path, {})
