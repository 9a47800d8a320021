"""Reason codes on alerts: path attributions of the booster, for alert rows only, checked
against a walk of the model's JSON dump written here, and beside LightGBM's TreeSHAP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from fraudpipe import schema
from fraudpipe.config import TrainSettings, load_settings
from fraudpipe.layout import FEATURES, RESULTS, Layout
from fraudpipe.model import export_onnx, train_booster
from fraudpipe.reasons import Forest, top_contributions
from fraudpipe.registry import ModelRegistry
from fraudpipe.stages import stage_class
from fraudpipe.stages.infer import Infer
from fraudpipe.worker import Mode, Worker
from tests.pipeline import assert_exactly_once, run_stage, small_config

NAMES = ["f0", "f1", "f2", "f3", "f4", "f5"]
AGREEMENT = 0.95  # 1.0 measured (and the first reasons equal for 82%): docs/performance.md
CFG = TrainSettings(num_boost_round=40, num_leaves=15, min_data_in_leaf=20, threads=1)


def make_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rare positives (~3%) with a learnable, non-linear signal; float32 like infer's input."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(NAMES)))
    logit = -4.5 + 1.8 * X[:, 0] + 1.2 * X[:, 1] * X[:, 2] + 2.0 * (X[:, 3] > 1.2)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return X.astype(np.float32), y


def naive_contributions(booster: lgb.Booster, row: np.ndarray) -> np.ndarray:
    """One row's path attributions (then the bias), walking each tree of the JSON dump: a split
    credits its feature with the change of expected output (leaf values weighted by rows)."""

    def rows(node: dict) -> float:
        return node["leaf_count"] if "leaf_value" in node else node["internal_count"]

    def mean(node: dict) -> float:
        if "leaf_value" in node:
            return node["leaf_value"]
        left, right = node["left_child"], node["right_child"]
        return (rows(left) * mean(left) + rows(right) * mean(right)) / (rows(left) + rows(right))

    out = np.zeros(len(NAMES) + 1)
    for tree in booster.dump_model()["tree_info"]:
        node = tree["tree_structure"]
        out[-1] += mean(node)
        while "leaf_value" not in node:
            x = float(row[node["split_feature"]])
            child = node["left_child"] if x <= node["threshold"] else node["right_child"]
            out[node["split_feature"]] += mean(child) - mean(node)
            node = child
    return out


def expected_reasons(booster: lgb.Booster, row: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Top k of one row's contributions, largest first, computed here independently."""
    pairs = list(zip(NAMES, naive_contributions(booster, row)[:-1].tolist(), strict=True))
    return sorted(pairs, key=lambda pair: -pair[1])[:k]  # sorted() is stable: ties keep order


def assert_same_reasons(got: list[dict], want: list[tuple[str, float]]) -> None:
    assert [r["feature"] for r in got] == [f for f, _ in want]
    np.testing.assert_allclose(
        [r["contribution"] for r in got], [c for _, c in want], rtol=0, atol=1e-9
    )


def batch(X: np.ndarray, first_id: int = 0) -> pl.DataFrame:
    """A features-ready batch: transaction columns plus the model's feature columns."""
    n = len(X)
    return pl.DataFrame(
        {
            "transaction_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "ts": pl.Series(
                np.datetime64("2024-01-01") + np.arange(n).astype("m8[s]").astype("m8[us]")
            ).cast(schema.TS),
            "customer_id": np.arange(n, dtype=np.int64) % 97,
            "terminal_id": np.arange(n, dtype=np.int64) % 89,
            "amount": X[:, 0].astype(np.float64),
            "created_at": np.full(n, time.time() - 0.5),
            **{name: X[:, i].astype(np.float64) for i, name in enumerate(NAMES)},
        }
    )


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    X, y = make_rows(10_000, seed=1)
    return train_booster(X, y, CFG, NAMES)


def explain(booster: lgb.Booster, X: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    return top_contributions(Forest.of(booster).contributions(X), NAMES, k)


def test_contributions_are_the_path_attributions(booster: lgb.Booster) -> None:
    X_fresh, _ = make_rows(300, seed=2)
    X_train, _ = make_rows(10_000, seed=1)  # training rows lie on thresholds: the hard case
    forest = Forest.of(booster)
    for X in (X_fresh, X_train[:300]):
        contrib = forest.contributions(X)
        for row, got in zip(X, contrib, strict=True):
            np.testing.assert_allclose(got, naive_contributions(booster, row), rtol=0, atol=1e-9)
        # Every contribution plus the bias is the booster's raw log-odds score, and the bias
        # is TreeSHAP's (the model's expected output).
        raw = booster.predict(X, raw_score=True)
        np.testing.assert_allclose(contrib.sum(axis=1), raw, rtol=0, atol=1e-9)
        shap = booster.predict(X, pred_contrib=True)
        np.testing.assert_allclose(contrib[:, -1], shap[:, -1], rtol=0, atol=1e-9)
    got = explain(booster, X_fresh, 3)
    assert len(got) == len(X_fresh)
    for row, reasons in zip(X_fresh, got, strict=True):
        as_dicts = [{"feature": f, "contribution": c} for f, c in reasons]
        assert_same_reasons(as_dicts, expected_reasons(booster, row, 3))
        values = [c for _, c in reasons]
        assert values == sorted(values, reverse=True)
    # k larger than the features: every feature, ranked; no rows: no reasons.
    assert [len(r) for r in explain(booster, X_fresh[:2], 10)] == [6, 6]
    assert explain(booster, X_fresh[:0], 3) == []
    with pytest.raises(ValueError, match="6 features"):
        forest.contributions(X_fresh[:, :4])


def test_reasons_name_what_treeshap_names(booster: lgb.Booster) -> None:
    """Not the same method (TreeSHAP shares interactions out over feature orders), but on
    the rows that alert, the feature TreeSHAP puts first is among these three."""
    X, _ = make_rows(20_000, seed=7)
    alerts = X[booster.predict(X) >= np.quantile(booster.predict(X), 0.99)]
    ours = np.argsort(-Forest.of(booster).contributions(alerts)[:, :-1], axis=1)[:, :3]
    shap_first = np.argmax(booster.predict(alerts, pred_contrib=True)[:, :-1], axis=1)
    assert (ours == shap_first[:, None]).any(axis=1).mean() >= AGREEMENT


def test_fewer_positive_than_k_still_gives_k(booster: lgb.Booster) -> None:
    """Rows with under three features pushing towards fraud get the least negative ones next."""
    X, _ = make_rows(2_000, seed=3)
    contrib = Forest.of(booster).contributions(X)[:, :-1]
    few = np.flatnonzero((contrib > 0).sum(axis=1) < 3)
    assert few.size > 0
    for i, reasons in zip(few, explain(booster, X[few], 3), strict=True):
        assert len(reasons) == 3 and reasons[-1][1] <= 0
        got = [{"feature": f, "contribution": c} for f, c in reasons]
        assert_same_reasons(got, expected_reasons(booster, X[i], 3))


def infer_stage(data: Path, threshold: float | None = None) -> Infer:
    """The real infer stage, built as a worker builds it (in this process, not run)."""
    settings = load_settings(None, {"data_dir": data, "infer": {"threshold": threshold}})
    stage = Worker(settings, stage_class("infer"), "cpu", Mode.BURST).stage
    assert isinstance(stage, Infer)
    return stage


def save_model(registry: ModelRegistry, booster: lgb.Booster, threshold: float) -> str:
    version = registry.save(
        booster,
        export_onnx(booster, len(NAMES)),
        {"feature_names": NAMES, "threshold": threshold},
    )
    registry.promote(version, "test")
    return version


def score(stage: Infer, X: np.ndarray) -> pl.DataFrame:
    df = stage.validate(batch(X))
    return stage.transform(df, None)[RESULTS]  # type: ignore[arg-type]


def test_infer_explains_alerts_only(booster: lgb.Booster, tmp_path: Path) -> None:
    X, _ = make_rows(5_000, seed=4)
    threshold = float(np.quantile(booster.predict(X), 0.97))  # ~150 alerts
    registry = ModelRegistry(Layout(tmp_path).models, fsync=False)
    save_model(registry, booster, threshold)
    stage = infer_stage(tmp_path)
    assert stage.ready() and stage.threshold == threshold
    out = score(stage, X)

    assert out.schema == pl.Schema(schema.RESULTS)
    assert schema.check(out, schema.RESULTS, "results").equals(out)
    assert out["reasons"].null_count() == 0
    alerts = out["is_alert"].to_numpy()
    assert 50 < alerts.sum() < 400
    lengths = out["reasons"].list.len().to_numpy()
    assert (lengths[alerts] == schema.REASONS).all() and (lengths[~alerts] == 0).all()
    for i in np.flatnonzero(alerts):
        assert_same_reasons(out["reasons"][int(i)].to_list(), expected_reasons(booster, X[i], 3))
    # A Parquet round trip (what the queue and results/ store) keeps the column as it is.
    path = tmp_path / "out.parquet"
    out.write_parquet(path)
    assert pl.read_parquet(path).equals(out)


def test_batch_without_alerts_and_hot_reload(booster: lgb.Booster, tmp_path: Path) -> None:
    X, _ = make_rows(2_000, seed=5)
    registry = ModelRegistry(Layout(tmp_path).models, fsync=False)
    save_model(registry, booster, 1.0)  # scores are below 1: nothing alerts
    stage = infer_stage(tmp_path)
    assert stage.ready()
    quiet = score(stage, X)
    assert not quiet["is_alert"].any()
    assert quiet.schema == pl.Schema(schema.RESULTS)
    assert quiet["reasons"].list.len().sum() == 0 and quiet["reasons"].null_count() == 0

    # A newly promoted model (other trees) is picked up between batches, booster included.
    X_train, y_train = make_rows(10_000, seed=6)
    other = train_booster(X_train, y_train, CFG.model_copy(update={"num_leaves": 7}), NAMES)
    version = save_model(registry, other, float(np.quantile(other.predict(X), 0.98)))
    assert stage.ready() and stage.version == version
    out = score(stage, X)
    assert (out["model_version"] == version).all()
    alerts = np.flatnonzero(out["is_alert"].to_numpy())
    assert alerts.size > 10
    for i in alerts:
        assert_same_reasons(out["reasons"][int(i)].to_list(), expected_reasons(other, X[i], 3))


def test_schema_check_casts_reasons() -> None:
    reasons = schema.RESULTS["reasons"]
    cases = {
        "empty lists from Python": pl.Series([[], []]),
        "integer contributions": pl.Series([[{"feature": "a", "contribution": 1}], []]),
    }
    for what, column in cases.items():
        checked = schema.check(pl.DataFrame({"reasons": column}), {"reasons": reasons}, what)
        assert checked.schema["reasons"] == reasons
    renamed = pl.Series([[{"name": "a", "contribution": 1.0}]])
    with pytest.raises(schema.SchemaMismatch, match="wrong type"):
        schema.check(pl.DataFrame({"reasons": renamed}), {"reasons": reasons}, "renamed")
    flat = pl.Series(["a"])
    with pytest.raises(schema.SchemaMismatch, match="wrong type"):
        schema.check(pl.DataFrame({"reasons": flat}), {"reasons": reasons}, "flat")


@pytest.mark.slow
def test_every_alert_in_the_results_has_reasons(tmp_path: Path) -> None:
    """gather, preprocess, train, infer as real worker processes, as in test_stages."""
    cfg, data = small_config(tmp_path, days=16), tmp_path / "data"
    run_stage("gather", "--burst", data, cfg)
    run_stage("preprocess", "--burst", data, cfg)
    run_stage("train", "--once", data, cfg)
    run_stage("infer", "--burst", data, cfg)
    assert not list((data / "queue" / FEATURES / "pending").glob("*.parquet"))
    df = assert_exactly_once(data, cfg)
    assert df.schema == pl.Schema(schema.RESULTS)

    models = data / "models"
    manifest = json.loads((models / "current" / "manifest.json").read_text())
    names = set(manifest["feature_names"])
    alerts = df.filter("is_alert")
    assert alerts.height > 0
    assert (alerts["reasons"].list.len() == schema.REASONS).all()
    exploded = alerts.select(pl.col("reasons").explode().struct.unnest())
    assert set(exploded["feature"]) <= names
    assert exploded["contribution"].is_finite().all()
    firsts = alerts["reasons"].list.first().struct.field("contribution")
    assert (firsts > 0).all(), "an alert's first reason pushes towards fraud"
    others = df.filter(~pl.col("is_alert"))
    assert others["reasons"].null_count() == 0 and (others["reasons"].list.len() == 0).all()
