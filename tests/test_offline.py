"""Offline `features`, `train` and `score`: real files through the real CLI, and parity with
the streaming stages (the same features to the bit, the same scores, the same reasons)."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from fraudpipe import schema
from fraudpipe.config import SimulatorSettings, load_settings
from fraudpipe.features import compute_features, feature_names
from fraudpipe.layout import Layout
from fraudpipe.model import booster_params
from fraudpipe.reasons import Forest, top_contributions
from fraudpipe.registry import ModelRegistry
from fraudpipe.replay import HANDBOOK_COLUMNS
from fraudpipe.scoring import open_scorer
from fraudpipe.simulate import Simulator
from tests.conftest import fraudpipe
from tests.pipeline import scored

DAYS = 40
WINDOW = ("--train-start", "2018-04-01", "--train-end", "2018-05-11")  # all 40 days


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated history as Parquet (our names) and CSV (the handbook's), a config."""
    tmp = tmp_path_factory.mktemp("offline")
    sim = Simulator(SimulatorSettings(n_customers=300, n_terminals=600), label_delay_days=7.0)
    df = pl.concat([sim.day(d) for d in range(DAYS)])
    df.write_parquet(tmp / "simulated.parquet")  # every column, label_ts included
    df.select("transaction_id", "ts", "customer_id", "terminal_id", "amount", "is_fraud").sample(
        fraction=1.0, shuffle=True, seed=1
    ).write_parquet(tmp / "tx.parquet")
    df.select(pl.col(ours).alias(theirs) for ours, theirs in HANDBOOK_COLUMNS.items()).with_columns(
        pl.col("TX_DATETIME").dt.strftime("%Y-%m-%d %H:%M:%S%.6f")
    ).write_csv(tmp / "tx.csv")
    config = {
        "gather": {
            "source": "replay",  # only the streaming parity test streams; offline ignores it
            "replay": {"path": str(tmp / "tx.parquet")},
            "label_delay_days": 7.0,
            "rate": 1_000_000,
            "batch_interval_s": 0.003,  # 3000 rows a batch
        },
        "train": {"threads": 1, "num_boost_round": 30, "min_data_in_leaf": 20},
        "queue": {"max_backlog": 10_000, "fsync": False, "results_hold_s": 0},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(config))
    return tmp


def cli(work: Path, *args: str, check: bool = True) -> str:
    proc = fraudpipe(*args, "--config", str(work / "cfg.yaml"), check=check)
    return proc.stdout


def score_current(work: Path, data: Path, output: Path) -> None:
    """`fraudpipe score` with the current model of data's registry, on work's features."""
    cli(work, "score", "--model", "current", "--data-dir", str(data),
        "--input", str(work / "feats.parquet"), "--output", str(output))  # fmt: skip


@pytest.fixture(scope="module")
def offline(work: Path) -> Path:
    """features (from the CSV) -> train --output model -> score."""
    cli(work, "features", "--input", str(work / "tx.csv"), "--output", str(work / "feats.parquet"))
    cli(
        work,
        "train",
        "--features",
        str(work / "feats.parquet"),
        *WINDOW,
        "--output",
        str(work / "model"),
    )
    cli(
        work,
        "score",
        "--model",
        str(work / "model"),
        "--input",
        str(work / "feats.parquet"),
        "--output",
        str(work / "results.parquet"),
    )
    return work


def test_features_equal_compute_features(offline: Path) -> None:
    settings = load_settings(offline / "cfg.yaml")
    sim = pl.read_parquet(offline / "simulated.parquet")
    tx = sim.with_columns(created_at=pl.lit(None, pl.Float64)).select(list(schema.TRANSACTIONS))
    labels = sim.filter(pl.col("is_fraud").is_not_null()).select(list(schema.LABELS))
    expected = compute_features(tx, labels, settings.features).with_columns(
        sim["is_fraud"], sim["label_ts"]
    )
    feats = pl.read_parquet(offline / "feats.parquet")
    assert feats.columns == [
        *schema.TRANSACTIONS,
        *(f for f in feature_names(settings.features) if f != "amount"),
        "is_fraud",
        "label_ts",
    ]
    assert_frame_equal(feats, expected, check_exact=True)
    # The same rows from a shuffled Parquet file in our own column names.
    cli(
        offline,
        "features",
        "--input",
        str(offline / "tx.parquet"),
        "--output",
        str(offline / "feats-pq.parquet"),
    )
    assert_frame_equal(pl.read_parquet(offline / "feats-pq.parquet"), feats, check_exact=True)


def test_model_directory_holds_a_registry_version(offline: Path) -> None:
    settings = load_settings(offline / "cfg.yaml")
    model = offline / "model"
    assert sorted(p.name for p in model.iterdir()) == ["manifest.json", "model.onnx", "model.txt"]
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["feature_names"] == feature_names(settings.features)
    assert manifest["params"] == {
        **booster_params(settings.train),
        "num_boost_round": settings.train.num_boost_round,
    }
    # the holdout is the newest holdout_days (3) of the 40 days; its metrics set the threshold
    assert manifest["window"]["holdout_start"].startswith("2018-05-07T23:")
    assert manifest["holdout"]["first_ts"] > manifest["window"]["holdout_start"]
    assert (
        manifest["train"]["n"] + manifest["holdout"]["n"]
        == pl.scan_parquet(offline / "feats.parquet").select(pl.len()).collect().item()
    )
    assert manifest["threshold"] == manifest["metrics"]["threshold"] is not None
    assert manifest["metrics"]["roc_auc"] > 0.8
    # trained as the train stage trains: early stopping on the last valid_days, then a refit
    assert manifest["fit"]["rounds"] == manifest["num_trees"]
    assert set(manifest["fit"]) >= {"rounds", "best_iteration"}
    assert manifest["offline"]["train_start"] == "2018-04-01T00:00:00"
    assert manifest["decision"] == "saved" and "there is no champion" in manifest["reason"]


def test_score_is_what_infer_computes(offline: Path) -> None:
    manifest = json.loads((offline / "model" / "manifest.json").read_text())
    names = manifest["feature_names"]
    feats = pl.read_parquet(offline / "feats.parquet")
    results = pl.read_parquet(offline / "results.parquet")
    assert results.schema == pl.Schema(schema.RESULTS)
    assert_frame_equal(schema.check(results, schema.RESULTS, "results"), results)
    assert results["transaction_id"].to_list() == feats["transaction_id"].to_list()

    X = feats.select(names).to_numpy().astype(np.float32)
    scores = open_scorer("compiled", offline / "model", manifest).score(X)  # infer's default
    assert np.array_equal(results["score"].to_numpy(), scores)
    alerts = scores >= manifest["threshold"]
    assert np.array_equal(results["is_alert"].to_numpy(), alerts)
    assert 0 < alerts.sum() < len(alerts)
    assert (results["model_version"] == manifest["version"]).all()
    assert results["latency_ms"].is_null().all() and results["created_at"].is_null().all()
    assert results["scored_at"].is_not_null().all()

    n_reasons = results["reasons"].list.len()
    assert (n_reasons.filter(results["is_alert"]) == schema.REASONS).all()
    assert (n_reasons.filter(~results["is_alert"]) == 0).all()
    booster = lgb.Booster(model_file=str(offline / "model" / "model.txt"))
    contributions = Forest.of(booster).contributions(X[alerts])
    expected = top_contributions(contributions, names, schema.REASONS)
    got = [
        [(r["feature"], r["contribution"]) for r in row]
        for row in results.filter("is_alert")["reasons"].to_list()
    ]
    assert got == expected


def test_labels_file_and_registry_promotion(offline: Path, tmp_path: Path) -> None:
    sim = pl.read_parquet(offline / "simulated.parquet")
    labels = tmp_path / "labels.csv"
    sim.select("transaction_id", "is_fraud", "label_ts").write_csv(labels)
    data = tmp_path / "data"
    args = ("--features", str(offline / "feats.parquet"), *WINDOW, "--labels", str(labels))
    out = cli(offline, "train", *args, "--data-dir", str(data), "--promote")
    registry = ModelRegistry(Layout(data).models)
    (version,) = registry.versions()
    assert registry.current() == version and f"current model: {version}" in out
    manifest = registry.manifest(version)
    assert manifest["decision"] == "promoted"
    assert manifest["window"]["label_cutoff"] == sim["label_ts"].max().isoformat()  # type: ignore[union-attr]
    # the same labels as the features file's own is_fraud: the same model
    from_feats = json.loads((offline / "model" / "manifest.json").read_text())
    assert manifest["metrics"] == from_feats["metrics"]

    listing = fraudpipe("model", "ls", "--data-dir", str(data), env={"COLUMNS": "250"}, check=True)
    assert version in listing.stdout and "promoted by operator" in listing.stdout
    # the registry's current version serves `score --model current`
    results = tmp_path / "results.parquet"
    score_current(offline, data, results)
    assert (pl.read_parquet(results)["model_version"] == version).all()


WIN = " ".join(WINDOW)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("features --input {w}/nope.csv --output {t}/f.parquet", "{w}/nope.csv: no such file"),
        ("features --input {t}/no-amount.csv --output {t}/f.parquet", "no column for amount"),
        (
            "train --features {w}/feats.parquet --train-start 2017-01-01 --train-end 2017-02-01 "
            "--output {t}/m",
            "no labeled row of {w}/feats.parquet has ts in [2017-01-01 00:00:00, 2017-02-01",
        ),
        (
            "train --features {t}/no-risk.parquet " + WIN + " --output {t}/m",
            "{t}/no-risk.parquet: missing column(s) ['terminal_risk_30d']",
        ),
        (
            "train --features {w}/feats.parquet " + WIN + " --output {t}/m --data-dir {t}/d",
            "--output and --data-dir exclude each other",
        ),
        (
            "score --model {w}/model --input {t}/no-risk.parquet --output {t}/r.parquet",
            "{t}/no-risk.parquet: missing column(s) ['terminal_risk_30d']",
        ),
        (
            "score --model v1 --data-dir {t}/d --input {w}/feats.parquet --output {t}/r.parquet",
            "--model v1: not a model directory",
        ),
    ],
    ids=["no-file", "no-column", "empty-window", "no-feature", "two-targets", "score-col", "model"],
)
def test_bad_inputs_exit_2_naming_the_problem(
    offline: Path, tmp_path: Path, command: str, message: str
) -> None:
    pl.read_csv(offline / "tx.csv", n_rows=50).drop("TX_AMOUNT").write_csv(
        tmp_path / "no-amount.csv"
    )
    pl.read_parquet(offline / "feats.parquet").drop("terminal_risk_30d").write_parquet(
        tmp_path / "no-risk.parquet"
    )
    filled = command.format(w=offline, t=tmp_path).split()
    proc = fraudpipe(*filled, "--config", str(offline / "cfg.yaml"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message.format(w=offline, t=tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_streaming_agrees_with_offline(offline: Path) -> None:
    """Replay the same file through gather and preprocess: the feature store holds FEATS's
    features to the bit; infer, serving the offline model, scores and explains as `score`."""
    data, cfg = offline / "data", offline / "cfg.yaml"
    for stage in ("gather", "preprocess"):
        cli(offline, "worker", f"--stage={stage}", "--burst", "--data-dir", str(data), "--port=0")
    store = pl.read_parquet(Layout(data).feature_store / "**" / "*.parquet")
    feats = pl.read_parquet(offline / "feats.parquet")
    assert store["transaction_id"].n_unique() == store.height == feats.height
    columns = [c for c in store.columns if c != "created_at"]  # wall clock, offline: null
    assert_frame_equal(
        store.select(columns).sort("transaction_id"),
        feats.select(columns).sort("transaction_id"),
        check_exact=True,
    )

    # An offline model, promoted into the stream's registry, served by infer.
    feats_path = str(offline / "feats.parquet")
    cli(offline, "train", "--features", feats_path, *WINDOW, "--data-dir", str(data), "--promote")
    cli(offline, "worker", "--stage=infer", "--burst", "--data-dir", str(data), "--port=0")
    streamed = scored(data, cfg).sort("transaction_id")
    score_current(offline, data, offline / "rescored.parquet")
    rescored = pl.read_parquet(offline / "rescored.parquet").sort("transaction_id")
    same = ["transaction_id", "score", "is_alert", "model_version", "reasons"]
    assert_frame_equal(streamed.select(same), rescored.select(same), check_exact=True)
