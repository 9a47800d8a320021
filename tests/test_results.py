"""results/: delivery from the topic is exclusive and idempotent; retention is wall-clock."""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl

from fraudpipe.config import QueueSettings
from fraudpipe.queue import Topic, make_id
from fraudpipe.results import ResultsStore, read_all

DAY_MS = 86_400_000


def test_deliver_moves_by_id_date_and_never_duplicates(tmp_path: Path) -> None:
    topic = Topic(tmp_path / "q", "inference-results", QueueSettings(fsync=False))
    store = ResultsStore(tmp_path / "results")
    ids = [make_id(1_522_540_800_000 + d * DAY_MS, "p", d) for d in range(3)]  # 2018-04-01..
    for i, mid in enumerate(ids):
        topic.publish(mid, pl.DataFrame({"transaction_id": [i]}))
    assert store.deliver(topic, hold_s=60) == 0  # still held for live readers
    assert read_all(store, topic)["transaction_id"].sort().to_list() == [0, 1, 2]  # type: ignore[index]
    assert store.deliver(topic, hold_s=0) == 3
    assert [p.parent.name for p in store.files()] == [
        "date=2018-04-01",
        "date=2018-04-02",
        "date=2018-04-03",
    ]
    # A batch re-scored after a crash lands on the same file: still one copy of each row.
    topic.publish(ids[0], pl.DataFrame({"transaction_id": [0]}))
    assert read_all(store, topic)["transaction_id"].sort().to_list() == [0, 1, 2]  # type: ignore[index]
    store.deliver(topic, hold_s=0)
    assert len(store.files()) == 3


def test_retention_follows_wall_clock_not_event_dates(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    old, fresh = tmp_path / "date=2018-04-01", tmp_path / "date=2018-01-01"
    for part in (old, fresh):
        part.mkdir()
        (part / "x.parquet").write_bytes(b"")
    stale = time.time() - 31 * 86400
    os.utime(old, (stale, stale))
    assert store.prune(keep_days=30) == 1
    assert not old.exists() and fresh.exists()  # an old event date written today stays
