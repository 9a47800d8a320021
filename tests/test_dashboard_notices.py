"""The dashboard's reading of a volume: its warnings, latency, alerts and drift, from real queue
folders and real scored batches.

The collector is driven through sequences of backlogs and latencies (batches published,
claimed and acknowledged with the queue's own operations, scored rows written where infer
writes them); each notice must be raised when its condition holds and must not flip while the
value hovers at its bound. What the page says beside the numbers (rows that waited through a
stop, the newest alerts first, what drifted and whether it can yet) is read from the same files.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fraudpipe.config import Settings, load_settings
from fraudpipe.control import set_generation
from fraudpipe.dashboard.cluster import ClusterView
from fraudpipe.dashboard.collect import Collector
from fraudpipe.dashboard.drift import read_drift
from fraudpipe.dashboard.payload import Notice
from fraudpipe.eventlog import EventLog
from fraudpipe.layout import FEATURES, RAW, RESULTS, Layout
from fraudpipe.queue import Topic, make_id

_SEQ = count()
LABEL_DAY = dt.date(2018, 4, 8)


class Volume:
    """The topics of one data dir, set to exact pending counts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout(settings.data_dir)

    def topic(self, name: str) -> Topic:
        return Topic(self.layout.queue, name, self.settings.queue)

    def set_pending(self, name: str, n: int) -> None:
        topic = self.topic(name)
        for _ in range(n - len(topic.pending())):
            msg_id = make_id(int(time.time() * 1000), "test", next(_SEQ))
            assert topic.publish(msg_id, pl.DataFrame({"x": [1]})) is not None
        for _ in range(len(topic.pending()) - n):
            claim = topic.claim("test")
            assert claim is not None and topic.ack(claim)
        assert len(topic.pending()) == n

    def score(
        self,
        rows: int,
        latency_s: float,
        *,
        alert: bool = False,
        ts: dt.datetime = dt.datetime(2018, 4, 1),
    ) -> list[int]:
        """A scored batch, as infer publishes it: rows that took latency_s from entry, all at
        transaction time ts; their transaction ids."""
        now = time.time()
        ids = [next(_SEQ) for _ in range(rows)]
        df = pl.DataFrame(
            {
                "transaction_id": ids,
                "ts": [ts] * rows,
                "customer_id": [1] * rows,
                "terminal_id": [1] * rows,
                "amount": [10.0] * rows,
                "score": [0.9 if alert else 0.1] * rows,
                "is_alert": [alert] * rows,
                "model_version": ["v1"] * rows,
                "scored_at": [now] * rows,
                "latency_ms": [latency_s * 1000] * rows,
            }
        )
        msg_id = make_id(int(now * 1000), "test", next(_SEQ))
        assert self.topic(RESULTS).publish(msg_id, df) is not None
        return ids

    def score_and_label(
        self,
        scores: np.ndarray,
        fraud: np.ndarray,
        version: str,
        shadow: tuple[str, np.ndarray] | None = None,
    ) -> None:
        """Rows scored by version (and by a shadow version), as infer publishes them, then
        their labels in the event log, as gather writes them when they arrive."""
        now, n = time.time(), len(scores)
        ids = np.array([next(_SEQ) for _ in range(n)])
        df = pl.DataFrame(
            {
                "transaction_id": ids,
                "ts": [dt.datetime(2018, 4, 1)] * n,
                "customer_id": [1] * n,
                "terminal_id": [1] * n,
                "amount": [10.0] * n,
                "score": scores.astype(np.float32),
                "is_alert": scores >= 0.5,
                "model_version": [version] * n,
                "scored_at": [now] * n,
                "latency_ms": [100.0] * n,
                "shadow_score": None if shadow is None else shadow[1].astype(np.float32),
                "shadow_version": [None if shadow is None else shadow[0]] * n,
            },
            schema_overrides={"shadow_score": pl.Float32, "shadow_version": pl.String},
        )
        assert self.topic(RESULTS).publish(make_id(int(now * 1000), "t", next(_SEQ)), df)
        labels = pl.DataFrame({"transaction_id": ids, "is_fraud": fraud.astype(np.int8)})
        EventLog(self.layout, fsync=False).write("labels", f"l{next(_SEQ)}", labels, LABEL_DAY)

    def model(self, version: str, **metrics: float) -> None:
        """A version's manifest where the registry keeps it (what the dashboard reads)."""
        (self.layout.models / version).mkdir(parents=True)
        doc = {"version": version, "metrics": metrics, "threshold": 0.5}
        (self.layout.models / version / "manifest.json").write_text(json.dumps(doc))

    def worker(self, stage: str, **doc: Any) -> dict[str, Any]:
        """A live worker's status file, as the worker writes it."""
        self.layout.status.mkdir(parents=True, exist_ok=True)
        status = {
            "pid": 1,
            "host": "node-a",
            "worker": f"{stage}-1",
            "stage": stage,
            "heartbeat_at": time.time() + 60,
            **doc,
        }
        (self.layout.status / f"{stage}.json").write_text(json.dumps(status))
        return status


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Volume]:
    settings = load_settings(overrides={"data_dir": tmp_path, "queue.fsync": False})
    assert settings.queue.max_backlog == 64 and settings.dashboard.latency_warn_s == 10
    yield Volume(settings)


def _notices(collector: Collector, start: str) -> list[Notice]:
    return [n for n in collector.snapshot().warnings if n.message.startswith(start)]


def test_falls_behind_is_raised_near_the_bound_and_does_not_flip(volume: Volume) -> None:
    collector = Collector(volume.settings, ClusterView(env={}))
    # (pending in raw-transactions, whether "preprocess falls behind" is critical): raised at
    # 90 % of the bound of 64 (57.6), held down to 50 % (32), cleared below it.
    steps = [
        (0, False), (30, False), (57, False), (58, True), (63, True), (64, True), (63, True),
        (64, True), (63, True), (40, True), (32, True), (31, False), (40, False), (57, False),
        (58, True),
    ]  # fmt: skip
    seen = []
    for pending, _ in steps:
        volume.set_pending(RAW, pending)
        behind = [
            n
            for n in _notices(collector, "preprocess falls behind: raw-transactions has")
            if n.level == "critical"
        ]
        seen.append((pending, bool(behind)))
        if behind:
            assert f"has {pending} of 64 pending batches" in behind[0].message
            bound = "at the bound: producers wait" if pending >= 64 else "near the bound"
            assert bound in behind[0].message and "clears below 32" in behind[0].message
    assert seen == steps


def test_latency_warns_then_is_critical_naming_the_largest_backlog_and_clears_late(
    volume: Volume,
) -> None:
    collector = Collector(volume.settings, ClusterView(env={}))

    def slow() -> Notice | None:
        found = _notices(collector, "slow: end-to-end latency p50")
        assert len(found) <= 1
        return found[0] if found else None

    volume.score(100, latency_s=5)
    assert slow() is None  # under the bound of 10 s
    volume.score(200, latency_s=12)  # p50 12 s
    notice = slow()
    assert notice is not None and notice.level == "warning"
    assert "p50 12.0 s" in notice.message and "bound 10 s (dashboard.latency_warn_s)" in (
        notice.message
    )
    assert "no stage has an input backlog" in notice.message
    volume.set_pending(RAW, 5)
    volume.set_pending(FEATURES, 2)
    notice = slow()
    assert notice is not None and "preprocess has the largest input backlog" in notice.message
    assert "(raw-transactions: 5 pending)" in notice.message

    volume.score(400, latency_s=40)  # p50 40 s: over 3 x the bound
    volume.set_pending(FEATURES, 9)
    notice = slow()
    assert notice is not None and notice.level == "critical"
    assert "infer has the largest input backlog (features-ready: 9 pending)" in notice.message
    volume.score(300, latency_s=20)  # p50 20 s: under 30 s, over its clearing point 15 s
    notice = slow()
    assert notice is not None and notice.level == "critical" and "p50 20.0 s" in notice.message
    volume.score(2000, latency_s=8)  # p50 8 s: critical cleared; the warning holds down to 5 s
    notice = slow()
    assert notice is not None and notice.level == "warning" and "p50 8.0 s" in notice.message
    volume.score(10000, latency_s=1)  # p50 1 s
    assert slow() is None


def test_every_warning_condition_shows_a_notice(volume: Volume) -> None:
    """What the report saw: raw-transactions at 63 of 64 pending and p50 at 50 s, while the
    page said "all stages keeping up" (it says so only when there is no notice)."""
    collector = Collector(volume.settings, ClusterView(env={}))
    volume.set_pending(RAW, 63)
    volume.score(1000, latency_s=50)
    levels = {
        n.message.split(":")[0]: n.level
        for n in collector.snapshot().warnings
        if n.message.startswith(("preprocess falls behind", "slow"))
    }
    assert levels == {"preprocess falls behind": "critical", "slow": "critical"}


def test_a_worker_held_up_or_refusing_a_model_is_shown(volume: Volume) -> None:
    """What a live worker's status says holds it up (a full volume; a model it cannot load)
    is a notice, with its reason: otherwise the page would only show a stall."""
    volume.worker("preprocess", blocked="ENOSPC: No space left on device (/data/state/features)")
    volume.worker(
        "infer",
        model_version="v1",
        model_refused={"version": "v2", "reason": "model version v2 cannot score"},
    )
    collector = Collector(volume.settings, ClusterView(env={}))
    [held] = _notices(collector, "preprocess on node-a is held up by the volume: ENOSPC")
    [refused] = _notices(collector, "infer on node-a refuses model v2")
    assert held.level == refused.level == "critical"
    assert "it scores with v1" in refused.message


def test_latency_counts_the_rows_that_waited_through_a_restart(volume: Volume) -> None:
    """Rows queued before gather (re)started and scored after it keep their real latency, and
    are counted so the page can say the figures include the stop; rows scored before the
    restart, or entered after it, are not counted."""
    collector = Collector(volume.settings, ClusterView(env={}))
    volume.score(100, latency_s=0.5)
    first = collector.snapshot().latency
    assert first.resumed_at is None and first.before_resume == 0  # no gather seen: unknown
    volume.worker("gather", started_at=time.time() - 30)
    volume.score(300, latency_s=600)  # entered 10 min ago, before gather's start
    volume.score(200, latency_s=0.5)  # entered after it
    volume.score(40, latency_s=30.2)  # stamped within gather's first batch interval after it
    lat = collector.snapshot().latency
    assert volume.settings.gather.batch_interval_s == 0.5
    assert lat.resumed_at is not None and lat.rows == 640
    assert lat.before_resume == 300
    assert lat.p99_ms is not None and lat.p99_ms >= 600_000  # the wait stays in the figures


def test_latency_counts_a_resume_from_the_dashboard(volume: Volume) -> None:
    collector = Collector(volume.settings, ClusterView(env={}))
    set_generation(volume.layout, paused=True)
    assert collector.snapshot().latency.resumed_at is None
    set_generation(volume.layout, paused=False)
    volume.score(50, latency_s=120)
    lat = collector.snapshot().latency
    assert lat.resumed_at is not None and lat.before_resume == 50


def test_newest_alerts_come_first_in_transaction_time_and_id(volume: Volume) -> None:
    """Rows of one batch share their scored_at (the old sort key): the order is by transaction
    time, then id, newest first, whatever order the batches were written in."""
    collector = Collector(volume.settings, ClusterView(env={}))
    late = volume.score(3, latency_s=1, alert=True, ts=dt.datetime(2018, 4, 2, 10))
    early = volume.score(3, latency_s=1, alert=True, ts=dt.datetime(2018, 4, 2, 9))
    volume.score(20, latency_s=1)  # not alerts
    alerts = collector.snapshot().detection.recent_alerts
    assert [a.transaction_id for a in alerts] == sorted(late, reverse=True) + sorted(
        early, reverse=True
    )


DRIFT = {
    "at": 1.0,
    "reference_version": "v1",
    "score_psi": 0.05,
    "max_feature_psi": 0.41,
    "feature": "terminal_risk_30d",
    "psi_max": 0.25,
}


@pytest.mark.parametrize(
    ("first_ts", "warming", "shown"),
    [
        ("2018-06-01T00:00:00", False, 0.41),  # 61 days in: full 37-day histories
        ("2018-04-20T00:00:00", True, None),  # 19 days in: its 30-day features are short
    ],
)
def test_drift_names_what_drifted_its_limit_and_the_warm_up(
    volume: Volume, first_ts: str, warming: bool, shown: float | None
) -> None:
    settings = volume.settings
    assert settings.gather.simulator.start_date == dt.date(2018, 4, 1)
    doc = {**DRIFT, "reference": {"first_ts": first_ts}}
    workers = [{"stage": "train", "drift": doc}]
    view = read_drift(settings, volume.layout, "v1", workers)
    assert (view.feature, view.psi_max, view.warming_up, view.drift) == (
        "terminal_risk_30d", 0.25, warming, shown,
    )  # fmt: skip
    if warming:
        assert view.why is not None and "warming up" in view.why and "2018-05-08" in view.why
    other = read_drift(settings, volume.layout, "v2", workers)  # a newer champion
    assert other.drift is None and other.why is not None and "not the current v2" in other.why
    assert read_drift(settings, volume.layout, "v1", []).why == (
        "no live train worker: drift is measured by the train stage"
    )


CHAMPION, SHADOW = "20181201T000000.000000Z-aaaaaa", "20181202T000000.000000Z-bbbbbb"


def _informative(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (2 % fraud) and scores that rank most frauds first."""
    fraud = rng.random(n) < 0.02
    return np.clip(rng.normal(0.2 + 0.5 * fraud, 0.15), 0, 1), fraud


def test_live_quality_of_champion_and_shadow_on_the_same_rows(volume: Volume) -> None:
    """Figures over the rows whose labels arrived, against sklearn's on the same rows; the
    champion's beside its holdout's and, over the shadow's rows, beside the shadow's."""
    volume.model(CHAMPION, roc_auc=0.93, average_precision=0.62)
    volume.model(SHADOW, roc_auc=0.92, average_precision=0.60)
    (volume.layout.models / "current").symlink_to(CHAMPION)
    collector = Collector(volume.settings, ClusterView(env={}))
    first = collector.snapshot().quality
    assert first.champion.roc_auc is None and "0 labeled fraud(s)" in str(first.champion.why)
    assert first.shadow is None

    rng = np.random.default_rng(7)
    alone, alone_fraud = _informative(rng, 4000)
    volume.score_and_label(alone, alone_fraud, CHAMPION)  # before the shadow
    (volume.layout.models / "shadow").symlink_to(SHADOW)
    both, fraud = _informative(rng, 6000)
    noise = np.clip(both + rng.normal(0, 0.3, both.size), 0, 1)  # a worse challenger
    volume.score_and_label(both, fraud, CHAMPION, shadow=(SHADOW, noise))
    q = collector.snapshot().quality

    y_all = np.concatenate([alone_fraud, fraud])
    s_all = np.concatenate([alone, both]).astype(np.float32)
    c = q.champion
    assert (c.version, c.rows, c.frauds) == (CHAMPION, 10_000, int(y_all.sum()))
    assert c.roc_auc == pytest.approx(roc_auc_score(y_all, s_all))
    assert c.average_precision == pytest.approx(average_precision_score(y_all, s_all))
    assert (c.holdout_roc_auc, c.holdout_average_precision) == (0.93, 0.62)
    sh = q.shadow
    assert sh is not None and (sh.version, sh.rows) == (SHADOW, 6000)
    assert sh.average_precision == pytest.approx(
        average_precision_score(fraud, noise.astype(np.float32))
    )
    assert sh.champion_average_precision == pytest.approx(
        average_precision_score(fraud, both.astype(np.float32))
    )
    assert sh.average_precision < sh.champion_average_precision
    assert not [n for n in collector.snapshot().warnings if "live quality" in n.message]


def test_live_quality_far_below_holdout_warns_and_clears(volume: Volume) -> None:
    """Labels that say nothing about the scores (label noise): live AP falls to the fraud
    rate, far below the holdout's, and the page warns until the figures recover."""
    volume.model(CHAMPION, roc_auc=0.93, average_precision=0.62)
    (volume.layout.models / "current").symlink_to(CHAMPION)
    settings = volume.settings.model_copy(deep=True)
    settings.dashboard.live_quality_rows = 5000
    collector = Collector(settings, ClusterView(env={}))
    rng = np.random.default_rng(3)
    scores, _ = _informative(rng, 5000)
    volume.score_and_label(scores, rng.random(5000) < 0.02, CHAMPION)  # noise
    [notice] = [n for n in collector.snapshot().warnings if "live quality" in n.message]
    assert notice.level == "warning" and f"champion {CHAMPION}" in notice.message
    assert "(holdout 0.620)" in notice.message and "live_quality_margin=0.1" in notice.message
    scores, fraud = _informative(rng, 5000)
    volume.score_and_label(scores, fraud, CHAMPION)  # the window is all honest labels again
    assert not [n for n in collector.snapshot().warnings if "live quality" in n.message]


def test_a_champion_trained_while_warming_up_is_not_held_to_its_holdout(volume: Volume) -> None:
    """The stream's first champion trains on rows without a full feature history: live
    traffic finds it worse than its holdout did, which is no fault to warn about."""
    volume.model(CHAMPION, roc_auc=0.93, average_precision=0.62)
    (volume.layout.models / "current").symlink_to(CHAMPION)
    report = {**DRIFT, "reference_version": CHAMPION, "at": time.time()}
    volume.worker("train", drift={**report, "reference": {"first_ts": "2018-04-02T00:00:00"}})
    collector = Collector(volume.settings, ClusterView(env={}))
    rng = np.random.default_rng(3)
    scores, _ = _informative(rng, 5000)
    volume.score_and_label(scores, rng.random(5000) < 0.02, CHAMPION)
    snap = collector.snapshot()
    assert snap.model.drift_warming_up is True
    assert snap.quality.champion.average_precision is not None  # shown, not warned about
    assert not [n for n in snap.warnings if "live quality" in n.message]
