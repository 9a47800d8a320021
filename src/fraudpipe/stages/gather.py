"""gather: stream transactions (simulated or replayed) at a target rate; labels follow later.

The stream is deterministic: batch k of a source is the same rows under the same id however
often it is produced, so a gather restarted after a crash re-emits at most the batch it was
writing, under the same name, and the queue dedupes it. Its position lives in a checkpoint
written after each batch is published.

Per batch, in this order (each step idempotent): append the batch to the event log (its
transactions, the labels that became due, label_ts <= the batch's last ts, and the id of the
batch before it), publish those labels to the labels topic and the transactions to
raw-transactions, save the checkpoint.

The log is pruned behind the slowest consumer that still needs it, not behind gather: history
is kept for ``log_retention_days`` before the oldest raw batch not yet processed (or gather's
own position, if that is older), so a lagging or stopped preprocess finds all of its history
when it resumes.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import polars as pl

from fraudpipe import durable, schema
from fraudpipe.config import SimulatorSettings
from fraudpipe.control import GenerationControl
from fraudpipe.eventlog import EventLog
from fraudpipe.layout import RAW
from fraudpipe.queue import make_id
from fraudpipe.stages import StageError
from fraudpipe.worker import Context, Mode, Outcome, Stage


class Source(Protocol):
    start_date: dt.date

    def day(self, d: int) -> pl.DataFrame | None: ...

    def next_day(self, d: int) -> int | None: ...


_EPOCH = dt.datetime(1970, 1, 1)


def _ms(ts: dt.datetime) -> int:
    return int(ts.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _same_stream(stored: dict[str, Any], identity: dict[str, Any]) -> bool:
    """Whether a checkpoint's identity names this stream. Older checkpoints spell out every
    simulator field; a field at its default value is the same as a field not given."""
    if stored.get("source") == "simulator" == identity.get("source"):
        defaults = SimulatorSettings.model_validate({}).model_dump(mode="json")
        stored = {k: v for k, v in stored.items() if defaults.get(k, object()) != v}
    return stored == identity


class Gather(Stage):
    name = "gather"
    produces = (RAW,)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        g = ctx.settings.gather
        self.cfg = g
        self.source: Source
        if g.source == "simulator":
            from fraudpipe.simulate import Simulator

            self.source = Simulator(g.simulator, g.label_delay_days)
            self.tag = f"sim{g.simulator.seed}"
            # Knobs left at their defaults are not part of the identity: a stream checkpointed
            # before a knob existed is the same stream, and resumes after an upgrade.
            identity: dict[str, Any] = {
                "source": "simulator",
                **g.simulator.model_dump(mode="json", exclude_defaults=True),
            }
        else:
            from fraudpipe.replay import ReplayError, ReplaySource

            try:
                self.source = ReplaySource(g.replay, g.label_delay_days)
            except ReplayError as exc:
                raise StageError(f"gather.replay: {exc}") from exc
            self.tag = "replay"
            identity = {"source": "replay", "path": str(g.replay.path)}
        identity["label_delay_days"] = g.label_delay_days
        self.eventlog = EventLog(ctx.layout, fsync=ctx.settings.queue.fsync)
        self.raw = ctx.queue.topic(RAW)
        self.delay = dt.timedelta(days=g.label_delay_days)
        self.rows_per_batch = max(1, min(g.max_batch_rows, round(g.rate * g.batch_interval_s)))
        self.ckpt_path = ctx.layout.gather_checkpoint / "checkpoint.json"
        ck = self._load_checkpoint(identity)
        self.day_idx: int = ck["day"]
        self.offset: int = ck["offset"]
        self.seq: int = ck["seq"]
        self.rows_emitted: int = ck["rows"]
        self.last_id: str | None = ck["last_id"]
        # The batch after the checkpoint may have been logged and published before a crash:
        # it is emitted again with the size it had then, so it is the same rows again.
        self.next_rows: int = ck["next_rows"] or self.rows_per_batch
        wm = ck["label_watermark"]
        # The simulated clock: last ts emitted; every label with label_ts <= it is published.
        self.watermark: dt.datetime | None = dt.datetime.fromisoformat(wm) if wm else None
        self.identity = identity
        self._days: dict[int, pl.DataFrame | None] = {}
        self.next_due = time.monotonic()
        self.control = GenerationControl(ctx.layout)
        self.finished = False
        self.log_kept_from: dt.date | None = None  # the event log's retention line, once drawn

    # -- position ----------------------------------------------------------------------------

    def _load_checkpoint(self, identity: dict[str, Any]) -> dict[str, Any]:
        fresh = {
            "day": 0,
            "offset": 0,
            "seq": 0,
            "rows": 0,
            "label_watermark": None,
            "last_id": None,
            "next_rows": None,
        }
        if not self.ckpt_path.exists():
            return fresh
        ck = json.loads(self.ckpt_path.read_text())
        if not _same_stream(ck.get("identity") or {}, identity):
            raise StageError(
                f"{self.ctx.layout.root} holds a stream from another source "
                f"({ck.get('identity')}); use a fresh --data-dir, or delete "
                f"{self.ckpt_path} to start this source over in the same folder"
            )
        if ck["seq"] and "last_id" not in ck:
            raise StageError(
                f"{self.ckpt_path} was written by an older fraudpipe, whose event log does not "
                "link its batches; use a fresh --data-dir"
            )
        return {k: ck.get(k, v) for k, v in fresh.items()}

    def _save_checkpoint(self) -> None:
        durable.write_json(
            self.ckpt_path,
            {
                "identity": self.identity,
                "day": self.day_idx,
                "offset": self.offset,
                "seq": self.seq,
                "rows": self.rows_emitted,
                "label_watermark": self.watermark.isoformat() if self.watermark else None,
                "last_id": self.last_id,
                "next_rows": self.rows_per_batch,
                "at": time.time(),
            },
            fsync=self.ctx.settings.queue.fsync,
        )

    def _day(self, d: int) -> pl.DataFrame | None:
        if self.cfg.days is not None and d >= self.cfg.days:
            return None
        if d not in self._days:
            self._days[d] = self.source.day(d)
            keep_from = d - int(np.ceil(self.cfg.label_delay_days)) - 2
            for old in [k for k in self._days if k < keep_from]:
                del self._days[old]
        return self._days[d]

    def _day_index(self, ts: dt.datetime) -> int:
        return (ts.date() - self.source.start_date).days

    def _days_from(self, day: int) -> Iterator[tuple[int, pl.DataFrame]]:
        """The days from `day` on that have rows, with their rows (empty days are skipped
        without being built: a replay may have gaps of years)."""
        while (at := self.source.next_day(day)) is not None:
            frame = self._day(at)
            if frame is None:
                return
            yield at, frame
            day = at + 1

    def _take(self, n: int) -> tuple[pl.DataFrame | None, int, int]:
        """Up to n next rows of the stream, and the cursor after them (not yet committed)."""
        day, offset, parts, need = self.day_idx, self.offset, [], n
        for at, frame in self._days_from(day):
            if at != day:
                day, offset = at, 0
            chunk = frame.slice(offset, need)
            parts.append(chunk)
            need -= chunk.height
            offset += chunk.height
            if need == 0:
                break
            day, offset = at + 1, 0
        if not parts or not sum(p.height for p in parts):
            return None, day, offset
        return pl.concat(parts), day, offset

    def _labels_due(self, until: dt.datetime) -> pl.DataFrame:
        """Labels with watermark < label_ts <= until (they 'arrive' as the clock passes them)."""
        lo = 0 if self.watermark is None else max(0, self._day_index(self.watermark - self.delay))
        hi = self._day_index(until - self.delay)
        frames = []
        for at, frame in self._days_from(lo):
            if at > hi:
                break
            frames.append(frame)
        if not frames:
            return pl.DataFrame(schema={**schema.LABELS, "fraud_scenario": pl.Int8()})
        cond = pl.col("label_ts") <= until
        if self.watermark is not None:
            cond &= pl.col("label_ts") > self.watermark
        return (
            pl.concat(frames)
            .filter(cond & pl.col("is_fraud").is_not_null())
            .select(["transaction_id", "is_fraud", "label_ts", "fraud_scenario"])
            .sort(["label_ts", "transaction_id"])
        )

    # -- the step ----------------------------------------------------------------------------

    def step(self) -> Outcome:
        if self.finished:
            return Outcome(finished=True)
        paced = self.ctx.mode is Mode.FOREVER
        asked = self.control.poll() if paced else None
        if asked is not None and asked.paused:
            self.next_due = time.monotonic()
            return Outcome(idle_for=self.ctx.settings.queue.poll_max_s)
        rate = asked.rate if asked is not None and asked.rate else self.cfg.rate
        now = time.monotonic()
        if paced and now < self.next_due:
            return Outcome(idle_for=self.next_due - now)
        if self.raw.over_backlog():
            self.ctx.metrics.backpressure_seconds.labels(self.name).inc(
                self.ctx.settings.queue.poll_max_s
            )
            return Outcome(idle_for=self.ctx.settings.queue.poll_max_s)
        batch, day, offset = self._take(self.next_rows)
        if batch is None:
            self.finished = True
            self.ctx.log.info("gather.source_exhausted", batches=self.seq)
            return Outcome(finished=True)
        first, last = batch["ts"][0], batch["ts"][-1]
        msg_id = make_id(_ms(first), self.tag, self.seq)
        wall = time.time()
        n = batch.height
        # Rows arrived evenly over the last batch interval and waited for the batch: their
        # end-to-end latency honestly includes that wait.
        created = wall - (n - 1 - np.arange(n)) / rate
        tx = batch.with_columns(created_at=pl.Series(created)).select(list(schema.TRANSACTIONS))
        labels = self._labels_due(last)
        self.eventlog.append(msg_id, self.last_id, tx, labels)
        if labels.height:  # they arrive as the clock passes them: counted as they do
            frauds = int(labels["is_fraud"].sum())
            self.ctx.metrics.labels.labels("1").inc(frauds)
            self.ctx.metrics.labels.labels("0").inc(labels.height - frauds)
        self.raw.publish(msg_id, tx)
        self.day_idx, self.offset, self.seq, self.watermark = day, offset, self.seq + 1, last
        self.rows_emitted += n
        self.last_id, self.next_rows = msg_id, self.rows_per_batch
        self._save_checkpoint()
        if paced:
            # A rate set from the dashboard changes the pace, never the batch contents: batch
            # k stays the same rows under the same id, which restarts rely on.
            interval = self.rows_per_batch / rate
            self.next_due = max(self.next_due + interval, time.monotonic() - interval)
        return Outcome(rows=n, batches=1)

    def housekeeping(self) -> None:
        """Prune the event log behind the slowest consumer (see the module's docstring)."""
        if self.watermark is None:
            return
        behind = self.raw.oldest_ms()
        position = self.watermark
        if behind is not None:
            position = min(position, _EPOCH + dt.timedelta(milliseconds=behind))
        keep_from = position.date() - dt.timedelta(days=self.cfg.log_retention_days)
        if self.log_kept_from is None or keep_from > self.log_kept_from:
            removed = self.eventlog.prune(keep_from)
            if removed:
                self.ctx.log.info("eventlog.pruned", partitions=removed, before=str(keep_from))
        self.log_kept_from = keep_from

    def status(self) -> dict[str, Any]:
        asked = self.control.current
        return {
            "sim_time": self.watermark.isoformat() if self.watermark else None,
            "source": self.cfg.source,
            "target_rate": asked.rate or self.cfg.rate,
            "paused": asked.paused,
            "log_kept_from": str(self.log_kept_from) if self.log_kept_from else None,
        }
