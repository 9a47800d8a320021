"""The event log: every transaction and label gather emitted, partitioned by simulated day.

gather is its only writer and writes a batch here *before* publishing it to a topic, so any
stage holding batch B can read every event up to B's time from the log (the history that
stateful features need, whichever replica processed the earlier batches). Files are named after
the batch id, so re-writing a batch after a crash replaces it rather than duplicating it.

    state/log/transactions/day=YYYY-MM-DD/<batch-id>.parquet   (partition: day of first ts)
    state/log/labels/day=YYYY-MM-DD/<batch-id>.parquet         (partition: day of first label_ts)
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import polars as pl

from fraudpipe import durable
from fraudpipe.layout import Layout

Kind = Literal["transactions", "labels"]


def day_dir_name(day: dt.date) -> str:
    return f"day={day.isoformat()}"


def parse_day_dir(name: str) -> dt.date | None:
    if not name.startswith("day="):
        return None
    try:
        return dt.date.fromisoformat(name[4:])
    except ValueError:
        return None


def day_partitions(root: Path) -> list[tuple[dt.date, Path]]:
    """The day=YYYY-MM-DD folders under root, oldest first."""
    if not root.is_dir():
        return []
    found = ((parse_day_dir(p.name), p) for p in root.iterdir())
    return sorted((day, p) for day, p in found if day is not None)


def prune_days(root: Path, keep_from: dt.date) -> int:
    """Delete the day partitions under root older than keep_from; how many were removed."""
    removed = 0
    for day, part in day_partitions(root):
        if day < keep_from:
            shutil.rmtree(part, ignore_errors=True)
            removed += 1
    return removed


class EventLog:
    def __init__(self, layout: Layout, *, fsync: bool = True) -> None:
        self.root = layout.log
        self.fsync = fsync

    def _kind_dir(self, kind: Kind) -> Path:
        return self.root / kind

    def write(self, kind: Kind, batch_id: str, df: pl.DataFrame, day: dt.date) -> Path:
        final = self._kind_dir(kind) / day_dir_name(day) / f"{batch_id}.parquet"
        return durable.write_parquet(final, df, fsync=self.fsync)

    def days(self, kind: Kind) -> list[dt.date]:
        return [day for day, _ in day_partitions(self._kind_dir(kind))]

    def files(self, kind: Kind, first_day: dt.date, last_day: dt.date) -> list[Path]:
        """Every log file whose partition day lies in [first_day, last_day], in name order."""
        out: list[Path] = []
        for day, part in day_partitions(self._kind_dir(kind)):
            if first_day <= day <= last_day:
                out.extend(sorted(p for p in part.iterdir() if p.suffix == ".parquet"))
        return out

    @staticmethod
    def read_files(paths: Iterable[Path]) -> pl.DataFrame | None:
        frames = [pl.read_parquet(p) for p in paths]
        if not frames:
            return None
        return pl.concat(frames, how="vertical_relaxed")

    def prune(self, kind: Kind, keep_from: dt.date) -> int:
        """Delete day partitions older than keep_from; return how many were removed."""
        return prune_days(self._kind_dir(kind), keep_from)
