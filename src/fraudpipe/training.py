"""One training run end to end: labeled data, time-ordered split, challenger vs champion.

The label cutoff is the latest label_ts in the label log (no later than ``now``, when given);
no label after it is used. Labeled rows are feature-store rows joined with those labels. The
newest ``holdout_days`` of labeled rows (by transaction ts) are the holdout, the
``train_days`` before them the training set; boosting is early-stopped on the training set's
last ``valid_days``, then refitted on all of it (model.train_with_validation; offline training
may first search parameters on that same split). The challenger is scored on the holdout by
LightGBM itself (what the compiled scorer infer runs by default computes, within 1e-7), the
champion (models/current) on the same rows; the
challenger is promoted only when its average precision beats the champion's by more than
``min_improvement``. Every trained version is saved; its manifest records the decision.

The steps after loading are public (:func:`split_holdout`, :func:`missing`, :func:`fit`,
:func:`judge`, :func:`manifest`): offline training (``fraudpipe train``, offline.py) runs the
very same ones on the rows of a file.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import lightgbm as lgb
import numpy as np
import polars as pl

import fraudpipe
from fraudpipe import schema
from fraudpipe.config import TrainSettings
from fraudpipe.devices import CPU, Device
from fraudpipe.eventlog import EventLog, day_partitions
from fraudpipe.layout import Layout
from fraudpipe.model import (
    TrainingStopped,
    Trial,
    booster_params,
    evaluate,
    export_onnx,
    train_with_validation,
)
from fraudpipe.registry import ModelRegistry, RegistryError
from fraudpipe.scoring import OnnxScorer

Status = Literal["trained-promoted", "trained-kept-champion", "not-enough-data", "stopped"]
ONE_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run did; reason is meant for the operator."""

    status: Status
    reason: str
    version: str | None = None
    metrics: dict[str, Any] | None = None


class _NotEnoughData(Exception):
    pass


def _ts_max(column: pl.Series) -> dt.datetime:
    """The latest value of a non-empty Datetime column."""
    return cast(dt.datetime, column.max())


def _ts_min(column: pl.Series) -> dt.datetime:
    """The earliest value of a non-empty Datetime column."""
    return cast(dt.datetime, column.min())


class _Labels:
    """Label partitions read newest first, and only as far back as asked."""

    def __init__(self, log: EventLog, now: dt.datetime | None) -> None:
        self._log = log
        self._now = now
        self._unread = [d for d in log.days("labels") if now is None or d <= now.date()]
        self._frames: list[pl.DataFrame] = []
        self._known: pl.DataFrame | None = None
        if self._unread:  # a batch may cross midnight: its newest labels sit a day back
            self.read_back_to(self._unread[-1] - ONE_DAY)
        while self._unread and not any(f.height for f in self._frames):
            self._read_newest()
        latest = [_ts_max(f["label_ts"]) for f in self._frames if f.height]
        self.cutoff: dt.datetime | None = max(latest) if latest else None

    def _read_newest(self) -> None:
        day = self._unread.pop()
        frame = EventLog.read_files(self._log.files("labels", day, day))
        if frame is not None:
            frame = schema.check(frame, schema.LABELS, f"labels day={day}")
            if self._now is not None:
                frame = frame.filter(pl.col("label_ts") <= self._now)
            self._frames.append(frame)
            self._known = None

    def read_back_to(self, first_day: dt.date) -> None:
        while self._unread and self._unread[-1] >= first_day:
            self._read_newest()

    def known(self) -> pl.DataFrame:
        """Labels read so far with label_ts <= cutoff, the latest per transaction."""
        if self._known is None:
            self._known = (
                pl.concat(self._frames)
                .filter(pl.col("label_ts") <= self.cutoff)
                .sort("label_ts")
                .unique("transaction_id", keep="last")
            )
        return self._known


def _read_features(part: Path, feature_names: list[str]) -> tuple[pl.DataFrame | None, int]:
    """Rows of one feature-store day: ids, ts and float32 features; also files skipped.

    A file without every feature (written before the feature set changed) is skipped.
    """
    columns = ["transaction_id", "ts", *feature_names]
    frames: list[pl.DataFrame] = []
    skipped = 0
    for path in sorted(part.glob("*.parquet")):
        try:
            if not set(columns) <= set(pl.read_parquet_schema(path)):
                skipped += 1
                continue
            frame = pl.read_parquet(path, columns=columns)
        except FileNotFoundError:  # pruned by retention while we listed it
            continue
        frames.append(
            frame.select(
                pl.col("transaction_id").cast(pl.Int64),
                pl.col("ts").cast(schema.TS),
                *(pl.col(f).cast(pl.Float32) for f in feature_names),
            )
        )
    return (pl.concat(frames) if frames else None), skipped


@dataclass(frozen=True)
class _Labeled:
    data: pl.DataFrame  # transaction_id, ts, features..., is_fraud, label_ts; sorted by ts
    cutoff: dt.datetime
    skipped_files: int


def _load_labeled(
    layout: Layout, cfg: TrainSettings, feature_names: list[str], now: dt.datetime | None
) -> _Labeled:
    """Labeled rows of the newest train_days + holdout_days, reading only those partitions."""
    labels = _Labels(EventLog(layout), now)
    cutoff = labels.cutoff
    if cutoff is None:
        bound = f" up to {now}" if now is not None else ""
        raise _NotEnoughData(f"no labels in the label log{bound} yet")
    parts = [
        (d, p) for d, p in reversed(day_partitions(layout.feature_store)) if d <= cutoff.date()
    ]
    span = dt.timedelta(days=cfg.train_days + cfg.holdout_days)
    frames: list[pl.DataFrame] = []
    first_needed: dt.date | None = None
    skipped = 0
    for day, part in parts:
        if first_needed is not None and day < first_needed:
            break
        labels.read_back_to(day - ONE_DAY)
        frame, n_skipped = _read_features(part, feature_names)
        skipped += n_skipped
        if frame is None:
            continue
        frames.append(frame)
        if first_needed is None:
            labeled = frame.join(labels.known(), on="transaction_id", how="semi")
            if labeled.height:
                first_needed = (_ts_max(labeled["ts"]) - span).date() - ONE_DAY
    if first_needed is None:
        raise _NotEnoughData(
            f"no feature-store row has a label up to the label cutoff {cutoff} "
            f"({len(parts)} feature day(s) read, {skipped} file(s) lacking the current features)"
        )
    data = pl.concat(frames).join(labels.known(), on="transaction_id", how="inner")
    end = _ts_max(data["ts"])
    data = data.filter(pl.col("ts") > end - span).sort("ts", "transaction_id")
    return _Labeled(data, cutoff, skipped)


@dataclass(frozen=True)
class Split:
    """Labeled rows split in time: the newest holdout_days are the holdout."""

    train: pl.DataFrame
    holdout: pl.DataFrame
    holdout_start: dt.datetime  # train: ts <= holdout_start; holdout: ts > holdout_start
    train_info: dict[str, Any]  # summary(train)
    holdout_info: dict[str, Any]  # summary(holdout)


def summary(part: pl.DataFrame) -> dict[str, Any]:
    """Rows, frauds, first and last ts (ISO, None when empty) of labeled rows."""
    return {
        "n": part.height,
        "n_fraud": int(part["is_fraud"].sum()),
        "first_ts": _ts_min(part["ts"]).isoformat() if part.height else None,
        "last_ts": _ts_max(part["ts"]).isoformat() if part.height else None,
    }


def split_holdout(labeled: pl.DataFrame, holdout_days: float) -> Split:
    """Hold out the rows within holdout_days of the newest ts of labeled (non-empty).

    labeled holds ts, is_fraud and the features, sorted by ts; both parts keep its order.
    """
    holdout_start = _ts_max(labeled["ts"]) - dt.timedelta(days=holdout_days)
    train = labeled.filter(pl.col("ts") <= holdout_start)
    holdout = labeled.filter(pl.col("ts") > holdout_start)
    return Split(train, holdout, holdout_start, summary(train), summary(holdout))


def missing(split: Split, cfg: TrainSettings, *, minimums: bool = True) -> str | None:
    """Why this split cannot train and judge a model, or None when it can.

    With minimums (the train stage's scheduled runs) the window needs ``min_labeled_rows``
    labeled rows and the training days ``min_frauds`` frauds; without (offline training, whose
    window the operator chose) only a split that cannot train or be judged is refused: no
    fraud or no legitimate row to learn from, no fraud in the holdout.
    """
    train, holdout = split.train_info, split.holdout_info
    if minimums:
        n_labeled = train["n"] + holdout["n"]
        if n_labeled < cfg.min_labeled_rows:
            return (
                f"{n_labeled} labeled rows in the window; "
                f"need min_labeled_rows={cfg.min_labeled_rows}"
            )
        if train["n_fraud"] < cfg.min_frauds:
            return (
                f"{train['n_fraud']} frauds in the training days ({train['first_ts']} .. "
                f"{train['last_ts']}); need min_frauds={cfg.min_frauds}"
            )
    if train["n"] == 0:
        return "the training days (before the holdout) hold no labeled row"
    if train["n_fraud"] == 0:
        return f"the training days ({train['first_ts']} .. {train['last_ts']}) hold no fraud"
    if train["n_fraud"] == train["n"]:
        return "the training days hold no legitimate transaction"
    if holdout["n_fraud"] == 0:
        return (
            f"the holdout ({holdout['n']} rows, {holdout['first_ts']} .. {holdout['last_ts']}) "
            "holds no fraud, so average precision is undefined"
        )
    return None


@dataclass(frozen=True)
class Fitted:
    """A trained challenger and how it did on the holdout, scored by LightGBM."""

    booster: lgb.Booster
    onnx_bytes: bytes
    metrics: dict[str, Any]  # model.evaluate of the booster's scores on the holdout
    fit_info: dict[str, Any]  # what model.train_with_validation did
    train_seconds: float
    onnx_vs_lightgbm: dict[str, float]  # max and median |ONNX - LightGBM| on the holdout
    X_holdout: np.ndarray
    y_holdout: np.ndarray

    @property
    def threshold(self) -> float | None:
        """The best-F1 threshold on the holdout."""
        return cast(float | None, self.metrics["threshold"])


def _matrix(part: pl.DataFrame, feature_names: list[str]) -> np.ndarray:
    return np.ascontiguousarray(part.select(feature_names).to_numpy(), dtype=np.float32)


def fit(
    split: Split,
    cfg: TrainSettings,
    feature_names: list[str],
    *,
    tune_trials: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_trial: Callable[[list[Trial], int], None] | None = None,
    device: Device = CPU,
) -> Fitted:
    """Train on split.train (model.train_with_validation: early stopping on its last
    ``valid_days``, then a refit), score the holdout, export ONNX and measure how far its
    scores are from the booster's (infer.scorer: onnx scores with them).

    tune_trials, should_stop, progress and on_trial go to the training, which raises
    model.TrainingStopped, and model.CannotTune when a search has no validation split. The
    holdout is never seen by the search.
    """
    train_day = split.train["ts"].dt.epoch("d").to_numpy()
    started = time.perf_counter()
    booster, fit_info = train_with_validation(
        _matrix(split.train, feature_names),
        split.train["is_fraud"].to_numpy(),
        train_day,
        cfg,
        feature_names,
        tune_trials=tune_trials,
        should_stop=should_stop,
        progress=progress,
        on_trial=on_trial,
        device=device,
    )
    train_seconds = time.perf_counter() - started
    X_holdout = _matrix(split.holdout, feature_names)
    y_holdout = split.holdout["is_fraud"].to_numpy()
    scores = np.asarray(booster.predict(X_holdout))
    onnx_bytes = export_onnx(booster, len(feature_names))
    onnx_diff = np.abs(OnnxScorer(onnx_bytes).score(X_holdout).astype(np.float64) - scores)
    return Fitted(
        booster=booster,
        onnx_bytes=onnx_bytes,
        metrics=evaluate(y_holdout, scores),
        fit_info=fit_info,
        train_seconds=train_seconds,
        onnx_vs_lightgbm={
            "max_abs_diff": float(onnx_diff.max()),
            "median_abs_diff": float(np.median(onnx_diff)),
        },
        X_holdout=X_holdout,
        y_holdout=y_holdout,
    )


@dataclass(frozen=True)
class Verdict:
    """The challenger against the champion (models/current) on the same holdout."""

    wins: bool  # better by more than min_improvement, or nothing to compare with
    finding: str  # what the comparison found
    reason: str  # the finding and what follows from it for the train stage
    champion: dict[str, Any]  # the manifest's champion record: version, metrics


def judge(
    registry: ModelRegistry | None,
    cfg: TrainSettings,
    feature_names: list[str],
    fitted: Fitted,
) -> Verdict:
    """Score the champion of registry (None: there is none) on the challenger's holdout.

    The challenger wins when there is no champion, when the champion uses other features or
    cannot be evaluated, or when its average precision beats the champion's by more than
    ``min_improvement``.
    """
    champion = registry.current() if registry is not None else None
    record: dict[str, Any] = {"version": champion, "metrics": None}
    if registry is None or champion is None:
        finding = "there is no champion yet"
        return Verdict(True, finding, f"first model: {finding}", record)
    try:
        champion_features = registry.manifest(champion).get("feature_names")
        if champion_features != feature_names:
            finding = (
                f"champion {champion} uses other features ({champion_features}) than the "
                f"store now computes ({feature_names}): it cannot be compared on this holdout"
            )
            return Verdict(True, finding, f"{finding}, so the challenger replaces it", record)
        scores = np.asarray(registry.load_booster(champion).predict(fitted.X_holdout))
    except (RegistryError, lgb.basic.LightGBMError, OSError, ValueError) as exc:
        finding = f"champion {champion} cannot be evaluated ({exc})"
        return Verdict(True, finding, f"{finding}: promoting", record)
    record["metrics"] = evaluate(fitted.y_holdout, scores)
    challenger_ap = fitted.metrics["average_precision"]
    champion_ap = record["metrics"]["average_precision"]
    finding = (
        f"challenger average precision {challenger_ap:.4f} vs champion {champion} "
        f"{champion_ap:.4f} on the same holdout (min_improvement {cfg.min_improvement:g})"
    )
    if challenger_ap > champion_ap + cfg.min_improvement:
        return Verdict(True, finding, f"{finding}: the challenger wins", record)
    return Verdict(False, finding, f"{finding}: not better, the champion stays", record)


def manifest(
    feature_names: list[str],
    cfg: TrainSettings,
    split: Split,
    label_cutoff: dt.datetime | None,
    fitted: Fitted,
    verdict: Verdict,
    decision: str,
    reason: str,
    **extra: Any,
) -> dict[str, Any]:
    """A trained version's manifest (what registry.save stores); extra keys (e.g. where the
    data came from) go before the champion."""
    return {
        "code_version": fraudpipe.__version__,
        "feature_names": feature_names,
        "window": {
            "first_ts": split.train_info["first_ts"],
            "last_ts": split.holdout_info["last_ts"],
            "holdout_start": split.holdout_start.isoformat(),
            "label_cutoff": label_cutoff.isoformat() if label_cutoff is not None else None,
        },
        "train": split.train_info,
        "holdout": split.holdout_info,
        "metrics": fitted.metrics,
        "threshold": fitted.threshold,
        "params": {
            # the booster's: the configured ones, or those a search chose
            **booster_params(cfg, fitted.fit_info.get("tuning", {}).get("chosen")),
            "num_boost_round": cfg.num_boost_round,
        },
        "fit": fitted.fit_info,
        "num_trees": fitted.booster.num_trees(),
        "train_seconds": round(fitted.train_seconds, 3),
        "onnx_vs_lightgbm": fitted.onnx_vs_lightgbm,
        **extra,
        "champion": verdict.champion,
        "decision": decision,
        "reason": reason,
    }


def run_training(
    layout: Layout,
    cfg: TrainSettings,
    feature_names: list[str],
    *,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    now: dt.datetime | None = None,
    device: Device = CPU,
) -> TrainOutcome:
    """Train a challenger on the newest labeled data, save it, promote it if it wins.

    now is the simulated present (naive UTC): labels with a later label_ts are ignored
    (default: every label in the log counts). should_stop() is polled during training and
    ends the run as "stopped" with nothing saved; progress(iteration, total) reports it.
    """
    if now is not None and now.tzinfo is not None:
        now = now.astimezone(dt.UTC).replace(tzinfo=None)
    stopping = should_stop if should_stop is not None else (lambda: False)
    try:
        labeled = _load_labeled(layout, cfg, feature_names, now)
    except _NotEnoughData as exc:
        return TrainOutcome("not-enough-data", str(exc))
    split = split_holdout(labeled.data, cfg.holdout_days)
    problem = missing(split, cfg)
    if problem is not None:
        return TrainOutcome("not-enough-data", f"{problem} (label cutoff {labeled.cutoff})")
    if stopping():
        return TrainOutcome("stopped", "stop requested before training")
    try:
        fitted = fit(
            split, cfg, feature_names, should_stop=should_stop, progress=progress, device=device
        )
    except TrainingStopped as exc:
        return TrainOutcome("stopped", str(exc))
    registry = ModelRegistry(layout.models)
    verdict = judge(registry, cfg, feature_names, fitted)
    content = manifest(
        feature_names,
        cfg,
        split,
        labeled.cutoff,
        fitted,
        verdict,
        "promoted" if verdict.wins else "kept-champion",
        verdict.reason,
        feature_files_skipped=labeled.skipped_files,
        device={"kind": device.kind, "lightgbm": device.lightgbm_params()},
    )
    version = registry.save(fitted.booster, fitted.onnx_bytes, content)
    reason, metrics = verdict.reason, fitted.metrics
    if not verdict.wins:
        if cfg.shadow:  # its live figures show beside the champion's (dashboard.quality)
            registry.set_shadow(version)
            reason = f"{reason}; scored in shadow beside the champion"
        return TrainOutcome("trained-kept-champion", reason, version, metrics)
    registry.promote(version, reason)
    return TrainOutcome("trained-promoted", reason, version, metrics)
