"""The fraud handbook's evaluation protocol, on any dataset with our transaction columns.

Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection", chapters 3-4:

- features over the whole history, by :func:`fraudpipe.features.compute_features` (the code path
  streaming uses), with labels arriving ``gap_days`` after their transaction;
- train on ``train_days`` days from ``train_start`` (the handbook: 2018-07-25..07-31), then a
  ``gap_days`` gap (the label delay: the last training labels arrive as the test starts), then
  ``test_days`` test days (the handbook: 2018-08-08..08-14). The model fits on the last
  ``fit_days`` days up to the training week's end: the training week alone by default, as the
  handbook's models; ``fraudpipe evaluate`` passes the train stage's ``train.train_days`` (14),
  as the pipeline fits. The training week alone decides the test set (below), so a longer fit
  is measured on the same test rows as the handbook's models;
- known compromised cards leave the test set. The handbook's ``get_train_test_set`` starts
  from the customers with a fraud in the training week and, before each test day T, adds those
  with a fraud on day T - gap - 1: the frauds whose label arrived before T (a label arrives
  ``gap_days`` after its transaction), counted from the training week's first day on. So a
  test row of day T is removed when its customer has a fraud with ts >= train_start and
  label_ts < T (midnight), which is what :func:`known_compromised_mask` computes;
- metrics on what remains: ROC AUC, average precision, and card precision@100
  (:func:`card_precision_at_k`);
- with ``folds``, the handbook's prequential validation (chapter 5): that many windows, each
  starting one test length (7 days) after the one before (from 2018-07-25: 07-25, 08-01,
  08-08, 08-15 for four), each fold's model trained on its own training days only, and the
  mean and sample standard deviation of each figure over folds (:class:`Folds`). The
  features are computed once for every fold: a row's depend only on what came before it.

On the simulator's own output (a ``fraud_scenario`` that agrees with every label) the
evaluation also gives the ROC AUC no model can pass, in expectation (:func:`ceiling`): the
frauds of a terminal compromised so recently that none of its frauds' labels has arrived look
exactly like genuine payments, since the compromised terminals are drawn at random. Ranked at
chance, as they must be, they cap the AUC at 1 - (their share of the test frauds) / 2, and the
average precision at that of a ranking with every other fraud first and those at random
places among the genuine rows (:func:`ap_at_chance`: the mean over seeded random placements).
The handbook's own files carry the same truth as ``TX_FRAUD_SCENARIO``.

The model is the pipeline's own (:func:`fraudpipe.model.train_booster` with the train
settings), early-stopped on the last ``valid_days`` of the training window and then refitted on
the whole window with the rounds found, as the train stage does. With ``tune_trials`` the
parameters are first searched on those same validation days (model.train_with_validation), as
``fraudpipe train --tune`` does; the test days play no part in the choice.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import polars as pl
from rich.table import Table

from fraudpipe import replay
from fraudpipe.config import FeatureSettings, TrainSettings
from fraudpipe.features import compute_features, feature_names
from fraudpipe.model import CannotTune, average_precision, roc_auc, train_with_validation
from fraudpipe.simulate import DAY_US

if TYPE_CHECKING:
    from fraudpipe.model import Trial

HANDBOOK_TRAIN_START = dt.date(2018, 7, 25)
TOP_K = 100
AP_DRAWS = 1000  # random placements behind the average precision ceiling
METRICS = ("roc_auc", "average_precision", "card_precision_at_100")

# Published test results of the handbook (ROC AUC, average precision, card precision@100).
PUBLISHED: dict[str, tuple[float, float, float]] = {
    "logistic regression": (0.871, 0.606, 0.291),
    "random forest": (0.867, 0.658, 0.287),
    "XGBoost": (0.862, 0.639, 0.273),
    "tuned XGBoost": (0.869, 0.687, 0.303),
    "random": (0.5, 0.007, 0.017),
}

_EPOCH = dt.date(1970, 1, 1)

Step = Callable[[str], None]  # called with a description as each long step starts


class EvaluationError(ValueError):
    """The data cannot be evaluated under the protocol; the message says why."""


@dataclass(frozen=True)
class Window:
    """Train, gap and test days: [train_start, +train_days) gap [test_start, +test_days); the
    model fits on [fit_start, train end), the last fit_days days (None: train_days) up to the
    training week's end."""

    train_start: dt.date
    train_days: int = 7
    gap_days: int = 7
    test_days: int = 7
    fit_days: int | None = None

    @property
    def train_end(self) -> dt.date:
        """The day after the last training day."""
        return self.train_start + dt.timedelta(days=self.train_days)

    @property
    def fit_start(self) -> dt.date:
        return self.train_end - dt.timedelta(
            days=self.train_days if self.fit_days is None else self.fit_days
        )

    @property
    def test_start(self) -> dt.date:
        return self.train_start + dt.timedelta(days=self.train_days + self.gap_days)

    @property
    def end(self) -> dt.date:
        """The day after the last test day."""
        return self.test_start + dt.timedelta(days=self.test_days)

    def as_dict(self) -> dict[str, Any]:
        last = dt.timedelta(days=1)
        return {
            "train": [self.train_start.isoformat(), (self.train_end - last).isoformat()],
            "fit": [self.fit_start.isoformat(), (self.train_end - last).isoformat()],
            "test": [self.test_start.isoformat(), (self.end - last).isoformat()],
            "train_days": self.train_days,
            "fit_days": (self.train_end - self.fit_start).days,
            "gap_days": self.gap_days,
            "test_days": self.test_days,
        }


def choose_window(
    first_day: dt.date,
    last_day: dt.date,
    train_start: dt.date | None = None,
    train_days: int = 7,
    gap_days: int = 7,
    test_days: int = 7,
    folds: int = 1,
    fit_days: int | None = None,
) -> Window:
    """The protocol's (first) window on data covering first_day..last_day (whole days).

    Without train_start: the handbook's 2018-07-25 when the data covers its window (each of
    the ``folds`` windows, see :func:`fold_windows`, and the fit days before the first
    training week), else the latest start that still fits (the last test ends on the data's
    last day).
    """
    fit = train_days if fit_days is None else fit_days
    for name, value, least in (
        ("train days", train_days, 1),
        ("gap days", gap_days, 0),
        ("test days", test_days, 1),
        ("folds", folds, 1),
        ("fit days", fit, 1),
    ):
        if value < least:
            raise EvaluationError(f"{name} must be at least {least}, got {value}")
    span = dt.timedelta(days=train_days + gap_days + test_days + (folds - 1) * test_days)
    before = dt.timedelta(days=max(fit - train_days, 0))  # fit days before the training week
    after_last = last_day + dt.timedelta(days=1)
    if train_start is None:
        fits = (
            first_day <= HANDBOOK_TRAIN_START - before and HANDBOOK_TRAIN_START + span <= after_last
        )
        train_start = HANDBOOK_TRAIN_START if fits else after_last - span
    window = Window(train_start, train_days, gap_days, test_days, fit_days)
    if train_start - before < first_day or train_start + span > after_last:
        parts = f"{train_days} train + {gap_days} gap + {test_days} test"
        if folds > 1:
            parts = f"{folds} folds of {parts}, each {test_days} days after the one before"
        if before:
            parts = f"{before.days} more fit days, then {parts}"
        raise EvaluationError(
            f"too few days for the protocol: it needs {(span + before).days} days ({parts}) "
            f"from {train_start - before} to {train_start + span - dt.timedelta(days=1)}, but "
            f"the data covers {first_day} to {last_day} ({(last_day - first_day).days + 1} days)"
        )
    return window


def fold_windows(first: Window, folds: int) -> list[Window]:
    """The handbook's prequential folds: ``folds`` windows, each one test length after the one
    before (its train days start where the previous fold's started, plus test_days)."""
    step = dt.timedelta(days=first.test_days)
    return [replace(first, train_start=first.train_start + i * step) for i in range(folds)]


def _day_numbers(ts: pl.Series) -> npt.NDArray[np.int64]:
    return np.asarray(ts.to_physical().to_numpy() // DAY_US, dtype=np.int64)


def _day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


def known_compromised_mask(data: pl.DataFrame, window: Window) -> npt.NDArray[np.bool_]:
    """For each row of data: is it a test row whose card was known compromised that day?

    data: ts, customer_id, is_fraud, label_ts. A card is known compromised on test day T when
    it has a fraud with ts >= train_start whose label arrived before T (label_ts < T 00:00).
    """
    start_us = _day_number(window.train_start) * DAY_US
    frauds = data.filter(
        (pl.col("is_fraud") == 1) & (pl.col("ts").dt.epoch("us") >= start_us)
    ).select(
        "customer_id",
        # the first test day on which this fraud is known: the day after its label arrived
        known_from=pl.col("label_ts").dt.epoch("us") // DAY_US + 1,
    )
    first_known = frauds.group_by("customer_id").agg(pl.col("known_from").min())
    joined = data.select("customer_id", day=pl.col("ts").dt.epoch("us") // DAY_US).join(
        first_known, on="customer_id", how="left", maintain_order="left"
    )
    test_lo, test_hi = _day_number(window.test_start), _day_number(window.end)
    known = (
        (pl.col("day") >= test_lo)
        & (pl.col("day") < test_hi)
        & (pl.col("known_from") <= pl.col("day")).fill_null(False)
    )
    return np.asarray(joined.select(known.alias("k"))["k"].to_numpy(), dtype=np.bool_)


def unrevealed_frauds(data: pl.DataFrame) -> npt.NDArray[np.bool_]:
    """For each row of data: a terminal-compromise fraud (fraud_scenario 2) that no arrived label
    can have revealed?

    data: transaction_id, ts, terminal_id, is_fraud, fraud_scenario, label_ts. A compromised
    terminal's payments are all fraud, so its compromise shows as a run of consecutive frauds
    at that terminal (in (ts, id) order). A scenario-2 fraud is unrevealed when no fraud of its
    run up to it, itself included, has a label that arrived by its time.
    """
    all_ts = data["ts"].to_physical().to_numpy()
    all_terminals = data["terminal_id"].to_numpy()
    order = np.lexsort((data["transaction_id"].to_numpy(), all_ts, all_terminals))
    terminal = all_terminals[order]
    fraud = data["is_fraud"].to_numpy()[order] == 1
    ts = all_ts[order]
    label_ts = data["label_ts"].to_physical().to_numpy()[order]
    starts = fraud & np.concatenate(([True], (terminal[1:] != terminal[:-1]) | ~fraud[:-1]))
    # a genuine row joins the run before it, after all of that run's frauds: it moves no
    # fraud's running minimum
    runs = pl.DataFrame({"run": np.cumsum(starts), "arrived": label_ts})
    first_arrival = runs.select(pl.col("arrived").cum_min().over("run"))["arrived"].to_numpy()
    scenario = data["fraud_scenario"].to_numpy()[order]
    out = np.empty(len(order), np.bool_)
    out[order] = fraud & (scenario == 2) & (first_arrival > ts)
    return out


def ap_at_chance(
    first: int, at_chance: int, genuine: int, *, draws: int = AP_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """(mean, standard deviation) of the average precision of a ranking that puts ``first``
    frauds on top and ``at_chance`` frauds at random places among ``genuine`` rows below
    them, over ``draws`` seeded random placements.

    With F = first + at_chance frauds, AP is the mean over frauds of the precision at each
    one's rank: 1 for each of the first, and (first + j) / (first + k_j) for the j-th of the
    others at place k_j (1-based) of the at_chance + genuine rows below.
    """
    n_fraud = first + at_chance
    if n_fraud == 0:
        raise ValueError("no fraud: average precision is undefined")
    if at_chance == 0:
        return 1.0, 0.0
    rng = np.random.default_rng(seed)
    j = np.arange(1, at_chance + 1, dtype=np.float64)
    values = np.empty(draws)
    for d in range(draws):
        k = np.sort(rng.choice(at_chance + genuine, size=at_chance, replace=False)) + 1.0
        values[d] = (first + float(np.sum((first + j) / (first + k)))) / n_fraud
    return float(values.mean()), float(values.std(ddof=1)) if draws > 1 else 0.0


def ceiling(
    y: np.ndarray, scores: np.ndarray, unrevealed: np.ndarray
) -> dict[str, float | int | None]:
    """The test days' ceilings: every fraud but the unrevealed ones ranked first, those at
    chance among the genuine rows. ROC AUC: 1/2 for each unrevealed fraud, with its spread
    (the standard deviation of the AUC that chance gives them: Mann-Whitney's, without ties);
    average precision: :func:`ap_at_chance`'s mean and spread. Also the model's AUC without
    the unrevealed frauds."""
    n_fraud = int(y.sum())
    n_genuine = len(y) - n_fraud
    b = int(unrevealed.sum())
    if n_fraud == 0 or n_genuine == 0:
        auc, sd, ap, ap_sd = None, None, None, None
    else:
        auc = 1 - b / (2 * n_fraud)
        sd = b / n_fraud * math.sqrt((b + n_genuine + 1) / (12 * b * n_genuine)) if b else 0.0
        ap, ap_sd = ap_at_chance(n_fraud - b, b, n_genuine)
    return {
        "roc_auc": auc,
        "roc_auc_sd": sd,
        "average_precision": ap,
        "average_precision_sd": ap_sd,
        "unrevealed_frauds": b,
        "model_roc_auc_on_revealed": roc_auc(y[~unrevealed], scores[~unrevealed]),
    }


def _no_ceiling_because(data: pl.DataFrame) -> str | None:
    """Why the data cannot give a ceiling (None: it can): it needs the simulator's truth."""
    truth = data["fraud_scenario"]
    if not (truth > 0).any():
        return "the data carries no fraud_scenario (the simulator's truth)"
    if ((truth > 0).cast(pl.Int8) != data["is_fraud"]).any():
        return "fraud_scenario disagrees with is_fraud (noisy labels)"
    return None


def card_precision_at_k(
    day: np.ndarray, customer: np.ndarray, y: np.ndarray, score: np.ndarray, k: int = TOP_K
) -> tuple[float, list[float]]:
    """The handbook's card precision@k: (mean over days, per-day values), days in order.

    Per day: each card's score is its highest transaction score and it is fraudulent when any
    of its transactions is; the k highest-scoring cards (ties: lower customer id first) are
    alerted, and the day's value is the number of fraudulent ones divided by k (also when the
    day has fewer than k cards). Fraudulent cards alerted on a day leave the later days.
    """
    df = pl.DataFrame(
        {
            "day": np.asarray(day, dtype=np.int64),
            "customer_id": np.asarray(customer, dtype=np.int64),
            "y": np.asarray(y, dtype=np.int8),
            "score": np.asarray(score, dtype=np.float64),
        }
    )
    found: set[int] = set()
    per_day: list[float] = []
    for d in sorted(df["day"].unique().to_list()):
        cards = (
            df.filter((pl.col("day") == d) & ~pl.col("customer_id").is_in(list(found)))
            .group_by("customer_id")
            .agg(pl.col("score").max(), pl.col("y").max())
            .sort(["score", "customer_id"], descending=[True, False])
            .head(k)
        )
        hits = cards.filter(pl.col("y") == 1)["customer_id"].to_list()
        per_day.append(len(hits) / k)
        found.update(hits)
    return (float(np.mean(per_day)) if per_day else 0.0), per_day


@dataclass(frozen=True)
class Evaluation:
    window: Window
    metrics: dict[str, Any]
    info: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.as_dict(),
            "metrics": self.metrics,
            **self.info,
            "published": _published(),
        }


def _published() -> dict[str, dict[str, float]]:
    return {name: dict(zip(METRICS, v, strict=True)) for name, v in PUBLISHED.items()}


def data_days(data: pl.DataFrame) -> tuple[dt.date, dt.date]:
    """(first, last) calendar day of the data's transactions."""
    days = _day_numbers(data["ts"])
    return _EPOCH + dt.timedelta(days=int(days.min())), _EPOCH + dt.timedelta(days=int(days.max()))


@dataclass(frozen=True)
class Prepared:
    """The rows of the evaluated days with their features, computed once for every fold (a
    row's features depend only on what came before it)."""

    data_rows: npt.NDArray[np.bool_]  # which rows of the data these are
    rows: pl.DataFrame  # transaction_id, is_fraud, label_ts, then the features' frame
    names: list[str]
    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int8]
    day: npt.NDArray[np.int64]
    unrevealed: npt.NDArray[np.bool_] | None  # None: no ceiling, for no_ceiling's reason
    no_ceiling: str | None
    features_s: float


def prepare(
    data: pl.DataFrame, windows: list[Window], features: FeatureSettings, step: Step | None = None
) -> Prepared:
    """Features of every row from the first window's fit days to the last one's test end (the
    history before them included), as the streaming code path computes them."""
    say = step if step is not None else (lambda _: None)
    if data["is_fraud"].null_count():
        raise EvaluationError(
            f"{data['is_fraud'].null_count()} row(s) have no fraud label (is_fraud / TX_FRAUD): "
            "the protocol needs every transaction labeled"
        )
    names = feature_names(features)
    lo_us = _day_number(min(w.fit_start for w in windows)) * DAY_US
    hi_us = _day_number(max(w.end for w in windows)) * DAY_US
    ts_us = pl.col("ts").dt.epoch("us")
    data_rows = data.select(((ts_us >= lo_us) & (ts_us < hi_us)).alias("w"))["w"].to_numpy()
    in_span = data.filter(pl.Series(data_rows))
    tx = data.select(
        "transaction_id", "ts", "customer_id", "terminal_id", "amount", created_at=pl.lit(0.0)
    )
    labels = data.select("transaction_id", "is_fraud", "label_ts")
    say(f"computing {len(names)} features for {in_span.height:,} rows")
    started = time.perf_counter()
    try:
        feats = compute_features(tx, labels, features, query_ids=in_span["transaction_id"])
    except ValueError as exc:
        raise EvaluationError(f"cannot compute the features: {exc}") from None
    features_s = round(time.perf_counter() - started, 2)
    rows = in_span.select("transaction_id", "is_fraud", "label_ts").hstack(
        feats.drop("transaction_id")
    )
    why = _no_ceiling_because(data)
    return Prepared(
        data_rows=data_rows,
        rows=rows,
        names=names,
        X=np.ascontiguousarray(rows.select(names).to_numpy(), dtype=np.float32),
        y=rows["is_fraud"].to_numpy().astype(np.int8),
        day=_day_numbers(rows["ts"]),
        unrevealed=unrevealed_frauds(data)[data_rows] if why is None else None,
        no_ceiling=why,
        features_s=features_s,
    )


def evaluate_window(
    prep: Prepared,
    window: Window,
    train: TrainSettings,
    *,
    tune_trials: int | None = None,
    step: Step | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_trial: Callable[[list[Trial], int], None] | None = None,
) -> Evaluation:
    """Fit on the window's fit days of prep, test on its test days.

    tune_trials, progress and on_trial go to model.train_with_validation.
    """
    say = step if step is not None else (lambda _: None)
    day, X, y = prep.day, prep.X, prep.y
    train_lo = _day_number(window.fit_start)
    train_end = _day_number(window.train_end)
    test_lo, test_hi = _day_number(window.test_start), _day_number(window.end)
    is_train = (day >= train_lo) & (day < train_end)
    in_test = (day >= test_lo) & (day < test_hi)
    is_test = in_test & ~known_compromised_mask(prep.rows, window)
    n_removed = int((in_test & ~is_test).sum())
    n_fraud = int(y[is_train].sum())
    if n_fraud == 0 or n_fraud == int(is_train.sum()):
        raise EvaluationError(
            f"the fit days ({window.as_dict()['fit'][0]}..{window.as_dict()['fit'][1]}) "
            f"hold {int(is_train.sum())} transactions, {n_fraud} of them fraud: a model needs "
            "both classes"
        )
    say(f"training on {int(is_train.sum()):,} rows from {window.fit_start}")
    started = time.perf_counter()
    try:
        booster, fit_info = train_with_validation(
            X[is_train],
            y[is_train],
            day[is_train],
            train,
            prep.names,
            tune_trials=tune_trials,
            progress=progress,
            on_trial=on_trial,
        )
    except CannotTune as exc:
        raise EvaluationError(f"cannot tune on the training days: {exc}") from None
    train_s = round(time.perf_counter() - started, 2)
    say(f"scoring {int(is_test.sum()):,} test rows from {window.test_start}")
    scores = np.asarray(booster.predict(X[is_test]), dtype=np.float64)
    y_test = y[is_test]
    if not y_test.any():
        raise EvaluationError(
            f"the test days ({window.as_dict()['test'][0]}..{window.as_dict()['test'][1]}) "
            "hold no fraud once known compromised cards leave: nothing to measure"
        )
    cp_mean, cp_days = card_precision_at_k(
        day[is_test], prep.rows["customer_id"].to_numpy()[is_test], y_test, scores
    )
    metrics = {
        "roc_auc": roc_auc(y_test, scores),
        "average_precision": average_precision(y_test, scores),
        "card_precision_at_100": cp_mean,
        "card_precision_at_100_per_day": cp_days,
    }
    if prep.unrevealed is not None:
        bound: dict[str, Any] = ceiling(y_test, scores, prep.unrevealed[is_test])
    else:
        bound = {"roc_auc": None, "average_precision": None, "why": prep.no_ceiling}
    info = {
        "train": {"n": int(is_train.sum()), "n_fraud": n_fraud, **fit_info},
        "test": {
            "n": int(is_test.sum()),
            "n_fraud": int(y_test.sum()),
            "removed_known_compromised": n_removed,
        },
        "features": prep.names,
        "ceiling": bound,
        "seconds": {"features_s": prep.features_s, "train_s": train_s},
    }
    return Evaluation(window, metrics, info)


@dataclass(frozen=True)
class Folds:
    """The protocol over successive windows, and each figure's mean and spread over them."""

    folds: list[Evaluation]

    def summary(self) -> dict[str, dict[str, float | None]]:
        """{figure: {mean, std}}: the metrics, and the ceilings where every fold has one;
        std is the sample standard deviation over folds (None for one fold)."""
        series: dict[str, list[float | None]] = {
            name: [f.metrics[name] for f in self.folds] for name in METRICS
        }
        for name in ("roc_auc", "average_precision"):
            series[f"ceiling_{name}"] = [f.info["ceiling"][name] for f in self.folds]
        out: dict[str, dict[str, float | None]] = {}
        for name, values in series.items():
            known = [v for v in values if v is not None]
            if len(known) < len(values):
                out[name] = {"mean": None, "std": None}
                continue
            arr = np.asarray(known, dtype=np.float64)
            std = float(arr.std(ddof=1)) if len(arr) > 1 else None
            out[name] = {"mean": float(arr.mean()), "std": std}
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "folds": [
                {k: v for k, v in f.as_dict().items() if k != "published"} for f in self.folds
            ],
            "summary": self.summary(),
            "published": _published(),
        }


def evaluate_folds(
    data: pl.DataFrame,
    windows: list[Window],
    features: FeatureSettings,
    train: TrainSettings,
    *,
    tune_trials: int | None = None,
    step: Step | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_trial: Callable[[list[Trial], int], None] | None = None,
) -> Folds:
    """The protocol on each window (features computed once for all of them); a fold's model
    sees only its own training days, and tuning only their validation days."""
    prep = prepare(data, windows, features, step)
    return Folds(
        [
            evaluate_window(
                prep,
                w,
                train,
                tune_trials=tune_trials,
                step=step,
                progress=progress,
                on_trial=on_trial,
            )
            for w in windows
        ]
    )


def load(path: Path, label_delay_days: int) -> pl.DataFrame:
    """A transactions file (Parquet/CSV, our or the handbook's column names) as
    replay.load returns it, with every row labeled; labels arrive label_delay_days later."""
    try:
        data = replay.load(path, {}, label_delay_days * DAY_US)
    except replay.ReplayError as exc:
        raise EvaluationError(str(exc)) from None
    missing = data["is_fraud"].null_count()
    if missing == data.height:
        raise EvaluationError(
            f"{path}: no fraud label column (looked for 'is_fraud' and 'TX_FRAUD'): the "
            "protocol trains and measures on labeled transactions"
        )
    if missing:
        raise EvaluationError(f"{path}: {missing} row(s) have no fraud label (is_fraud)")
    return data


def table(ev: Evaluation) -> Table:
    """Our figures beside the handbook's published ones."""
    w = ev.window.as_dict()
    out = Table(
        "model",
        "ROC AUC",
        "average precision",
        "card precision@100",
        title=f"handbook protocol: train {w['train'][0]}..{w['train'][1]}, "
        f"test {w['test'][0]}..{w['test'][1]}; fraudpipe fitted on {w['fit'][0]}..{w['fit'][1]}",
        caption=f"test: {ev.info['test']['n']:,} transactions, {ev.info['test']['n_fraud']} "
        f"frauds ({ev.info['test']['removed_known_compromised']:,} of known compromised cards "
        f"removed); train: {ev.info['train']['n']:,} transactions, "
        f"{ev.info['train']['n_fraud']} frauds" + _ceiling_caption(ev),
    )

    m = ev.metrics
    model = "LightGBM, tuned" if "tuning" in ev.info["train"] else "LightGBM"
    out.add_row(
        f"fraudpipe ({model}, {len(ev.info['features'])} features)",
        *(_cell(m[name]) for name in METRICS),
        style="bold",
    )
    bound = ev.info["ceiling"]
    if bound["roc_auc"] is not None:
        out.add_row(
            "ceiling: unrevealed frauds at chance",
            _spread(bound),
            _spread(bound, "average_precision"),
            "",
        )
    for name, (auc, ap, cp) in PUBLISHED.items():
        out.add_row(f"handbook: {name}", _cell(auc), _cell(ap), _cell(cp))
    return out


def _cell(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def folds_table(result: Folds) -> Table:
    """Each fold, the mean ± standard deviation over folds, and the handbook's figures."""
    first, last = result.folds[0].window.as_dict(), result.folds[-1].window.as_dict()
    out = Table(
        "fold",
        "ROC AUC",
        "average precision",
        "card precision@100",
        "ceiling AUC",
        "ceiling AP",
        title=f"handbook protocol, {len(result.folds)} folds: train from {first['train'][0]} "
        f"to {last['train'][0]}, each fold's test {first['test_days']} days after its "
        f"{first['train_days']} train and {first['gap_days']} gap days; fraudpipe fitted on "
        f"the {first['fit_days']} days to each training week's end",
        caption=_folds_caption(result),
    )
    for f in result.folds:
        w, b = f.window.as_dict(), f.info["ceiling"]
        out.add_row(
            f"train {w['train'][0]}, test {w['test'][0]}",
            *(_cell(f.metrics[m]) for m in METRICS),
            _cell(b["roc_auc"]),
            _cell(b["average_precision"]),
        )
    summary = result.summary()
    model = "LightGBM, tuned" if "tuning" in result.folds[0].info["train"] else "LightGBM"
    out.add_row(
        f"fraudpipe ({model}, {len(result.folds[0].info['features'])} features): mean ± std",
        *(_mean_std(summary[m]) for m in METRICS),
        _mean_std(summary["ceiling_roc_auc"]),
        _mean_std(summary["ceiling_average_precision"]),
        style="bold",
    )
    for name, (auc, ap, cp) in PUBLISHED.items():
        out.add_row(f"handbook: {name}", _cell(auc), _cell(ap), _cell(cp), "", "")
    return out


def _mean_std(stat: dict[str, float | None]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3f}" + ("" if stat["std"] is None else f" ± {stat['std']:.3f}")


def _folds_caption(result: Folds) -> str:
    n = sum(f.info["test"]["n"] for f in result.folds)
    frauds = sum(f.info["test"]["n_fraud"] for f in result.folds)
    text = f"test, all folds: {n:,} transactions, {frauds} frauds (known compromised cards removed)"
    why = result.folds[0].info["ceiling"].get("why")
    if why:
        return f"{text}; no ceiling: {why}"
    unrevealed = sum(int(f.info["ceiling"]["unrevealed_frauds"]) for f in result.folds)
    return (
        f"{text}\nceilings (simulator truth): {unrevealed} of those frauds are at terminals "
        "compromised too recently for any of their labels to have arrived; ranked at chance "
        "below every other fraud, they cap each fold's ROC AUC and average precision as shown"
    )


def _ceiling_caption(ev: Evaluation) -> str:
    bound = ev.info["ceiling"]
    if bound["roc_auc"] is None:
        return ""
    revealed = bound["model_roc_auc_on_revealed"]
    return (
        f"\nceiling (simulator truth): {bound['unrevealed_frauds']} of "
        f"{ev.info['test']['n_fraud']} test frauds are at terminals compromised too recently "
        "for any of their labels to have arrived, and no feature can tell them from genuine "
        f"payments: ranked at chance, they cap ROC AUC at {_spread(bound)} and average "
        f"precision at {_spread(bound, 'average_precision')} (one standard deviation of "
        "chance). Without them, fraudpipe's ROC AUC is "
        f"{'n/a' if revealed is None else f'{revealed:.3f}'}."
    )


def _spread(bound: dict[str, Any], name: str = "roc_auc") -> str:
    return f"{bound[name]:.3f} ± {bound[f'{name}_sd']:.3f}"
