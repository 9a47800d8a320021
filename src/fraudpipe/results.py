"""results/: the durable home of scored batches, partitioned by date.

infer publishes each scored batch to ``queue/inference-results`` (where live readers pick up the
latest alerts); after ``queue.results_hold_s`` any worker's housekeeping moves it, with one
exclusive rename, to ``results/date=YYYY-MM-DD/<id>.parquet`` (the date of the batch id's time,
i.e. of its first transaction). The path derives from the id alone, so a batch scored twice
after a crash lands on the same file: every transaction is in the results exactly once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from fraudpipe.layout import RESULTS, Layout
from fraudpipe.queue import SUFFIX, Topic, id_time_ms

PARTITION = "date="


class ResultsStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, msg_id: str) -> Path:
        day = dt.datetime.fromtimestamp(id_time_ms(msg_id) / 1000, dt.UTC).date()
        return self.root / f"{PARTITION}{day.isoformat()}" / f"{msg_id}{SUFFIX}"

    def deliver(self, topic: Topic, hold_s: float, now: float | None = None) -> int:
        """Move scored batches older than hold_s from the topic into results/; how many."""
        now = time.time() if now is None else now
        moved = 0
        for msg in topic.pending():
            try:
                if now - msg.path.stat().st_mtime < hold_s:
                    continue
                target = self.path_for(msg.id)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(msg.path, target)
            except FileNotFoundError:
                continue  # another worker delivered it
            moved += 1
        return moved

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob(f"{PARTITION}*/*{SUFFIX}"))

    def sources(self, topic: Topic | None = None) -> dict[str, Path]:
        """One file per batch id: the delivered one, else the one still waiting in the topic.

        The topic is listed first, so a batch delivered meanwhile is found in results/; a batch
        re-scored after a crash and also delivered counts once.
        """
        waiting = topic.pending() if topic is not None else []
        found = {p.stem: p for p in self.files()}
        for msg in waiting:
            found.setdefault(msg.id, msg.path)
        return found

    def prune(self, keep_days: float, now: float | None = None) -> int:
        """Delete date partitions not written to for keep_days of wall-clock time.

        Retention is a disk-space policy, so it runs on wall-clock time (a partition's last
        write), never on event dates: a simulated or replayed stream may cover months an hour.
        """
        now = time.time() if now is None else now
        removed = 0
        for part in self.root.glob(f"{PARTITION}*"):
            with contextlib.suppress(FileNotFoundError):
                if part.is_dir() and now - part.stat().st_mtime > keep_days * 86400:
                    shutil.rmtree(part)
                    removed += 1
        return removed


def read_all(results: ResultsStore, topic: Topic | None = None) -> pl.DataFrame | None:
    """Every scored row: delivered results plus, if given, batches still in the topic."""
    frames = []
    for msg_id, path in sorted(results.sources(topic).items()):
        try:
            frames.append(pl.read_parquet(path))
        except FileNotFoundError:  # delivered while we read
            frames.append(pl.read_parquet(results.path_for(msg_id)))
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


# Newest date partitions looked at for fresh files: a batch scored now lands in the latest dates.
_RECENT_PARTITIONS = 2


def recent_result_files(layout: Layout, since: float) -> Iterator[Path]:
    """Scored batch files written at or after `since` (epoch s): still in the topic, or just
    delivered to results/. Files vanish while listed (delivery, pruning): they are skipped."""
    pending = layout.topic(RESULTS) / "pending"
    dirs = [pending] if pending.is_dir() else []
    if layout.results.is_dir():
        dirs += sorted(layout.results.glob(f"{PARTITION}*"))[-_RECENT_PARTITIONS:]
    for folder in dirs:
        for path in folder.glob(f"*{SUFFIX}"):
            try:
                if path.stat().st_mtime >= since:
                    yield path
            except FileNotFoundError:
                continue
