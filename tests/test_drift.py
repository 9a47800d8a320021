"""Drift: PSI itself, and the train stage measuring, reporting and acting on it."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from prometheus_client import generate_latest

from fraudpipe import durable
from fraudpipe.config import FeatureSettings, Settings
from fraudpipe.dashboard.cluster import ClusterView
from fraudpipe.dashboard.collect import Collector
from fraudpipe.drift import Profile, psi, quantile_edges, shares, summarize
from fraudpipe.eventlog import EventLog
from fraudpipe.features import feature_names
from fraudpipe.layout import Layout
from fraudpipe.registry import ModelRegistry
from fraudpipe.stages import stage_class
from fraudpipe.stages.train import Train
from fraudpipe.worker import Mode, Worker
from tests.pipeline import log_arrived_labels

# -- PSI ---------------------------------------------------------------------------------------


def test_identical_samples_have_zero_psi() -> None:
    x = np.random.default_rng(0).lognormal(3, 1, 20_000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    # Two samples of one distribution: only sampling noise, ~ (bins - 1) / n.
    y = np.random.default_rng(1).lognormal(3, 1, 20_000)
    assert psi(x, y) < 0.01


def test_psi_grows_with_the_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    values = [psi(ref, rng.normal(size=20_000) + shift) for shift in (0.0, 0.1, 0.25, 0.5, 1, 2)]
    assert values == sorted(values), values
    assert values[0] < 0.01 and values[2] > 0.05 and values[-1] > 2
    amounts = rng.gamma(2.0, 30.0, 20_000)
    assert psi(amounts, amounts * 5) > 1  # amounts x5: a major shift
    assert psi(amounts, amounts * 1.05) < 0.1


def test_bins_are_reference_deciles() -> None:
    ref = np.arange(1000, dtype=float)
    edges = quantile_edges(ref)
    assert len(edges) == 9
    np.testing.assert_allclose(shares(ref, edges)[:-1], 0.1, atol=0.0015)
    assert shares(ref, edges)[-1] == 0  # the NaN bin


def test_ties_constants_and_missing_values() -> None:
    flag = np.array([0.0] * 700 + [1.0] * 300)
    assert list(quantile_edges(flag)) == [0.0, 1.0]  # ties merge bins
    assert psi(flag, flag) == pytest.approx(0.0, abs=1e-12)
    assert psi(flag, np.array([0.0] * 300 + [1.0] * 700)) > 0.5

    constant = np.full(1000, 3.0)
    assert list(quantile_edges(constant)) == [3.0]
    assert psi(constant, constant) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(psi(constant, np.full(10, 4.0))) and psi(constant, np.full(10, 4.0)) > 1
    assert psi(constant, np.full(10, 2.0)) == pytest.approx(0.0, abs=1e-12)  # same bin: <= 3

    with_nan = np.where(np.arange(1000) % 10 == 0, np.nan, np.arange(1000.0))
    assert psi(with_nan, with_nan) == pytest.approx(0.0, abs=1e-12)
    assert psi(with_nan, np.arange(1000.0)) > 0.1  # the missing values went away
    assert np.isfinite(psi(np.array([]), np.arange(5.0)))


def test_profile_and_summary() -> None:
    rng = np.random.default_rng(0)
    ref = {"score": rng.random(5000), "a": rng.normal(size=5000), "b": rng.normal(size=5000)}
    recent = {"score": rng.random(5000), "a": rng.normal(size=5000), "b": rng.normal(size=5000) + 2}
    profile = Profile.of(ref)
    assert profile.rows == 5000
    psis = profile.psi(recent)
    assert psis["a"] == pytest.approx(psi(ref["a"], recent["a"]))
    s = summarize(psis)
    assert s.feature == "b" and s.max_feature_psi == psis["b"] and s.score_psi == psis["score"]
    assert s.worst == psis["b"] and set(s.feature_psi) == {"a", "b"}


# -- the train stage ---------------------------------------------------------------------------

START = dt.datetime(2018, 4, 2)  # a Monday
DAYS = 21  # three whole weeks, labeled up to HORIZON
HORIZON = START + dt.timedelta(days=DAYS)
DELAY = dt.timedelta(days=7)
ROWS_PER_DAY = 1400
NAMES = feature_names(FeatureSettings())


def write_days(root: Path, first_day: int, n_days: int, amount_factor: float = 1.0) -> None:
    """Feature-store batches with the model's features; labels (7 days late) up to HORIZON.

    Fraud (3%) has larger amounts and riskier terminals; amount_factor multiplies every amount
    (and the customers' average amounts) as a shifted population would.
    """
    layout = Layout(root)
    log = EventLog(layout, fsync=False)
    rng = np.random.default_rng(first_day)
    for day in range(first_day, first_day + n_days):
        start = START + dt.timedelta(days=day)
        n = ROWS_PER_DAY
        ts = [start + dt.timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 86399, n))]
        fraud = rng.random(n) < 0.03
        amount = rng.gamma(2.0, 25.0, n) * np.where(fraud, 3.0, 1.0) * amount_factor
        cols: dict[str, Any] = {
            "amount": amount,
            "is_weekend": np.full(n, float(start.weekday() >= 5)),
            "is_night": (np.array([t.hour for t in ts]) <= 6).astype(float),
        }
        for name in NAMES[3:]:
            if "avg_amount" in name:
                cols[name] = rng.gamma(2.0, 25.0, n) * amount_factor
            elif "risk" in name:
                cols[name] = rng.beta(1, 30, n) + 0.02 * fraud
            else:
                cols[name] = rng.poisson(3, n).astype(float)
        ids = np.arange(n) + day * 1_000_000
        batch = pl.DataFrame(
            {"transaction_id": ids, "ts": ts, **cols},
            schema_overrides={"ts": pl.Datetime("us")},
        )
        durable.write_parquet(
            layout.feature_store / f"day={start.date().isoformat()}" / f"b{day:03d}.parquet",
            batch,
            fsync=False,
        )
        log_arrived_labels(log, f"l{day:03d}", ids, fraud, ts, DELAY, HORIZON)


def train_stage(root: Path, **train: Any) -> tuple[Worker, Train]:
    settings = Settings(
        data_dir=root,
        queue={"fsync": False},
        train={
            "train_days": 6,
            "holdout_days": 2,
            "min_labeled_rows": 1000,
            "min_frauds": 20,
            "num_boost_round": 30,
            "threads": 1,
            "drift_min_rows": 500,
            "drift_cooldown_s": 0,
            **train,
        },
    )
    worker = Worker(settings, stage_class("train"), "cpu", Mode.FOREVER)
    assert isinstance(worker.stage, Train)
    return worker, worker.stage


def test_shifted_traffic_is_reported_and_triggers_a_training(tmp_path: Path) -> None:
    write_days(tmp_path, 0, DAYS)
    worker, stage = train_stage(tmp_path)
    registry = ModelRegistry(Layout(tmp_path).models)

    stage.step()  # no champion yet: drift not measured; the first training is due at once
    assert stage.last["trigger"] == "schedule" and stage.last["status"] == "trained-promoted"
    champion = registry.current()
    assert champion is not None
    stage.step()  # a new champion: drift measured against its window, nothing to do
    drift = stage.status()["drift"]
    assert drift["why"] is None, drift
    assert drift["reference_version"] == champion
    assert drift["score_psi"] < 0.1 and drift["max_feature_psi"] < 0.1, drift
    assert drift["over_limit"] is False and stage.drift_due is None
    assert abs(drift["recent"]["rows"] - 7 * ROWS_PER_DAY) < 50  # ts > newest ts - 7 days
    assert drift["reference"]["rows"] >= 7 * ROWS_PER_DAY

    # A week of traffic whose amounts are x5.
    write_days(tmp_path, DAYS, 7, amount_factor=5.0)
    stage.next_drift = 0.0
    stage.step()
    drift = stage.status()["drift"]
    assert "amount" in drift["feature"]
    assert drift["max_feature_psi"] > 1, drift
    assert drift["feature_psi"]["amount"] > 1
    assert drift["score_psi"] > 0.25, drift  # the model leans on amounts
    assert drift["over_limit"] is True
    assert drift["recent"]["first_ts"] > (HORIZON - dt.timedelta(hours=1)).isoformat()
    # ... and a training ran for it, saying why.
    assert stage.last["trigger"] == "drift", stage.last
    assert "drift: score PSI" in stage.last["trigger_reason"]
    assert "drift_psi_max=0.25" in stage.last["trigger_reason"]
    assert len(registry.versions()) == 2

    exposed = generate_latest(worker.metrics.registry).decode()
    assert 'fraudpipe_drift_psi{feature="",kind="score"}' in exposed
    assert 'fraudpipe_drift_psi{feature="amount",kind="feature"}' in exposed

    # The dashboard shows what the live train worker measured, fresh each snapshot.
    status = tmp_path / "status"
    status.mkdir(exist_ok=True)
    doc = {"worker": "train-x", "stage": "train", "pid": 1, "heartbeat_at": time.time()}
    doc.update(stage.status())
    (status / "train-x.json").write_text(json.dumps(doc))
    # The simulator's stream began on its start_date, 2018-04-01: the champion's window,
    # from START, lacks a full feature history and the page says so instead of a number.
    warming = Collector(Settings(data_dir=tmp_path), ClusterView(env={})).snapshot().model
    if registry.current() == drift["reference_version"]:
        assert warming.drift is None and warming.drift_warming_up is True
        assert "warming up" in str(warming.drift_why)
    # A stream that began well before: the windows had their full history.
    began = {"simulator": {"start_date": (START - dt.timedelta(days=60)).date()}}
    collector = Collector(Settings(data_dir=tmp_path, gather=began), ClusterView(env={}))
    model = collector.snapshot().model
    if registry.current() == drift["reference_version"]:
        assert model.drift == pytest.approx(max(drift["score_psi"], drift["max_feature_psi"]))
        assert model.drift_why is None and model.drift_warming_up is False
        worst = "score" if drift["score_psi"] > drift["max_feature_psi"] else drift["feature"]
        assert model.drift_feature == worst and model.drift_psi_max == 0.25
    else:  # the drift-triggered challenger won: the next measurement is against it
        assert model.drift is None and "measures again" in str(model.drift_why)
    (status / "train-x.json").unlink()
    model = collector.snapshot().model
    assert model.drift is None and "no live train worker" in str(model.drift_why)


def test_drift_limit_none_reports_without_training(tmp_path: Path) -> None:
    write_days(tmp_path, 0, DAYS)
    _, stage = train_stage(tmp_path, drift_psi_max=None, interval_s=3600)
    stage.step()
    write_days(tmp_path, DAYS, 7, amount_factor=5.0)
    stage.next_drift = 0.0
    stage.step()
    drift = stage.status()["drift"]
    assert drift["max_feature_psi"] > 1 and drift["over_limit"] is False
    assert stage.drift_due is None and stage.last["trigger"] == "schedule"


def test_drift_says_why_it_is_not_measured(tmp_path: Path) -> None:
    _, stage = train_stage(tmp_path, drift_min_rows=100_000)
    stage.step()
    assert "no model promoted yet" in stage.status()["drift"]["why"]
    write_days(tmp_path, 0, DAYS)
    stage.next_due = 0.0
    stage.step()
    assert stage.last["status"] == "trained-promoted"
    stage.step()
    drift = stage.status()["drift"]
    assert drift["score_psi"] is None and drift["reference_version"] is not None
    assert "need drift_min_rows=100000" in drift["why"]
