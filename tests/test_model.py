"""model.py: LightGBM training, ONNX parity, and the numpy metrics."""

from __future__ import annotations

import numpy as np
import pytest

from fraudpipe.config import TrainSettings
from fraudpipe.model import (
    TrainingStopped,
    average_precision,
    best_f1_threshold,
    evaluate,
    export_onnx,
    roc_auc,
    train_booster,
    train_with_validation,
)
from fraudpipe.scoring import ModelLoadError, OnnxScorer

FEATURES = ["f0", "f1", "f2", "f3", "f4", "f5"]
CFG = TrainSettings(num_boost_round=40, num_leaves=15, min_data_in_leaf=20, threads=1)


def make_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rare positives (~3%) with a learnable, non-linear signal."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES)))
    X[:, 4] = np.round(X[:, 4] * 4) / 4  # a coarse feature: many rows sit on split values
    logit = -4.5 + 1.8 * X[:, 0] + 1.2 * X[:, 1] * X[:, 2] + 2.0 * (X[:, 3] > 1.2)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def trained() -> tuple[object, np.ndarray, np.ndarray]:
    X, y = make_rows(10_000, seed=1)
    return train_booster(X, y, CFG, FEATURES), X, y


def test_onnx_scores_match_lightgbm(trained: tuple) -> None:
    booster, X_train, _ = trained
    scorer = OnnxScorer(export_onnx(booster, len(FEATURES)), threads=1)
    X_fresh, _ = make_rows(20_000, seed=2)
    for X in (X_fresh, X_train):
        onnx = scorer.score(X)
        assert onnx.dtype == np.float32 and onnx.shape == (len(X),)
        diff = np.abs(onnx.astype(np.float64) - booster.predict(X))
        assert np.median(diff) < 1e-6
        assert diff.max() < 1e-2


def test_scorer_from_file_checks_width_and_bad_models(trained: tuple, tmp_path) -> None:
    booster, X, _ = trained
    path = tmp_path / "model.onnx"
    path.write_bytes(export_onnx(booster, len(FEATURES)))
    scorer = OnnxScorer(path)
    assert scorer.n_features == len(FEATURES)
    assert scorer.score(X[:0]).shape == (0,)
    np.testing.assert_allclose(
        scorer.score(X[:5].astype(np.float64)), booster.predict(X[:5]), atol=1e-2
    )
    with pytest.raises(ValueError, match="6 features"):
        scorer.score(X[:, :3])
    with pytest.raises(ModelLoadError):
        OnnxScorer(b"not an onnx model")
    with pytest.raises(ModelLoadError, match=r"missing\.onnx"):
        OnnxScorer(tmp_path / "missing.onnx")


def test_training_is_deterministic_and_learns(trained: tuple) -> None:
    booster, X, y = trained
    again = train_booster(X, y, CFG, FEATURES)
    assert again.model_to_string() == booster.model_to_string()
    assert booster.feature_name() == FEATURES
    X_fresh, y_fresh = make_rows(20_000, seed=3)
    scores = booster.predict(X_fresh)
    assert roc_auc(y_fresh, scores) > 0.85
    assert average_precision(y_fresh, scores) > 3 * y_fresh.mean()


def test_progress_and_graceful_stop() -> None:
    X, y = make_rows(2_000, seed=4)
    seen: list[tuple[int, int]] = []
    with pytest.raises(TrainingStopped) as stopped:
        train_booster(
            X,
            y,
            CFG,
            FEATURES,
            progress=lambda i, n: seen.append((i, n)),
            should_stop=lambda: len(seen) >= 3,
        )
    assert stopped.value.iteration == 3
    assert seen == [(1, 40), (2, 40), (3, 40)]
    with pytest.raises(TrainingStopped) as before:
        train_booster(X, y, CFG, FEATURES, should_stop=lambda: True)
    assert before.value.iteration == 0


def test_valid_set_stops_early_and_export_keeps_best_iteration() -> None:
    X, y = make_rows(5_000, seed=5)
    X_valid, y_valid = make_rows(5_000, seed=6)
    overfit = TrainSettings(
        num_boost_round=100, learning_rate=0.8, num_leaves=31, min_data_in_leaf=2, threads=1
    )
    booster = train_booster(X, y, overfit, FEATURES, valid=(X_valid, y_valid))
    assert booster.num_trees() < 100
    onnx = OnnxScorer(export_onnx(booster, len(FEATURES))).score(X_valid)
    assert np.abs(onnx - booster.predict(X_valid)).max() < 1e-2


def test_train_with_validation_splits_by_time_then_refits() -> None:
    X, y = make_rows(8_000, seed=8)
    day = np.repeat(np.arange(8), 1_000)
    cfg = CFG.model_copy(update={"num_boost_round": 300, "learning_rate": 0.3, "valid_days": 2})
    seen: list[tuple[int, int]] = []
    booster, info = train_with_validation(
        X, y, day, cfg, FEATURES, progress=lambda i, n: seen.append((i, n))
    )
    assert info["valid_n"] == 2_000 and info["valid_n_fraud"] == int(y[day >= 6].sum())
    assert info["best_iteration"] < 300  # stopped early
    assert info["rounds"] == round(info["best_iteration"] * 8 / 6)  # scaled to every row
    assert booster.num_trees() == info["rounds"]
    assert seen[-1][0] == seen[-1][1] and [i for i, _ in seen] == sorted(i for i, _ in seen)
    again, _ = train_with_validation(X, y, day, cfg, FEATURES)
    assert again.model_to_string() == booster.model_to_string()  # deterministic
    # no usable split: every row, num_boost_round rounds
    for unusable in (
        cfg.model_copy(update={"valid_days": 0}),
        cfg.model_copy(update={"valid_days": 8}),
    ):
        plain, info = train_with_validation(X, y, day, unusable, FEATURES)
        assert info == {"rounds": 300, "best_iteration": None}
        assert plain.num_trees() == 300
    no_fraud_late = np.where(day >= 6, 0, y)
    _, info = train_with_validation(X, no_fraud_late, day, cfg, FEATURES)
    assert info["best_iteration"] is None


def test_train_rejects_mismatched_shapes() -> None:
    X, y = make_rows(100, seed=7)
    with pytest.raises(ValueError, match="feature_names"):
        train_booster(X, y, CFG, FEATURES[:-1])


# Metrics against hand-computed cases.
Y = np.array([0, 0, 1, 1])
S = np.array([0.1, 0.4, 0.35, 0.8])


def test_roc_auc_by_hand() -> None:
    assert roc_auc(Y, S) == pytest.approx(0.75)
    assert roc_auc(Y, -S) == pytest.approx(0.25)
    assert roc_auc([0, 1, 0, 1], [0.2, 0.9, 0.1, 0.3]) == 1.0
    # ties share their average rank: a tied pos/neg pair counts one half
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.9]) == pytest.approx(0.75)
    assert roc_auc([1, 1, 0, 0], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_average_precision_by_hand() -> None:
    # ranked: 0.8 (+) P=1 R=.5 | 0.4 (-) | 0.35 (+) P=2/3 R=1 | 0.1 (-)
    assert average_precision(Y, S) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # tied scores form one threshold: 0.9 -> P=1 R=.5; 0.5 -> P=2/4 R=1
    assert average_precision([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.9]) == pytest.approx(0.75)
    assert average_precision([1, 0, 0], [0.9, 0.1, 0.2]) == 1.0
    assert average_precision([1, 1], [0.2, 0.4]) == 1.0


def test_best_f1_threshold_by_hand() -> None:
    # F1 = 2TP / (alerts + positives): 0.8 -> 2/3, 0.4 -> 1/2, 0.35 -> 4/5, 0.1 -> 2/3
    threshold, f1 = best_f1_threshold(Y, S)
    assert (threshold, f1) == (0.35, pytest.approx(0.8))
    # equal F1 (2/3) at 0.9 and at 0.2: the higher threshold (fewer alerts) wins
    assert best_f1_threshold([1, 0, 0, 1], [0.9, 0.5, 0.3, 0.2]) == (0.9, pytest.approx(2 / 3))


def test_undefined_metrics_are_none() -> None:
    no_fraud = evaluate(np.zeros(5, dtype=np.int8), np.linspace(0, 1, 5))
    assert no_fraud == {
        "n": 5,
        "n_fraud": 0,
        "roc_auc": None,
        "average_precision": None,
        "threshold": None,
        "f1": None,
        "precision": None,
        "recall": None,
    }
    all_fraud = evaluate(np.ones(3, dtype=np.int8), np.array([0.1, 0.2, 0.3]))
    assert all_fraud["roc_auc"] is None
    assert all_fraud["average_precision"] == 1.0


def test_evaluate_at_best_threshold() -> None:
    out = evaluate(Y, S)
    assert out["n"] == 4 and out["n_fraud"] == 2
    assert out["threshold"] == 0.35
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == 1.0
    assert out["f1"] == pytest.approx(0.8)


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="y has 3"):
        roc_auc([0, 1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        average_precision([0, 2], [0.1, 0.2])


def test_metrics_match_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(8)
    for _ in range(20):
        n = int(rng.integers(2, 300))
        y = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(np.int8)
        y[0], y[1] = 0, 1
        s = np.round(rng.random(n) + 0.3 * y, 1)  # coarse scores: many ties
        assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
        assert average_precision(y, s) == pytest.approx(
            metrics.average_precision_score(y, s), abs=1e-12
        )
        precision, recall, _ = metrics.precision_recall_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        assert best_f1_threshold(y, s)[1] == pytest.approx(f1.max(), abs=1e-12)
