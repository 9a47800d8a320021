"""Streaming features over the event log: equal to offline, and refused rather than wrong.

The history of a batch is the event-log chain gather writes (eventlog.py), walked back by name
(history.py). These tests write such chains as gather does and hold the streaming features
against compute_features over the whole stream, in every order and on every replica; then
break the log the ways a volume breaks (an entry pruned or deleted, a batch nobody logged, a
batch unlike its entry, listings that lie) and require a refusal with a reason.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fraudpipe.config import FeatureSettings
from fraudpipe.eventlog import EventLog, batch_day, day_dir_name
from fraudpipe.features import compute_features, lookback
from fraudpipe.history import HistoryGone, NotLogged, StreamingFeatures
from fraudpipe.layout import Layout
from fraudpipe.queue import make_id
from tests.test_features import CONFIGS, IDS, NAMESPACES, SMALL, simulate
from tests.test_features import namespace as namespace_of

Batch = tuple[str, pl.DataFrame]


def _ms(ts: dt.datetime) -> int:
    return int(ts.replace(tzinfo=dt.UTC).timestamp() * 1000)


def write_log(
    log: EventLog, tx: pl.DataFrame, labels: pl.DataFrame, sizes: list[int], tag: str = "sim1"
) -> list[Batch]:
    """Append batches of tx, each with the labels due by its end, linked, as gather does."""
    batches: list[Batch] = []
    start, due, prev = 0, None, None
    for k, size in enumerate(sizes):
        batch = tx.slice(start, size)
        start += size
        if batch.is_empty():
            break
        last = batch["ts"][-1]
        cond = pl.col("label_ts") <= last
        if due is not None:
            cond &= pl.col("label_ts") > due
        arrived = labels.filter(cond).sort("label_ts", "transaction_id")
        name = make_id(_ms(batch["ts"][0]), tag, k)
        log.append(name, prev, batch, arrived)
        batches.append((name, batch))
        prev, due = name, last
    return batches


def chain(
    tmp_path: Path, cfg: FeatureSettings = SMALL
) -> tuple[EventLog, list[Batch], pl.DataFrame]:
    tx, labels = simulate(21, days=16, per_day=120)
    log = EventLog(Layout(tmp_path), fsync=False)
    batches = write_log(log, tx, labels, [90] * 20)
    return log, batches, compute_features(tx, labels, cfg)


def features_of(expected: pl.DataFrame, batch: pl.DataFrame) -> pl.DataFrame:
    return expected.filter(pl.col("transaction_id").is_in(batch["transaction_id"].implode()))


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_streaming_equals_offline(tmp_path: Path, cfg: FeatureSettings, namespace: Any) -> None:
    """Any order, two replicas, re-processing; the history held in the namespace's arrays
    (device memory on the GPU) between batches: the offline features, to the bit."""
    xp = namespace_of(namespace)
    tx, labels = simulate(11, days=12, per_day=150)
    rng = random.Random(3)
    sizes = [rng.choice([20, 60, 150, 400]) for _ in range(200)]
    log = EventLog(Layout(tmp_path), fsync=False)
    batches = write_log(log, tx, labels, sizes)
    # a stray file in the log, outside the chain (say a batch of another stream): inert
    stray_id, stray = make_id(_ms(batches[3][1]["ts"][0]), "other", 3), batches[3][1]
    log.append(stray_id, None, stray.with_columns(pl.col("amount") * 7), labels.head(0))
    expected = compute_features(tx, labels, cfg)

    replicas = [StreamingFeatures(log, cfg, xp=xp), StreamingFeatures(log, cfg, xp=xp)]
    order = list(range(len(batches)))
    rng.shuffle(order)
    order += order[:3]  # re-processed after a crash
    got: dict[int, pl.DataFrame] = {}
    for k in order:
        name, batch = batches[k]
        out = rng.choice(replicas).compute(batch, name)
        if k in got:
            assert_frame_equal(out, got[k])
        got[k] = out
    assert_frame_equal(pl.concat([got[k] for k in range(len(batches))]), expected)

    # one replica: newest batch first, then the oldest (history evicted, reloaded), then middle
    late = StreamingFeatures(log, cfg, xp=xp)
    for k in (len(batches) - 1, 0, len(batches) // 2, 1):
        assert_frame_equal(late.compute(batches[k][1], batches[k][0]), got[k])


def test_streaming_follows_a_growing_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In order, with gather one batch ahead: each log file is read once, old entries evicted."""
    tx, labels = simulate(12, days=6, per_day=100)
    log = EventLog(Layout(tmp_path), fsync=False)
    reads: list[str] = []
    real = pl.read_parquet

    def counting(path: Path) -> pl.DataFrame:
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(pl, "read_parquet", counting)
    stream = StreamingFeatures(log, SMALL)
    out = []
    n = -(-tx.height // 50)
    for k in range(n):
        batches = write_log(log, tx, labels, [50] * min(k + 2, n))  # rewrites are identical
        name, batch = batches[k]
        out.append(stream.compute(batch, name))
        # entries wholly older than the lookback are evicted (the cache is private: peek)
        lo = int(batch["ts"].to_physical().min()) - lookback(SMALL) // dt.timedelta(microseconds=1)
        assert all(h.last > lo for h in stream._held.values())
    assert len(reads) == len(set(reads)) == 2 * n  # each batch's two files, once
    assert_frame_equal(pl.concat(out), compute_features(tx, labels, SMALL))
    assert stream.compute(batches[0][1].head(0), batches[0][0]).columns == out[0].columns


def test_history_is_read_by_name_never_by_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On NFS a listing may miss files for a minute; the walk opens files by name only, so a
    listing that shows nothing cannot hide history."""
    log, batches, expected = chain(tmp_path)

    def no_listing(*_: object, **__: object) -> None:
        raise AssertionError("history listed a folder")

    monkeypatch.setattr(os, "scandir", no_listing)
    monkeypatch.setattr(os, "listdir", no_listing)
    monkeypatch.setattr(Path, "iterdir", no_listing)
    monkeypatch.setattr(Path, "glob", no_listing)
    stream = StreamingFeatures(log, SMALL)
    for name, batch in reversed(batches):
        assert_frame_equal(stream.compute(batch, name), features_of(expected, batch))


def test_a_batch_gather_never_logged_is_refused(tmp_path: Path) -> None:
    log, batches, _ = chain(tmp_path)
    name, batch = batches[12]
    again = make_id(int(name[:13]) + 1, "sim1", 99)  # its rows, sent again under a new id
    with pytest.raises(NotLogged, match="not in the event log"):
        StreamingFeatures(log, SMALL).compute(batch, again)
    unlike = batch.with_columns(pl.col("transaction_id") + 10**9)  # its id, other rows
    with pytest.raises(NotLogged, match="other transactions than the event log"):
        StreamingFeatures(log, SMALL).compute(unlike, name)
    with pytest.raises(NotLogged, match="other transactions than the event log"):
        StreamingFeatures(log, SMALL).compute(batch.head(40), name)


def test_a_hole_in_the_history_is_refused_not_computed_over(tmp_path: Path) -> None:
    log, batches, expected = chain(tmp_path)
    k = 15
    name, batch = batches[k]
    lo = batch["ts"].min() - lookback(SMALL)  # type: ignore[operator]
    needed = [i for i, (_, b) in enumerate(batches[:k]) if b["ts"].max() > lo]
    older = [i for i in range(k) if i not in needed]
    assert needed and older
    # entries wholly older than the lookback may go: nothing changes
    for i in older:
        log.path("transactions", batches[i][0]).unlink()
    assert_frame_equal(
        StreamingFeatures(log, SMALL).compute(batch, name), features_of(expected, batch)
    )
    # but not one that is needed, the oldest of them included
    for i in (needed[0], needed[len(needed) // 2]):
        path = log.path("transactions", batches[i][0])
        kept = path.read_bytes()
        path.unlink()
        with pytest.raises(HistoryGone, match=f"batch {batches[i][0]} .* no longer in the"):
            StreamingFeatures(log, SMALL).compute(batch, name)
        path.write_bytes(kept)
    # nor its labels
    labels = log.path("labels", batches[needed[-1]][0])
    labels.unlink()
    with pytest.raises(HistoryGone):
        StreamingFeatures(log, SMALL).compute(batch, name)


def test_a_replica_holding_the_history_refuses_once_it_is_gone(tmp_path: Path) -> None:
    """History held in memory is no excuse: an older batch needs entries read again."""
    log, batches, _ = chain(tmp_path)
    stream = StreamingFeatures(log, SMALL)
    stream.compute(batches[19][1], batches[19][0])  # evicts what batch 5 needs
    shutil.rmtree(log.path("transactions", batches[2][0]).parent)
    with pytest.raises(HistoryGone):
        stream.compute(batches[5][1], batches[5][0])


def test_prune_keeps_the_day_whose_batch_reaches_past_the_cut(tmp_path: Path) -> None:
    """A batch may span days: prune(keep_from) keeps the newest day before keep_from, whose
    batch may hold events after it, and removes the days before that one."""
    log = EventLog(Layout(tmp_path), fsync=False)
    tx, labels = simulate(5, days=12, per_day=30)
    batches = write_log(log, tx, labels, [120] * 3)  # 4 days a batch: days 0, 4 and 8
    days = sorted({batch_day(name) for name, _ in batches})
    assert len(days) == 3
    assert log.prune(days[2]) == 2  # day 0 of both kinds goes; day 4 reaches into day 8
    for kind in ("transactions", "labels"):
        assert log.days(kind) == days[1:]  # type: ignore[arg-type]
    assert not (log.root / "transactions" / day_dir_name(days[0])).exists()
    assert log.prune(days[2]) == 0
