"""Offline features, training and scoring over files, on the very code paths of the stages.

Three steps, each what a stage does to a stream, done to a whole file at once:

- :func:`build_features` (``fraudpipe features``): a transactions file, our column names or the
  fraud handbook's, read by :func:`replay.load` exactly as gather's replay reads it (labels
  arrive ``gather.label_delay_days`` after their transaction), and its features computed by
  :func:`features.compute_features` over the whole history: the function that preprocess's
  streaming features agree with to the bit. The output holds the transaction columns, the
  features, ``is_fraud`` and ``label_ts``. This is also how to *backfill*: compute the features
  of a history the pipeline never streamed (a data set of your own, a new feature set or new
  windows), train on them and promote the model before the stream has any labels, or re-score
  the past with a new model.
- :func:`train_model` (``fraudpipe train``): the train stage's own steps
  (:mod:`fraudpipe.training`: split_holdout, missing, fit, judge, manifest) on the rows of a
  time window: the newest ``holdout_days`` (up to the window's latest labeled row) are held
  out and give the metrics and the best-F1 threshold, scored by the ONNX export that inference
  runs; boosting is early-stopped on the training days' last ``valid_days``, then refitted.
  With ``--tune`` a few LightGBM parameter sets (:func:`model.tuning_candidates`) are each
  early-stopped on those same validation days and the best by validation average precision is
  the one refitted; the holdout plays no part in the choice. The model goes to a directory
  holding what a registry version holds, or into the registry (``models/``), promoted on
  request.
- :func:`score_file` (``fraudpipe score``): the scorer ``infer.scorer`` names, as infer uses
  it, the manifest's threshold (or ``infer.threshold``), and reason codes for the alerts from
  :func:`reasons.alert_reasons` (infer's), written in ``schema.RESULTS`` columns.

Offline rows never entered the stream: ``created_at`` is null in the features written here
and is passed through from the input when scoring (a feature-store file keeps it);
``scored_at`` is the wall-clock time of scoring, and ``latency_ms`` is always null, because an
offline score has no stream latency and must not pollute the end-to-end latency figures.

Every problem a user can cause (missing file, missing column, empty window) raises
:class:`OfflineError`, whose message names the file, the column or the dates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from fraudpipe import durable, schema
from fraudpipe.config import Settings
from fraudpipe.features import compute_features, feature_names
from fraudpipe.layout import Layout
from fraudpipe.replay import ReplayError, load, read_table
from fraudpipe.simulate import DAY_US

# model.py and registry.py load LightGBM and onnxruntime (seconds): `fraudpipe features` needs
# neither, so training and scoring import them where they start.
if TYPE_CHECKING:
    import lightgbm as lgb

    from fraudpipe.model import Trial


SCORE_CHUNK_ROWS = 100_000  # rows scored (and explained) per step: bounded memory, progress


class OfflineError(Exception):
    """An offline command cannot run on its input; the message names the file and column."""


# -- progress on a terminal ----------------------------------------------------------------------


class _Steps:
    """Rich progress for long steps when the console is a terminal; silent otherwise."""

    def __init__(self, console: Console | None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=console is None or not console.is_terminal,
        )

    def __enter__(self) -> _Steps:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        """A step without a known size: a spinner while it runs."""
        task = self._progress.add_task(description, total=None)
        try:
            yield
        finally:
            self._progress.remove_task(task)

    @contextlib.contextmanager
    def counted(self, description: str, total: int) -> Iterator[Callable[[int, int], None]]:
        """A step of `total` units; yields update(done, total)."""
        task = self._progress.add_task(description, total=total)

        def update(done: int, total_: int) -> None:
            self._progress.update(task, completed=done, total=total_)

        try:
            yield update
        finally:
            self._progress.remove_task(task)

    @contextlib.contextmanager
    def trials(self, total: int | None) -> Iterator[Callable[[list[Trial], int], None] | None]:
        """A parameter search of `total` candidates: yields on_trial(trials so far, total) for
        model.train_with_validation; None (and nothing shown) when total is None."""
        if total is None:
            yield None
            return
        task = self._progress.add_task("tuning", total=total)

        def update(trials: list[Trial], total_: int) -> None:
            best = max(t.average_precision for t in trials)
            self._progress.update(
                task,
                completed=len(trials),
                total=total_,
                description=f"tuning: best validation AP {best:.4f}",
            )

        try:
            yield update
        finally:
            self._progress.remove_task(task)


# -- reading files -------------------------------------------------------------------------------


def _read_table(path: Path, what: str) -> pl.DataFrame:
    """A Parquet or CSV file (by suffix, CSV types inferred), or OfflineError naming it."""
    try:
        return read_table(path, what, csv_as_text=False)
    except ReplayError as exc:
        raise OfflineError(str(exc)) from None


def _require(df: pl.DataFrame, columns: list[str], path: Path, what: str, hint: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise OfflineError(
            f"{what} {path}: missing column(s) {missing}{hint}; its columns are {df.columns}"
        )


def _cast(df: pl.DataFrame, types: dict[str, pl.DataType], path: Path, what: str) -> pl.DataFrame:
    """df with these columns cast (strictly), or OfflineError naming the column."""
    out = df
    for name, dtype in types.items():
        try:
            column = df[name]
            if isinstance(dtype, pl.Datetime) and column.dtype == pl.String:
                column = column.str.to_datetime(time_unit="us", strict=True)
            elif (
                isinstance(dtype, pl.Datetime)
                and isinstance(column.dtype, pl.Datetime)
                and column.dtype.time_zone is not None
            ):
                column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            out = out.with_columns(column.cast(dtype, strict=True).alias(name))
        except pl.exceptions.PolarsError as exc:
            raise OfflineError(
                f"{what} {path}: column {name!r} ({df[name].dtype}) cannot be read as {dtype}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
    return out


def _feature_names(settings: Settings) -> list[str]:
    try:
        return feature_names(settings.features)
    except ValueError as exc:
        raise OfflineError(f"features: {exc}") from exc


def _ts_range(ts: pl.Series) -> str:
    if ts.is_empty():
        return "no rows"
    return f"{cast(dt.datetime, ts.min())} .. {cast(dt.datetime, ts.max())}"


# -- features ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeaturesSummary:
    rows: int
    frauds: int
    first_ts: dt.datetime
    last_ts: dt.datetime
    feature_names: list[str]
    output: Path


def build_features(
    input_path: Path,
    output_path: Path,
    settings: Settings,
    console: Console | None = None,
) -> FeaturesSummary:
    """Features of every transaction of input_path over its whole history, to output_path.

    Columns are found as replay finds them (``gather.replay.columns``, then our names, then the
    handbook's); labels come from the file's is_fraud and arrive ``gather.label_delay_days``
    after their transaction, and no feature sees a label before it arrives.
    """
    _parquet_target(output_path)
    delay_us = round(settings.gather.label_delay_days * DAY_US)
    names = _feature_names(settings)
    with _Steps(console) as steps:
        with steps.step(f"reading {input_path}"):
            try:
                source = load(input_path, settings.gather.replay.columns, delay_us)
            except ReplayError as exc:
                raise OfflineError(str(exc)) from exc
        tx = source.with_columns(created_at=pl.lit(None, dtype=pl.Float64())).select(
            list(schema.TRANSACTIONS)
        )
        labels = source.filter(pl.col("is_fraud").is_not_null()).select(list(schema.LABELS))
        with steps.step(f"computing {len(names)} features of {tx.height} transactions"):
            try:
                feats = compute_features(tx, labels, settings.features)
            except ValueError as exc:
                raise OfflineError(f"input {input_path}: {exc}") from exc
        out = feats.with_columns(source["is_fraud"], source["label_ts"])
        with steps.step(f"writing {output_path}"):
            _write_parquet(output_path, out)
    return FeaturesSummary(
        rows=out.height,
        frauds=int(out["is_fraud"].fill_null(0).sum()),
        first_ts=cast(dt.datetime, out["ts"].min()),
        last_ts=cast(dt.datetime, out["ts"].max()),
        feature_names=names,
        output=output_path,
    )


def _parquet_target(path: Path) -> None:
    """Refuse an output that is not named as Parquet before any work is done."""
    if path.suffix.lower() not in (".parquet", ".pq"):
        raise OfflineError(f"output {path}: the output is Parquet: name it .parquet or .pq")


def _write_parquet(path: Path, df: pl.DataFrame) -> None:
    _parquet_target(path)
    try:
        durable.write_parquet(path, df)
    except OSError as exc:
        raise OfflineError(f"output {path}: cannot be written: {exc}") from exc


# -- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSummary:
    version: str
    metrics: dict[str, Any]
    train: dict[str, Any]
    holdout: dict[str, Any]
    where: Path  # the model directory written
    promoted: bool
    reason: str
    tuning: dict[str, Any] | None  # with --tune: the chosen params and every trial


def _labeled_rows(
    features_path: Path, labels_path: Path | None, names: list[str]
) -> tuple[pl.DataFrame, dt.datetime | None]:
    """(transaction_id, ts, float32 features, is_fraud[, label_ts]) of the labeled rows."""
    feats = _read_table(features_path, "features")
    hint = (
        " (were the features computed with another features config? `fraudpipe features` "
        "writes the columns of feature_names for its --config)"
    )
    _require(feats, ["transaction_id", "ts"], features_path, "features")
    _require(feats, names, features_path, "features", hint)
    feats = _cast(
        feats,
        {"transaction_id": pl.Int64(), "ts": schema.TS, **{f: pl.Float32() for f in names}},
        features_path,
        "features",
    )
    if labels_path is None:
        _require(feats, ["is_fraud"], features_path, "features", " (or pass --labels)")
        has_ts = "label_ts" in feats.columns
        labels = feats.select(
            "transaction_id", "is_fraud", *(["label_ts"] if has_ts else [])
        ).filter(pl.col("is_fraud").is_not_null())
        where, what = features_path, "features"
    else:
        labels = _read_table(labels_path, "labels")
        _require(labels, ["transaction_id", "is_fraud"], labels_path, "labels")
        has_ts = "label_ts" in labels.columns
        where, what = labels_path, "labels"
    types: dict[str, pl.DataType] = {"transaction_id": pl.Int64(), "is_fraud": pl.Int8()}
    if has_ts:
        types["label_ts"] = schema.TS
    labels = _cast(labels.select(list(types)), types, where, what)
    bad = ~labels["is_fraud"].is_in([0, 1]).fill_null(False)
    if bad.any():
        raise OfflineError(
            f"{what} {where}: column 'is_fraud' must hold 0 or 1; {int(bad.sum())} row(s) do not"
        )
    if has_ts:  # the latest label of a transaction wins, as in the train stage
        labels = labels.sort("label_ts").unique("transaction_id", keep="last")
    elif labels["transaction_id"].is_duplicated().any():
        dup = labels.filter(labels["transaction_id"].is_duplicated())["transaction_id"][0]
        raise OfflineError(
            f"{what} {where}: transaction {dup} has several labels and no label_ts tells "
            "which is the latest"
        )
    cutoff = cast(dt.datetime | None, labels["label_ts"].max()) if has_ts else None
    data = feats.select("transaction_id", "ts", *names).join(
        labels.select("transaction_id", "is_fraud"), on="transaction_id", how="inner"
    )
    return data, cutoff


def train_model(
    features_path: Path,
    settings: Settings,
    train_start: dt.datetime,
    train_end: dt.datetime,
    *,
    labels_path: Path | None = None,
    output: Path | None = None,
    promote: bool = False,
    tune_trials: int | None = None,
    console: Console | None = None,
) -> TrainSummary:
    """Train on the labeled rows with train_start <= ts < train_end, hold out the newest
    ``train.holdout_days``; write the model to output, or to the registry under
    ``settings.data_dir`` when output is None (and make it current when promote).

    Every label given counts (offline training is retrospective): pass --labels with only
    what was known at a time to train as of that time. The train stage's min_labeled_rows and
    min_frauds gate its scheduled runs; here the operator chose the window, so only a split
    that cannot train or be judged (no fraud or no genuine row to learn from, no fraud in the
    holdout) is refused: ``training.missing(..., minimums=False)``. Split, training, holdout
    metrics, champion comparison and manifest are the train stage's (:mod:`fraudpipe.training`);
    the manifest adds an ``offline`` record of the files and window, its decision is
    "promoted" or "saved", and its reason says so before what the comparison found.

    tune_trials=n searches n parameter sets first (model.train_with_validation); the
    manifest's params are the chosen ones and its fit record holds every trial.
    """
    from fraudpipe.model import CannotTune
    from fraudpipe.registry import ModelRegistry, RegistryError
    from fraudpipe.training import fit, judge, manifest, missing, split_holdout

    if train_start >= train_end:
        raise OfflineError(f"--train-start {train_start} must be before --train-end {train_end}")
    if output is not None and promote:
        raise OfflineError("--promote applies to the registry (--data-dir), not to --output")
    if output is not None and output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OfflineError(f"--output {output} exists and is not an empty directory")
    cfg = settings.train
    names = _feature_names(settings)
    registry = None if output is not None else ModelRegistry(Layout(settings.data_dir).models)
    with _Steps(console) as steps:
        with steps.step(f"reading {features_path}"):
            labeled, cutoff = _labeled_rows(features_path, labels_path, names)
        data = labeled.filter((pl.col("ts") >= train_start) & (pl.col("ts") < train_end)).sort(
            "ts", "transaction_id"
        )
        if data.is_empty():
            raise OfflineError(
                f"no labeled row of {features_path} has ts in [{train_start}, {train_end}) "
                f"(its labeled rows span {_ts_range(labeled['ts'])})"
            )
        split = split_holdout(data, cfg.holdout_days)
        problem = missing(split, cfg, minimums=False)
        if problem is not None:
            raise OfflineError(
                f"cannot train on [{train_start}, {train_end}) with holdout_days="
                f"{cfg.holdout_days}: {problem}"
            )
        what = f"training on {split.train.height} rows, then scoring the holdout"
        with (
            steps.trials(tune_trials) as on_trial,
            steps.counted(what, cfg.num_boost_round) as update,
        ):
            try:
                fitted = fit(
                    split, cfg, names, tune_trials=tune_trials, progress=update, on_trial=on_trial
                )
            except CannotTune as exc:
                raise OfflineError(
                    f"--tune on [{train_start}, {train_end}) with valid_days={cfg.valid_days}: "
                    f"{exc}"
                ) from exc
        verdict = judge(registry, cfg, names, fitted)
        if promote:
            reason = f"promoted by operator (fraudpipe train --promote); {verdict.finding}"
        else:
            reason = f"trained offline, not promoted; {verdict.finding}"
        content = manifest(
            names,
            cfg,
            split,
            cutoff,
            fitted,
            verdict,
            "promoted" if promote else "saved",
            reason,
            offline={
                "features": str(features_path),
                "labels": str(labels_path) if labels_path is not None else None,
                "train_start": train_start.isoformat(),
                "train_end": train_end.isoformat(),
            },
        )
        with steps.step("saving the model"):
            if registry is None:
                assert output is not None
                version = _write_model_dir(output, fitted.booster, fitted.onnx_bytes, content)
                where = output
            else:
                try:
                    version = registry.save(fitted.booster, fitted.onnx_bytes, content)
                    if promote:  # forced: the operator's word, not the champion comparison
                        registry.promote(version, reason, forced=not verdict.wins)
                except (RegistryError, OSError) as exc:
                    raise OfflineError(f"registry {registry.root}: {exc}") from exc
                where = registry.root / version
    return TrainSummary(
        version,
        fitted.metrics,
        split.train_info,
        split.holdout_info,
        where,
        promote,
        reason,
        fitted.fit_info.get("tuning"),
    )


def _write_model_dir(
    output: Path, booster: lgb.Booster, onnx_bytes: bytes, manifest: dict[str, Any]
) -> str:
    """What a registry version holds, in output (absent or empty), written in whole or not."""
    from fraudpipe.registry import MANIFEST_FILE, MODEL_FILE, ONNX_FILE, new_name

    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise OfflineError(f"--output {output} exists and is not an empty directory")
    version = new_name()
    content = {**manifest, "version": version, "created_at": dt.datetime.now(dt.UTC).isoformat()}
    tmp = output.parent / f".{output.name}.{version}.tmp"
    try:
        tmp.mkdir(parents=True)
        durable.write_bytes(tmp / MODEL_FILE, booster.model_to_string().encode())
        durable.write_bytes(tmp / ONNX_FILE, onnx_bytes)
        durable.write_json(tmp / MANIFEST_FILE, content)
        if output.exists():
            output.rmdir()
        os.rename(tmp, output)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OfflineError(f"--output {output}: cannot write the model: {exc}") from exc
    return version


# -- scoring -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    version: str
    onnx: Path
    booster: Path
    manifest: dict[str, Any]


def _resolve_model(model: str, settings: Settings) -> _Model:
    """A model directory, else a version (or "current") of the data dir's registry."""
    from fraudpipe.registry import (
        CURRENT,
        MANIFEST_FILE,
        MODEL_FILE,
        ONNX_FILE,
        ModelRegistry,
        RegistryError,
    )

    path = Path(model)
    if path.is_dir() and (path / MANIFEST_FILE).exists():
        missing = [f for f in (ONNX_FILE, MODEL_FILE) if not (path / f).is_file()]
        if missing:
            raise OfflineError(f"model directory {path}: missing {missing}")
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise OfflineError(
                f"model directory {path}: unreadable {MANIFEST_FILE}: {exc}"
            ) from exc
        name = str(manifest.get("version") or path.name)
        return _Model(name, path / ONNX_FILE, path / MODEL_FILE, manifest)
    registry = ModelRegistry(Layout(settings.data_dir).models)
    version = registry.current() if model == CURRENT else model
    if version is None:
        raise OfflineError(f"--model current: no model promoted yet under {registry.root}")
    try:
        manifest = registry.manifest(version)
        onnx = registry.onnx_path(version)
    except RegistryError as exc:
        raise OfflineError(
            f"--model {model}: not a model directory (one holding {MANIFEST_FILE}), "
            f"nor a version in the registry: {exc}"
        ) from exc
    return _Model(version, onnx, onnx.parent / MODEL_FILE, manifest)


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    alerts: int
    model_version: str
    threshold: float
    output: Path


def score_file(
    model: str,
    input_path: Path,
    output_path: Path,
    settings: Settings,
    console: Console | None = None,
) -> ScoreSummary:
    """Score every row of a features file as infer would; write schema.RESULTS rows.

    The threshold is ``infer.threshold`` when set, else the manifest's (as infer chooses).
    """
    import lightgbm as lgb

    from fraudpipe.reasons import Forest, alert_reasons
    from fraudpipe.scoring import ModelLoadError, open_scorer

    _parquet_target(output_path)
    resolved = _resolve_model(model, settings)
    names = list(resolved.manifest.get("feature_names") or [])
    if not names:
        raise OfflineError(f"model {resolved.version}: its manifest lists no feature_names")
    configured = settings.infer.threshold
    threshold = configured if configured is not None else resolved.manifest.get("threshold")
    if threshold is None:
        raise OfflineError(
            f"model {resolved.version}: its manifest has no threshold; pass --threshold"
        )
    threshold = float(threshold)
    threads = settings.infer.threads
    try:
        scorer = open_scorer(
            settings.infer.scorer, resolved.booster.parent, resolved.manifest, threads
        )
        forest = Forest.of(lgb.Booster(model_file=str(resolved.booster)), threads=threads)
    except (ModelLoadError, lgb.basic.LightGBMError) as exc:
        raise OfflineError(f"model {resolved.version}: {exc}") from exc
    df = _read_table(input_path, "input")
    if "created_at" not in df.columns:
        df = df.with_columns(created_at=pl.lit(None, dtype=pl.Float64()))
    wanted = {**schema.TRANSACTIONS, **{f: pl.Float64() for f in names}}
    _require(df, list(wanted), input_path, "input", f" (model {resolved.version} needs them)")
    df = _cast(df.select(list(wanted)), wanted, input_path, "input")
    parts: list[pl.DataFrame] = []
    with (
        _Steps(console) as steps,
        steps.counted(f"scoring {df.height} rows", df.height) as update,
    ):
        for start in range(0, max(df.height, 1), SCORE_CHUNK_ROWS):
            chunk = df.slice(start, SCORE_CHUNK_ROWS)
            X = chunk.select(names).to_numpy().astype(np.float32)  # as infer builds X
            scores = scorer.score(X)
            scored_at = time.time()
            alerts = scores >= threshold
            parts.append(
                chunk.select(list(schema.TRANSACTIONS)).with_columns(
                    score=pl.Series(scores, dtype=pl.Float32),
                    is_alert=pl.Series(alerts, dtype=pl.Boolean),
                    model_version=pl.lit(resolved.version, dtype=pl.String),
                    scored_at=pl.lit(scored_at, dtype=pl.Float64),
                    latency_ms=pl.lit(None, dtype=pl.Float64),  # offline: no stream latency
                    reasons=alert_reasons(forest, X, alerts, names),
                    shadow_score=pl.lit(None, dtype=pl.Float32),  # one model offline
                    shadow_version=pl.lit(None, dtype=pl.String),
                )
            )
            update(start + chunk.height, df.height)
        out = schema.check(pl.concat(parts), schema.RESULTS, f"results {output_path}")
        _write_parquet(output_path, out)
    return ScoreSummary(
        rows=out.height,
        alerts=int(out["is_alert"].sum()),
        model_version=resolved.version,
        threshold=threshold,
        output=output_path,
    )
