"""The fraud model: LightGBM training, ONNX export and holdout metrics.

Nothing here knows the shared volume; registry.py stores models, training.py runs a training
end to end, scoring.py scores and reasons.py explains. Metrics are plain numpy so that every
stage can use them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnxmltools
from onnxmltools.convert.common.data_types import FloatTensorType

from fraudpipe.config import TrainSettings
from fraudpipe.devices import CPU, Device

SEED = 42
ONNX_OPSET = 15


class TrainingStopped(Exception):
    """should_stop() asked training to end; the partial booster is discarded."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"training stopped on request after {iteration} iteration(s)")
        self.iteration = iteration


GPU_MAX_BIN = 255  # LightGBM's OpenCL learner: "bin size 256+ cannot run on GPU"


def device_problem(cfg: TrainSettings, device: Device) -> str | None:
    """Why cfg cannot train on device (None: it can): the GPU learner's histograms hold at most
    GPU_MAX_BIN bins a feature."""
    if device.kind == "gpu" and cfg.max_bin > GPU_MAX_BIN:
        return (
            f"train.max_bin is {cfg.max_bin}, but LightGBM's GPU learner holds at most "
            f"{GPU_MAX_BIN} bins a feature: set train.max_bin: {GPU_MAX_BIN} to train on the GPU "
            "(a lower average precision: README, Model quality), or train with --device=cpu"
        )
    return None


def booster_params(cfg: TrainSettings, tuned: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """LightGBM parameters for a TrainSettings: binary, seeded, deterministic per thread count.

    Fraud is rare (well under 1%), yet classes are not reweighted: reweighting or balanced
    bagging turns scores into something other than probabilities (mean score 1.5-4x the fraud
    rate in our measurements) without raising average precision. Row and column sampling
    (80%) and L2 on leaves keep the few frauds from being memorised. tuned: parameters that
    replace these (a candidate of :func:`tuning_candidates`).
    """
    return {
        "objective": "binary",
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "max_bin": cfg.max_bin,
        "num_threads": cfg.threads,
        "bagging_freq": 1,
        "bagging_fraction": 0.8,
        "feature_fraction": 0.8,
        "lambda_l2": 1.0,
        "seed": SEED,
        "deterministic": True,
        "force_col_wise": True,
        "verbose": -1,
        **(tuned or {}),
    }


# The parameters `--tune` searches, and the values it tries: the ones that matter most for
# rare-positive tabular data. Tree size and how much data a leaf needs decide how finely the
# few frauds can be carved out; learning rate trades rounds for smoothness; column sampling and
# L2 on leaves keep a handful of frauds from being memorised. 432 combinations.
TUNING_SPACE: dict[str, tuple[float | int, ...]] = {
    "num_leaves": (7, 15, 31, 63),
    "learning_rate": (0.03, 0.05, 0.1),
    "min_data_in_leaf": (20, 50, 100, 200),
    "feature_fraction": (0.5, 0.8, 1.0),
    "lambda_l2": (0.0, 1.0, 10.0),
}


def tuning_candidates(cfg: TrainSettings, n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """n candidates for a search: the configured values of TUNING_SPACE's parameters first,
    then n - 1 distinct other combinations of TUNING_SPACE, drawn at random with this seed."""
    configured = booster_params(cfg)
    first = {name: configured[name] for name in TUNING_SPACE}
    grid = [
        dict(zip(TUNING_SPACE, values, strict=True))
        for values in itertools.product(*TUNING_SPACE.values())
    ]
    others = [c for c in grid if c != first]
    if not 1 <= n <= len(others) + 1:
        raise ValueError(f"tuning tries 1 to {len(others) + 1} candidates, not {n}")
    picked = np.random.default_rng(seed).choice(len(others), size=n - 1, replace=False)
    return [first, *(others[i] for i in sorted(picked))]


def train_booster(
    X: np.ndarray,
    y: np.ndarray,
    cfg: TrainSettings,
    feature_names: list[str],
    *,
    tuned: Mapping[str, Any] | None = None,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    device: Device = CPU,
) -> lgb.Booster:
    """Train a binary LightGBM booster on X (rows x features) and y (0/1), with
    booster_params(cfg, tuned), on the device's LightGBM backend.

    With valid=(X, y), training stops early once the validation average precision has not
    improved for max(10, num_boost_round // 10) rounds, and the booster keeps its best
    iteration. progress(iteration, total) is called after every
    iteration; should_stop() is checked after every iteration and raises TrainingStopped.
    """
    if X.ndim != 2 or X.shape[1] != len(feature_names) or len(y) != X.shape[0]:
        raise ValueError(
            f"X is {X.shape}, y has {len(y)} rows, feature_names has {len(feature_names)}: "
            "expected X of shape (len(y), len(feature_names))"
        )
    problem = device_problem(cfg, device)
    if problem is not None:
        raise ValueError(problem)
    params = {**booster_params(cfg, tuned), **device.lightgbm_params()}
    train_set = lgb.Dataset(X, label=y, feature_name=feature_names, params={"verbose": -1})

    def _tick(env: Any) -> None:
        done = env.iteration + 1
        if progress is not None:
            progress(done, env.end_iteration)
        if should_stop is not None and should_stop():
            raise TrainingStopped(done)

    callbacks: list[Callable[[Any], None]] = [_tick]
    valid_sets: list[lgb.Dataset] = []
    if valid is not None:
        params["metric"] = ["average_precision", "auc"]
        valid_sets.append(train_set.create_valid(valid[0], label=valid[1]))
        patience = max(10, cfg.num_boost_round // 10)
        callbacks.append(lgb.early_stopping(patience, first_metric_only=True, verbose=False))
    if should_stop is not None and should_stop():
        raise TrainingStopped(0)
    return lgb.train(
        params,
        train_set,
        num_boost_round=cfg.num_boost_round,
        valid_sets=valid_sets,
        callbacks=callbacks,
    )


class CannotTune(ValueError):
    """A search was asked for, but the training rows have no usable validation split."""


@dataclass(frozen=True)
class Trial:
    """One candidate of a search, early-stopped on the validation days."""

    params: dict[str, Any]  # what it sets over booster_params(cfg)
    average_precision: float  # LightGBM's, on the validation rows, at best_iteration
    best_iteration: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "valid_average_precision": self.average_precision,
            "best_iteration": self.best_iteration,
        }


def _validation_rows(day: np.ndarray, y: np.ndarray, cfg: TrainSettings) -> np.ndarray | str:
    """The rows of the last ``cfg.valid_days`` distinct days (a boolean mask), or why the rows
    have no usable time-ordered validation split."""
    days = np.unique(np.asarray(day))
    if cfg.valid_days == 0:
        return "train.valid_days is 0"
    if len(days) <= cfg.valid_days:
        return f"{len(days)} day(s) of training rows, not more than valid_days={cfg.valid_days}"
    is_valid = np.asarray(day) >= days[-cfg.valid_days]
    fit_y, valid_y = y[~is_valid], y[is_valid]
    if not 0 < fit_y.sum() < len(fit_y):
        return "the rows before the validation days do not hold both fraud and genuine rows"
    if valid_y.sum() == 0:
        return f"the last {cfg.valid_days} day(s) (the validation days) hold no fraud"
    return is_valid


def train_with_validation(
    X: np.ndarray,
    y: np.ndarray,
    day: np.ndarray,
    cfg: TrainSettings,
    feature_names: list[str],
    *,
    tune_trials: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_trial: Callable[[list[Trial], int], None] | None = None,
    device: Device = CPU,
) -> tuple[lgb.Booster, dict[str, Any]]:
    """Early stopping on a time-ordered split, then a refit on every row; optionally a search.

    day orders the rows in time (an integer per row, e.g. a day number): the rows of the last
    ``cfg.valid_days`` distinct days are the validation split. A booster trained on the earlier
    rows stops once the validation average precision stops improving; the final booster is
    trained on all rows for the best number of rounds, scaled by how many more rows it sees.
    Without a usable split (valid_days 0, too few days, no fraud or no legitimate row in the
    earlier rows, no fraud in the validation rows) it trains on all rows for num_boost_round.

    With tune_trials=n, the early-stopped training is run for each of
    ``tuning_candidates(cfg, n)`` on that same split, and the candidate with the best
    validation average precision (the earliest among equals, so the configured parameters win
    a tie) is the one refitted; without a usable split this raises CannotTune. on_trial(trials
    so far, n) is called after each candidate.

    progress(done, total) counts every training's rounds. Returns the booster and what was
    done: rounds, and with early stopping best_iteration, the validation rows and their
    average precision; with tune_trials also "tuning": the chosen params and every trial.
    """
    split = _validation_rows(day, y, cfg)
    if isinstance(split, str):
        if tune_trials is not None:
            raise CannotTune(f"tuning needs a time-ordered validation split: {split}")
        booster = train_booster(
            X, y, cfg, feature_names, should_stop=should_stop, progress=progress, device=device
        )
        return booster, {"rounds": cfg.num_boost_round, "best_iteration": None}
    is_valid = split
    fit_y, valid_y = y[~is_valid], y[is_valid]
    candidates = tuning_candidates(cfg, tune_trials) if tune_trials is not None else [{}]
    ran = [0, 0]  # rounds of the finished trainings, rounds of the current one

    def counted(done: int, total: int) -> None:
        ran[1] = done
        if progress is not None:
            progress(ran[0] + done, ran[0] + total)

    trials: list[Trial] = []
    for candidate in candidates:
        first = train_booster(
            X[~is_valid],
            fit_y,
            cfg,
            feature_names,
            tuned=candidate,
            valid=(X[is_valid], valid_y),
            should_stop=should_stop,
            progress=counted,
            device=device,
        )
        best = max(1, first.best_iteration or ran[1])
        ap = float(first.best_score["valid_0"]["average_precision"])
        trials.append(Trial(candidate, ap, best))
        ran[0] += ran[1]
        if on_trial is not None:
            on_trial(trials, len(candidates))
    chosen = max(trials, key=lambda t: t.average_precision)  # max keeps the first of equals
    rounds = max(1, round(chosen.best_iteration * len(y) / len(fit_y)))
    booster = train_booster(
        X,
        y,
        cfg.model_copy(update={"num_boost_round": rounds}),
        feature_names,
        tuned=chosen.params,
        should_stop=should_stop,
        progress=counted,
        device=device,
    )
    info: dict[str, Any] = {
        "rounds": rounds,
        "best_iteration": chosen.best_iteration,
        "valid_n": int(is_valid.sum()),
        "valid_n_fraud": int(valid_y.sum()),
        "valid_average_precision": chosen.average_precision,
    }
    if tune_trials is not None:
        info["tuning"] = {
            "chosen": chosen.params,
            "trials": [t.as_dict() for t in trials],
        }
    return booster, info


def export_onnx(booster: lgb.Booster, n_features: int) -> bytes:
    """The booster as a serialized ONNX model: input "input" float32 [N, n_features]."""
    onnx_model = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset=ONNX_OPSET,
        zipmap=False,
    )
    data: bytes = onnx_model.SerializeToString()
    return data


def _binary(y: np.ndarray, s: np.ndarray) -> tuple[npt.NDArray[np.bool_], np.ndarray]:
    labels = np.asarray(y).ravel()
    scores = np.asarray(s).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"y has {labels.size} values but s has {scores.size}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("y must hold only 0 and 1")
    return labels.astype(bool), scores


def roc_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, tied scores share their average rank).

    None when y holds a single class.
    """
    labels, scores = _binary(y, s)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _curve(
    labels: npt.NDArray[np.bool_], scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score, highest first: (threshold, true positives, predicted positives)."""
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    true_pos = np.cumsum(labels[order])[last_of_each]
    return ranked[last_of_each], true_pos, last_of_each + 1


def average_precision(y: np.ndarray, s: np.ndarray) -> float | None:
    """Sum over thresholds of (R_n - R_{n-1}) * P_n, as scikit-learn defines it.

    None when y holds no positive.
    """
    labels, scores = _binary(y, s)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return None
    _, true_pos, predicted = _curve(labels, scores)
    recall = true_pos / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * (true_pos / predicted)))


def best_f1_threshold(y: np.ndarray, s: np.ndarray) -> tuple[float, float] | None:
    """(threshold, F1) maximising F1 when alerting on score >= threshold.

    Among equal F1 the highest threshold (fewest alerts) wins. None when y holds no positive.
    """
    labels, scores = _binary(y, s)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return None
    thresholds, true_pos, predicted = _curve(labels, scores)
    f1 = 2.0 * true_pos / (predicted + n_pos)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def evaluate(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    """Holdout metrics; a metric that the data cannot define is None."""
    labels, scores = _binary(y, s)
    n_pos = int(labels.sum())
    out: dict[str, Any] = {
        "n": int(labels.size),
        "n_fraud": n_pos,
        "roc_auc": roc_auc(labels, scores),
        "average_precision": average_precision(labels, scores),
        "threshold": None,
        "f1": None,
        "precision": None,
        "recall": None,
    }
    best = best_f1_threshold(labels, scores)
    if best is not None:
        threshold, f1 = best
        alerts = scores >= threshold
        true_pos = int((alerts & labels).sum())
        out.update(
            threshold=threshold,
            f1=f1,
            precision=true_pos / int(alerts.sum()),
            recall=true_pos / n_pos,
        )
    return out
