"""training.py: one run end to end over a synthetic feature store and label log."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from fraudpipe import durable
from fraudpipe.config import TrainSettings
from fraudpipe.eventlog import EventLog
from fraudpipe.layout import Layout
from fraudpipe.registry import ModelRegistry
from fraudpipe.training import missing, run_training, split_holdout
from tests.pipeline import log_arrived_labels

START = dt.datetime(2018, 4, 1)
DAYS = 20
DELAY = dt.timedelta(days=7)
HORIZON = START + dt.timedelta(days=DAYS)  # the simulated present: labels up to here exist
FEATURES = ["f0", "f1", "f2", "f3", "f4"]
CFG = TrainSettings(
    train_days=6,
    holdout_days=2,
    min_labeled_rows=1000,
    min_frauds=20,
    num_boost_round=40,
    num_leaves=15,
    min_data_in_leaf=20,
    threads=1,
)


def make_store(
    root: Path, *, rows_per_day: int = 1200, fraud_free_from: int = DAYS
) -> pl.DataFrame:
    """Write DAYS of feature batches and their labels (label_ts = ts + 7 days, up to HORIZON).

    Fraud (3%, none from day fraud_free_from on) shifts f0, f1 and f4. The two oldest feature
    partitions also hold a file that is not Parquet: a run that reads them fails. Returns every
    label that exists by HORIZON.
    """
    layout = Layout(root)
    log = EventLog(layout, fsync=False)
    rng = np.random.default_rng(0)
    labels = []
    next_id = 0
    for day in range(DAYS):
        for half in range(2):
            n = rows_per_day // 2
            start = START + dt.timedelta(days=day, hours=12 * half)
            ts = [start + dt.timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 43199, n))]
            fraud = (rng.random(n) < 0.03) & (day < fraud_free_from)
            shift = fraud.astype(float)
            ids = np.arange(next_id, next_id + n)
            next_id += n
            batch = pl.DataFrame(
                {
                    "transaction_id": ids,
                    "ts": ts,
                    "customer_id": rng.integers(0, 100, n),
                    "terminal_id": rng.integers(0, 200, n),
                    "amount": rng.gamma(2.0, 30.0, n),
                    "created_at": np.zeros(n),
                    "f0": rng.normal(size=n) + 2.0 * shift,
                    "f1": rng.normal(size=n) + 1.0 * shift,
                    "f2": rng.normal(size=n),
                    "f3": rng.uniform(size=n),
                    "f4": rng.normal(size=n) + 0.5 * shift,
                },
                schema_overrides={"ts": pl.Datetime("us")},
            )
            part = layout.feature_store / f"day={start.date().isoformat()}"
            durable.write_parquet(part / f"b{day:03d}-{half}.parquet", batch, fsync=False)
            name = f"l{day:03d}-{half}"
            labels.append(log_arrived_labels(log, name, ids, fraud, ts, DELAY, HORIZON))
        if day < 2:
            (part / "corrupt.parquet").write_bytes(b"outside the window: never read")
    return pl.concat(labels)


def expected_split(
    root: Path, labels: pl.DataFrame, cfg: TrainSettings = CFG
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, holdout) rows as the contract defines them, computed from the ground truth."""
    store = Layout(root).feature_store
    rows = pl.concat(
        pl.read_parquet(p, columns=["transaction_id", "ts"])
        for p in sorted(store.glob("*/b*.parquet"))
    ).join(labels, on="transaction_id")
    end = rows["ts"].max()
    holdout_start = end - dt.timedelta(days=cfg.holdout_days)
    train_start = holdout_start - dt.timedelta(days=cfg.train_days)
    train = rows.filter((pl.col("ts") > train_start) & (pl.col("ts") <= holdout_start))
    return train, rows.filter(pl.col("ts") > holdout_start)


def test_first_run_promotes_then_a_worse_model_is_kept_out(tmp_path: Path) -> None:
    labels = make_store(tmp_path)
    layout = Layout(tmp_path)
    registry = ModelRegistry(layout.models)
    progress: list[tuple[int, int]] = []

    first = run_training(layout, CFG, FEATURES, progress=lambda i, n: progress.append((i, n)))
    assert first.status == "trained-promoted", first.reason
    assert "first model" in first.reason
    assert registry.current() == first.version
    # early stopping on the last valid_days of the training days, then the refit: both count
    fit = registry.manifest(first.version)["fit"]
    assert fit["valid_n"] > 0 and 1 <= fit["best_iteration"] <= 40
    assert fit["rounds"] >= fit["best_iteration"]
    assert progress[-1][0] == progress[-1][1] >= fit["rounds"]
    assert [i for i, _ in progress] == sorted(i for i, _ in progress)
    assert first.metrics is not None
    assert first.metrics["average_precision"] > 0.3  # 10x the fraud rate
    assert first.metrics["roc_auc"] > 0.85

    manifest = registry.manifest(first.version)
    train, holdout = expected_split(tmp_path, labels)
    assert (manifest["train"]["n"], manifest["train"]["n_fraud"]) == (
        train.height,
        int(train["is_fraud"].sum()),
    )
    assert (manifest["holdout"]["n"], manifest["holdout"]["n_fraud"]) == (
        holdout.height,
        int(holdout["is_fraud"].sum()),
    )
    assert manifest["window"]["label_cutoff"] == labels["label_ts"].max().isoformat()
    assert manifest["window"]["last_ts"] == holdout["ts"].max().isoformat()
    assert manifest["feature_names"] == FEATURES
    assert manifest["decision"] == "promoted"
    assert manifest["champion"] == {"version": None, "metrics": None}
    assert manifest["threshold"] == first.metrics["threshold"]
    assert manifest["params"]["num_leaves"] == 15
    assert manifest["onnx_vs_lightgbm"]["max_abs_diff"] < 1e-2
    assert manifest["code_version"]

    # A challenger that cannot split (min_data_in_leaf above the row count) scores every row
    # alike: its average precision is the fraud rate, far below the champion's.
    worse = CFG.model_copy(update={"min_data_in_leaf": 1_000_000})
    second = run_training(layout, worse, FEATURES)
    assert second.status == "trained-kept-champion", second.reason
    assert registry.current() == first.version
    assert registry.versions() == [first.version, second.version]
    kept = registry.manifest(second.version)
    assert kept["decision"] == "kept-champion"
    assert "not better, the champion stays" in kept["reason"]
    assert kept["champion"]["version"] == first.version
    # the champion was scored on the same holdout: it reproduces its own holdout metrics
    assert kept["champion"]["metrics"] == first.metrics
    assert kept["holdout"] == manifest["holdout"]
    assert second.metrics is not None
    assert second.metrics["average_precision"] < first.metrics["average_precision"]
    assert [e["to"] for e in registry.history()] == [first.version]


def test_labels_after_the_cutoff_are_never_used(tmp_path: Path) -> None:
    labels = make_store(tmp_path)
    layout = Layout(tmp_path)
    train, holdout = expected_split(tmp_path, labels)
    # Late chargebacks: 50 legitimate holdout transactions turn out fraud, an hour after HORIZON.
    flipped = holdout.filter(pl.col("is_fraud") == 0).head(50)
    late = flipped.select(
        "transaction_id",
        pl.lit(1, pl.Int8).alias("is_fraud"),
        pl.lit(HORIZON + dt.timedelta(hours=1)).cast(pl.Datetime("us")).alias("label_ts"),
        pl.lit(1, pl.Int8).alias("fraud_scenario"),
    )
    EventLog(layout, fsync=False).write("labels", "late", late, HORIZON.date())

    as_of = run_training(layout, CFG, FEATURES, now=HORIZON.replace(tzinfo=dt.UTC))
    assert as_of.status == "trained-promoted", as_of.reason
    manifest = ModelRegistry(layout.models).manifest(as_of.version)
    assert manifest["window"]["label_cutoff"] <= HORIZON.isoformat()
    assert manifest["train"]["n_fraud"] == int(train["is_fraud"].sum())
    assert manifest["holdout"]["n_fraud"] == int(holdout["is_fraud"].sum())

    # Without the bound the late labels are the newest ones, and count.
    later = run_training(layout, CFG, FEATURES)
    manifest = ModelRegistry(layout.models).manifest(later.version)
    assert manifest["window"]["label_cutoff"] == (HORIZON + dt.timedelta(hours=1)).isoformat()
    assert manifest["holdout"]["n"] == holdout.height
    assert manifest["holdout"]["n_fraud"] == int(holdout["is_fraud"].sum()) + 50


def test_not_enough_data_says_what_is_missing(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    empty = run_training(layout, CFG, FEATURES)
    assert empty.status == "not-enough-data"
    assert "no labels" in empty.reason

    make_store(tmp_path)
    few_rows = run_training(layout, CFG.model_copy(update={"min_labeled_rows": 10**6}), FEATURES)
    assert few_rows.status == "not-enough-data"
    assert "need min_labeled_rows=1000000" in few_rows.reason
    few_frauds = run_training(layout, CFG.model_copy(update={"min_frauds": 10**5}), FEATURES)
    assert few_frauds.status == "not-enough-data"
    assert "need min_frauds=100000" in few_frauds.reason
    assert ModelRegistry(layout.models).versions() == []


def test_holdout_without_fraud_is_not_enough_data(tmp_path: Path) -> None:
    make_store(tmp_path, fraud_free_from=11)  # labeled days end on day 12: a fraud-free holdout
    outcome = run_training(Layout(tmp_path), CFG, FEATURES)
    assert outcome.status == "not-enough-data"
    assert "holds no fraud" in outcome.reason


def test_without_minimums_only_an_unusable_split_is_refused() -> None:
    """What offline training checks (missing(..., minimums=False)): no min_labeled_rows, no
    min_frauds, but still both classes to learn from and a fraud in the holdout."""
    ts = [START + dt.timedelta(days=d) for d in range(6)]
    rows = pl.DataFrame({"ts": ts, "is_fraud": [0, 1, 0, 0, 1, 0]})
    split = split_holdout(rows, CFG.holdout_days)  # holdout: the rows after day 3
    assert split.holdout_start == ts[3] and (split.train.height, split.holdout.height) == (4, 2)
    assert "need min_labeled_rows=1000" in str(missing(split, CFG))
    assert missing(split, CFG, minimums=False) is None
    no_fraud = split_holdout(rows.with_columns(is_fraud=pl.lit(0)), CFG.holdout_days)
    assert "hold no fraud" in str(missing(no_fraud, CFG, minimums=False))
    holdout_legit = split_holdout(rows.with_columns(is_fraud=pl.Series([0, 1, 0, 0, 0, 0])), 2)
    assert "holdout (2 rows" in str(missing(holdout_legit, CFG, minimums=False))


def test_stop_request_saves_nothing(tmp_path: Path) -> None:
    make_store(tmp_path)
    layout = Layout(tmp_path)
    seen: list[int] = []
    outcome = run_training(
        layout,
        CFG,
        FEATURES,
        progress=lambda i, n: seen.append(i),
        should_stop=lambda: len(seen) >= 3,
    )
    assert outcome.status == "stopped"
    assert "after 3 iteration" in outcome.reason
    assert ModelRegistry(layout.models).versions() == []


def test_champion_with_other_features_is_replaced(tmp_path: Path) -> None:
    make_store(tmp_path)
    layout = Layout(tmp_path)
    first = run_training(layout, CFG, FEATURES)
    fewer = run_training(layout, CFG, FEATURES[:3])
    assert fewer.status == "trained-promoted"
    assert "uses other features" in fewer.reason
    registry = ModelRegistry(layout.models)
    assert registry.current() == fewer.version
    assert registry.manifest(fewer.version)["champion"] == {
        "version": first.version,
        "metrics": None,
    }


def test_files_without_the_features_are_skipped(tmp_path: Path) -> None:
    make_store(tmp_path)
    layout = Layout(tmp_path)
    newest = sorted(layout.feature_store.glob("day=*"))[-10]  # inside the labeled window
    old = newest / "b-old-features.parquet"
    durable.write_parquet(
        old, pl.read_parquet(next(newest.glob("b*.parquet"))).drop("f4"), fsync=False
    )
    outcome = run_training(layout, CFG, FEATURES)
    assert outcome.status == "trained-promoted", outcome.reason
    assert ModelRegistry(layout.models).manifest(outcome.version)["feature_files_skipped"] == 1
