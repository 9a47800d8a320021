"""A raw batch's features over its history: the event log, walked back from the batch by name.

Features of a batch depend on every earlier transaction of the same customers and terminals,
whichever replica saw them. That history is the event log gather wrote before publishing
(eventlog.py): a chain of batches, each naming the one before it. For batch B with lookback L
(features.lookback), :class:`StreamingFeatures` walks the chain back from B's own entry to the
first batch that starts at or before ``min(ts of B) - L``: the batches it passed hold every
event the features of B can count (the stream is in time order, so what lies further back is
older than any window). Entries are kept in memory between batches, so in the usual order
a batch reads only its own files.

So any number of replicas, in any order and again after a crash, compute exactly what
:func:`fraudpipe.features.compute_features` over the whole stream would, to the bit; and when
that is impossible the walk says so instead of computing over a hole (:class:`NotLogged`,
:class:`HistoryGone`). It never lists a folder: on NFS a listing may be stale for a minute,
while a file opened by name is the file the writer renamed in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudpipe import kernel
from fraudpipe.config import FeatureSettings
from fraudpipe.devices import CPU, Device
from fraudpipe.eventlog import EventLog
from fraudpipe.features import (
    fraud_columns,
    lookback,
    output_schema,
    tx_columns,
    valid_transactions,
    with_features,
)
from fraudpipe.schema import LABELS, TRANSACTIONS, BadBatch, check

_EPOCH = dt.datetime(1970, 1, 1)


class NotLogged(BadBatch):
    """A raw batch that is not gather's: its id is not in the event log, or the log holds other
    transactions under that id."""


class HistoryGone(BadBatch):
    """A batch whose history is no longer whole in the event log (pruned, or deleted)."""


def _us(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


@dataclass
class _Held:
    """One log entry, kept between batches: its transactions with time > kept_from and its fraud
    labels, as arrays of the device's namespace (uploaded once, when read), and its ids on the
    host (to check a batch against its own entry)."""

    prev: str | None
    first: int  # time (us) of the batch's first and last transaction
    last: int
    kept_from: int
    ids: npt.NDArray[np.int64]  # every transaction id of the entry, in its order
    tx: dict[str, Any]  # kernel.Inputs' transaction columns
    frauds: dict[str, Any]  # kernel.Inputs' fraud label columns


class StreamingFeatures:
    """Features of one raw-transactions batch, with its history walked back in the event log.

    Entries wholly older than a batch's lookback are forgotten after it, and read again if an
    older batch comes later; an entry that straddles the lookback is kept whole (rows older
    than every window change no feature). On the GPU the entries stay in device memory, so a
    batch in the usual order uploads only its own rows: its entry then serves the next batch
    as history.
    """

    def __init__(
        self, log: EventLog, cfg: FeatureSettings, device: Device = CPU, xp: Any = None
    ) -> None:
        """xp overrides the device's namespace (the tests' array_api_strict)."""
        self._log = log
        self._cfg = cfg
        self._xp = xp if xp is not None else device.xp
        self._lookback_us = lookback(cfg) // dt.timedelta(microseconds=1)
        self._held: dict[str, _Held] = {}

    def compute(self, batch: pl.DataFrame, batch_id: str) -> pl.DataFrame:
        """The batch's rows, in order, with their features; BadBatch (NotLogged, HistoryGone,
        or invalid values) when they cannot be computed right."""
        batch = valid_transactions(batch, f"raw-transactions batch {batch_id}")
        if batch.is_empty():
            return pl.DataFrame(schema=output_schema(self._cfg))
        xp = self._xp
        lo = int(batch["ts"].to_physical().min()) - self._lookback_us  # type: ignore[arg-type]
        chain = self._walk(batch_id, lo)
        ids = batch["transaction_id"].to_numpy()
        own = chain[0]
        if not np.array_equal(np.sort(own.ids), np.sort(ids)):
            raise NotLogged(
                f"batch {batch_id} holds other transactions than the event log's entry of that "
                f"id ({len(ids)} rows against {len(own.ids)}): it was not published by gather"
            )
        # The batch's rows first (the query), then the entries before it: transaction ids are
        # unique in the log (gather's and replay's), so none of those holds a row of the batch.
        # _walk holds the batch's own entry from lo < its first row on: all of its rows, so when
        # they are the batch's in the batch's order, they are its columns already.
        mine = own.tx if np.array_equal(own.ids, ids) else tx_columns(batch, xp)
        parts = [mine] + [e.tx for e in chain[1:]]
        inputs = kernel.Inputs(
            **{k: xp.concat([p[k] for p in parts]) for k in mine},
            **{k: xp.concat([e.frauds[k] for e in chain]) for k in own.frauds},
            rows=xp.arange(batch.height, dtype=xp.int64),
        )
        out = with_features(batch, inputs, self._cfg, xp)
        self._evict(lo)
        return out

    def _walk(self, batch_id: str, lo: int) -> list[_Held]:
        """The batch's entry, then each one before it, down to the first starting <= lo."""
        chain: list[_Held] = []
        at: str | None = batch_id
        while at is not None:
            held = self._held.get(at)
            if held is None or (held.kept_from > lo and held.last > lo):
                held = self._read(at, lo, batch_id, needed_by=chain[-1] if chain else None)
                self._held[at] = held
            chain.append(held)
            if held.first <= lo:
                break
            at = held.prev
        return chain

    def _read(self, entry_id: str, lo: int, batch_id: str, needed_by: _Held | None) -> _Held:
        try:
            entry = self._log.read(entry_id)
        except FileNotFoundError:
            if needed_by is None:
                raise NotLogged(
                    f"batch {batch_id} is not in the event log: raw batches come from gather, "
                    "which logs each one before publishing it (was it put in the topic by hand, "
                    "or sent again under a new id?)"
                ) from None
            raise HistoryGone(
                f"the history of batch {batch_id} is not whole: it needs the events from "
                f"{_us(lo)} on, but batch {entry_id} (before {_us(needed_by.first)}) is no "
                "longer in the event log (pruned, or deleted by hand); its features would be "
                "wrong, so they are not computed"
            ) from None
        except LookupError as exc:
            raise HistoryGone(f"the history of batch {batch_id} cannot be read: {exc}") from None
        if entry.prev is not None and entry.prev >= entry_id:  # ids sort in stream order
            raise HistoryGone(f"event log entry {entry_id} names a later batch {entry.prev}")
        tx = check(entry.transactions, TRANSACTIONS, f"event log entry {entry_id}")
        labels = check(entry.labels, LABELS, f"event log labels {entry_id}")
        times = tx["ts"].to_physical()
        if times.is_empty():
            raise HistoryGone(f"event log entry {entry_id} holds no transaction")
        rows = tx.filter(pl.col("ts").to_physical() > lo)
        frauds = labels.filter(
            (pl.col("is_fraud") == 1) & (pl.col("label_ts").to_physical() > lo)
        ).select("transaction_id", "label_ts")
        return _Held(
            prev=entry.prev,
            first=int(times.min()),  # type: ignore[arg-type]
            last=int(times.max()),  # type: ignore[arg-type]
            kept_from=lo,
            ids=tx["transaction_id"].to_numpy(),
            tx=tx_columns(rows, self._xp),
            frauds=fraud_columns(frauds, self._xp),
        )

    def _evict(self, lo: int) -> None:
        """Forget the entries wholly older than lo."""
        for entry_id in [i for i, h in self._held.items() if h.last <= lo]:
            del self._held[entry_id]
