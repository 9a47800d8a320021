"""The event log: every transaction and label gather emitted, one pair of files per batch.

gather is its only writer and appends a batch here *before* publishing it to a topic, so any
stage holding batch B can read every event up to B's time from the log (the history that
stateful features need, whichever replica processed the earlier batches)::

    state/log/transactions/day=YYYY-MM-DD/<batch-id>.parquet   the batch's transactions
    state/log/labels/day=YYYY-MM-DD/<batch-id>.parquet         labels that arrived with it

Both files of a batch sit in the partition of the day in its id (the day of its first
transaction), so a reader finds them from the id alone, without listing a folder: listings go
stale on NFS, an open by name does not. Every batch has both files (its labels may be none), and
its transactions file names the batch before it in the stream (Parquet metadata
``fraudpipe.prev``): the log is a chain that a reader walks back, by name, as far as it needs,
and a link that is missing is a gap it can see, never a silent hole. Files are named after the
batch id, so re-appending a batch after a crash replaces it rather than duplicating it.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from fraudpipe import durable
from fraudpipe.layout import Layout
from fraudpipe.queue import id_time_ms

Kind = Literal["transactions", "labels"]
PREV_KEY = "fraudpipe.prev"
_EPOCH = dt.date(1970, 1, 1)


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
    try:
        names = list(root.iterdir())
    except FileNotFoundError:
        return []
    found = ((parse_day_dir(p.name), p) for p in names)
    return sorted((day, p) for day, p in found if day is not None)


def prune_days(root: Path, keep_from: dt.date) -> int:
    """Delete the day partitions under root older than keep_from; how many were removed."""
    removed = 0
    for day, part in day_partitions(root):
        if day < keep_from:
            shutil.rmtree(part, ignore_errors=True)
            removed += 1
    return removed


def batch_day(batch_id: str) -> dt.date:
    """The day of a batch's first transaction, as its id carries it (UTC)."""
    return _EPOCH + dt.timedelta(milliseconds=id_time_ms(batch_id))


@dataclass(frozen=True)
class Entry:
    """One batch as the log holds it."""

    id: str
    prev: str | None  # the batch before it in the stream; None for the first
    transactions: pl.DataFrame
    labels: pl.DataFrame


class EventLog:
    def __init__(self, layout: Layout, *, fsync: bool = True) -> None:
        self.root = layout.log
        self.fsync = fsync

    def _kind_dir(self, kind: Kind) -> Path:
        return self.root / kind

    def path(self, kind: Kind, batch_id: str) -> Path:
        return self._kind_dir(kind) / day_dir_name(batch_day(batch_id)) / f"{batch_id}.parquet"

    def write(self, kind: Kind, batch_id: str, df: pl.DataFrame, day: dt.date) -> Path:
        final = self._kind_dir(kind) / day_dir_name(day) / f"{batch_id}.parquet"
        return durable.write_parquet(final, df, fsync=self.fsync)

    def append(
        self, batch_id: str, prev: str | None, transactions: pl.DataFrame, labels: pl.DataFrame
    ) -> None:
        """Log one batch: its labels, then its transactions, which link it to prev.

        The transactions file is written last: once it exists, so does the labels file.
        """
        durable.write_parquet(self.path("labels", batch_id), labels, fsync=self.fsync)
        durable.write_parquet(
            self.path("transactions", batch_id),
            transactions,
            fsync=self.fsync,
            metadata={PREV_KEY: prev or ""},
        )

    def read(self, batch_id: str) -> Entry:
        """A batch's files, found by its id; FileNotFoundError if it is not (or no longer) in
        the log, LookupError if it was logged without a link to its predecessor."""
        tx_path = self.path("transactions", batch_id)
        meta = pl.read_parquet_metadata(tx_path)
        if PREV_KEY not in meta:
            raise LookupError(
                f"event log file {tx_path} names no previous batch: it was written by an older "
                "fraudpipe; start the stream in a fresh data dir"
            )
        return Entry(
            id=batch_id,
            prev=meta[PREV_KEY] or None,
            transactions=pl.read_parquet(tx_path),
            labels=pl.read_parquet(self.path("labels", batch_id)),
        )

    def days(self, kind: Kind) -> list[dt.date]:
        return [day for day, _ in day_partitions(self._kind_dir(kind))]

    def files(self, kind: Kind, first_day: dt.date, last_day: dt.date) -> list[Path]:
        """Every log file whose partition day lies in [first_day, last_day], in name order.
        A partition pruned while it is listed is skipped."""
        out: list[Path] = []
        for day, part in day_partitions(self._kind_dir(kind)):
            if first_day <= day <= last_day:
                try:
                    out.extend(sorted(p for p in part.iterdir() if p.suffix == ".parquet"))
                except FileNotFoundError:
                    continue
        return out

    @staticmethod
    def read_files(paths: Iterable[Path]) -> pl.DataFrame | None:
        frames = []
        for p in paths:
            try:
                frames.append(pl.read_parquet(p))
            except FileNotFoundError:  # pruned since it was listed
                continue
        if not frames:
            return None
        return pl.concat(frames, how="vertical_relaxed")

    def prune(self, keep_from: dt.date) -> int:
        """Delete the batches of days before keep_from, except the newest day before it: a
        batch of that day may hold events after keep_from (a batch can span days), and its
        files go only once a later day's batch starts before keep_from. How many partitions
        were removed (both kinds)."""
        removed = 0
        for kind in ("transactions", "labels"):
            older = [day for day in self.days(kind) if day < keep_from]
            if len(older) > 1:
                removed += prune_days(self._kind_dir(kind), older[-1])
        return removed
