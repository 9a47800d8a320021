"""The worker loop: the same for every stage.

A stage is an object with ``step()``: do one unit of work (one batch) and say what happened.
The worker calls it in a loop, waits (adaptive polling, plus inotify where it works) when the
stage is idle, renews the lease of the batch in hand, reaps expired claims, applies retention,
publishes a status file and metrics, and stops gracefully on SIGTERM: the batch in hand is
finished, never abandoned half-published.

Modes: ``once`` handles exactly one batch then exits; ``burst`` drains what is there then exits;
``forever`` is what a pod runs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import polars as pl

from fraudpipe import durable, schema
from fraudpipe.config import Settings
from fraudpipe.devices import CPU, Device, require_device
from fraudpipe.layout import Layout
from fraudpipe.logs import EventLogger, get_logger
from fraudpipe.metrics import Health, Metrics, serve
from fraudpipe.queue import Claim, Queue, Topic, Unreadable, producer_id
from fraudpipe.wake import StopFlag, Waker

STATUS_EVERY_S = 1.0
STATUS_STALE_S = 10.0
# After a fault of the volume (ENOSPC, EIO, ...) a stage waits this long, doubling up to the max.
ENV_BACKOFF_MIN_S = 0.5
ENV_BACKOFF_MAX_S = 30.0


def environment_fault(exc: OSError) -> str:
    """An OSError in words an operator acts on: what failed, and the errno's name."""
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{name}: {exc.strerror or exc}{where}"


class Mode(StrEnum):
    FOREVER = "forever"
    ONCE = "once"
    BURST = "burst"


@dataclass
class Outcome:
    """What one step did. batches == 0 and not finished means idle."""

    rows: int = 0
    batches: int = 0
    idle_for: float | None = None  # the stage knows when it will have work (e.g. pacing)
    finished: bool = False  # a finite source is exhausted


@dataclass
class Context:
    """What a stage gets from the worker that runs it."""

    settings: Settings
    layout: Layout
    queue: Queue
    metrics: Metrics
    worker_id: str
    log: EventLogger
    stop: StopFlag
    health: Health
    device: Device = CPU
    mode: Mode = Mode.FOREVER


class Stage(ABC):
    name: str
    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.current: Claim | None = None  # the claim in hand, whose lease the worker renews
        self.blocked: str | None = None  # the volume fault that holds this stage up, if any
        self._backoff = 0.0

    @abstractmethod
    def step(self) -> Outcome: ...

    def held_up(self, exc: OSError) -> Outcome:
        """A step failed on the volume (ENOSPC, EIO, a stale NFS handle): say so, and wait
        longer each time (up to ENV_BACKOFF_MAX_S) until a step goes through."""
        self.blocked = environment_fault(exc)
        self._backoff = min(ENV_BACKOFF_MAX_S, max(ENV_BACKOFF_MIN_S, self._backoff * 2))
        self.ctx.log.warning("stage.held_up", reason=self.blocked, retry_in_s=self._backoff)
        return Outcome(idle_for=self._backoff)

    def went_through(self) -> None:
        """A step did its work: whatever held the stage up is over."""
        if self.blocked is not None:
            self.ctx.log.info("stage.resumed", after=self.blocked)
        self.blocked, self._backoff = None, 0.0

    def housekeeping(self) -> None:  # noqa: B027 - optional hook, most stages have none
        """Stage-specific retention, run now and then from the worker's background thread."""

    def status(self) -> dict[str, Any]:
        """Stage-specific facts for the status file (measured values only)."""
        return {}


class BatchStage(Stage):
    """claim -> read -> validate -> transform -> publish -> ack, with every failure path."""

    input_schema: dict[str, pl.DataType]

    def ready(self) -> bool:
        """False while the stage cannot work yet (e.g. no model): batches stay queued."""
        return True

    def validate(self, df: pl.DataFrame) -> pl.DataFrame:
        return schema.check(df, self.input_schema, f"{self.consumes[0]} batch")

    @abstractmethod
    def transform(self, df: pl.DataFrame, claim: Claim) -> dict[str, pl.DataFrame]:
        """Return {output topic: batch}; published under the input's id."""

    def over_backlog(self) -> bool:
        """Backpressure: an output topic is at its bound, so the input stays queued."""
        return any(self.ctx.queue.topic(t).over_backlog() for t in self.produces)

    def step(self) -> Outcome:
        ctx = self.ctx
        if self.over_backlog():
            return Outcome(idle_for=self.ctx.settings.queue.poll_max_s)
        if not self.ready():
            return Outcome()
        topic = ctx.queue.topic(self.consumes[0])
        claim = topic.claim(ctx.worker_id)
        if claim is None:
            return Outcome()
        self.current = claim
        try:
            return self._handle(topic, claim)
        finally:
            self.current = None

    def _handle(self, topic: Topic, claim: Claim) -> Outcome:
        ctx, stage = self.ctx, self.name
        started = time.perf_counter()
        try:
            df = self.validate(topic.read(claim))
            produced = self.transform(df, claim)
            for out_topic, out_df in produced.items():
                ctx.queue.topic(out_topic).publish(claim.id, out_df)
        except (Unreadable, schema.BadBatch) as exc:
            # Deterministic: retrying cannot help. Dead-letter now, with the reason.
            try:
                topic.dead_letter(claim, str(exc))
            except OSError as fault:  # no room even for the reason: try again later
                return self._defer(topic, claim, fault)
            ctx.metrics.batches.labels(stage, "dead").inc()
            ctx.log.warning("batch.dead", id=claim.id, topic=topic.name, reason=str(exc))
            return Outcome(batches=1)
        except FileNotFoundError as exc:
            if exc.filename is not None and Path(exc.filename) == claim.path:
                ctx.metrics.lease_lost.labels(stage).inc()
                ctx.log.warning("batch.lease_lost", id=claim.id, topic=topic.name)
                return Outcome()
            return self._defer(topic, claim, exc)
        except OSError as exc:
            return self._defer(topic, claim, exc)
        except Exception as exc:
            ctx.metrics.errors.labels(stage).inc()
            try:
                outcome = topic.release(
                    claim, f"{type(exc).__name__}: {exc}", detail=traceback.format_exc()
                )
            except OSError as fault:
                return self._defer(topic, claim, fault)
            ctx.metrics.batches.labels(stage, "dead" if outcome == "dead" else "failed").inc()
            ctx.log.error("batch.failed", exc_info=True, id=claim.id, outcome=outcome)
            return Outcome(batches=1)
        if not topic.ack(claim):
            ctx.metrics.lease_lost.labels(stage).inc()
            ctx.log.warning(
                "batch.lease_lost",
                id=claim.id,
                topic=topic.name,
                note="output was published under the same id; nothing duplicates",
            )
        seconds = time.perf_counter() - started
        ctx.metrics.rows.labels(stage).inc(df.height)
        ctx.metrics.batches.labels(stage, "ok").inc()
        ctx.metrics.batch_seconds.labels(stage).observe(seconds)
        ctx.log.debug("batch.done", id=claim.id, rows=df.height, seconds=round(seconds, 4))
        return Outcome(rows=df.height, batches=1)

    def _defer(self, topic: Topic, claim: Claim, exc: OSError) -> Outcome:
        """The volume failed us (full, gone, read-only): not the batch's fault, so it goes
        back untouched, and the stage waits longer each time until a batch goes through."""
        outcome = topic.defer(claim)
        self.ctx.metrics.batches.labels(self.name, "deferred").inc()
        self.ctx.log.warning("batch.deferred", id=claim.id, topic=topic.name, outcome=outcome)
        return self.held_up(exc)


@dataclass
class _Rates:
    """Rows/s over a sliding window, measured from this worker's own counters."""

    window_s: float = 10.0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def add(self, now: float, total: int) -> float:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.pop(0)
        t0, n0 = self.samples[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0


class Worker:
    """Runs one stage in this process."""

    def __init__(
        self,
        settings: Settings,
        kind: type[Stage],
        device: str,
        mode: Mode,
        supervisor_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.supervisor_pid = supervisor_pid  # stop when this parent is gone (fraudpipe run)
        self.mode = mode
        self.layout = Layout(settings.data_dir)
        self.stop = StopFlag()
        self._signalled: int | None = None  # set by the signal handler, logged elsewhere
        self.metrics = Metrics()
        stage_name = kind.name
        self.worker_id = producer_id(stage_name)
        self.health = Health(stale_after_s=max(60.0, settings.queue.lease_s * 2))
        self.ctx = Context(
            settings=settings,
            layout=self.layout,
            queue=Queue(self.layout.queue, settings.queue),
            metrics=self.metrics,
            worker_id=self.worker_id,
            log=get_logger(stage_name),
            stop=self.stop,
            health=self.health,
            device=require_device(stage_name, device),
            mode=mode,
        )
        self.stage = kind(self.ctx)
        self.totals = {"rows": 0, "batches": 0}
        self.started_at = time.time()
        self.finished = False
        self.port: int | None = None
        self._rates = _Rates()
        self._status_path = self.layout.status / f"{self.worker_id}.json"

    # -- background: lease renewal, reaping, retention, status --------------------------------

    def _background(self) -> None:
        q = self.settings.queue
        renew_every = max(0.2, q.lease_s / 4)
        reap_every = max(0.5, min(q.lease_s / 2, 5.0))
        last_renew = last_reap = last_status = 0.0
        while not self.stop.wait(0.2):
            now = time.monotonic()
            if self.supervisor_pid is not None and os.getppid() != self.supervisor_pid:
                self.ctx.log.warning("worker.orphaned", supervisor=self.supervisor_pid)
                self.stop.set()  # the batch in hand is finished, then the loop ends
                self.waker.wake()
            claim = self.stage.current
            if claim is not None and now - last_renew >= renew_every:
                if not self.ctx.queue.topic(claim.topic).renew(claim):
                    self.ctx.log.warning("lease.lost", id=claim.id)
                last_renew = now
            if now - last_reap >= reap_every:
                last_reap = now
                try:
                    self._housekeeping()
                except Exception:  # housekeeping must never kill the worker
                    self.ctx.log.error("housekeeping.failed", exc_info=True)
            if now - last_status >= STATUS_EVERY_S:
                last_status = now
                try:
                    self._write_status()
                except OSError:
                    self.ctx.log.error("status.write_failed", exc_info=True)
        if self._signalled is not None:
            self.ctx.log.info("worker.stopping", signal=signal.Signals(self._signalled).name)

    def _housekeeping(self) -> None:
        queue = self.ctx.queue
        for name in self.stage.consumes:
            topic = queue.topic(name)
            moved = topic.reap()
            if moved:
                self.metrics.reaped.labels(name).inc(moved)
                self.ctx.log.info("reaper.returned", topic=name, batches=moved)
        for name in set(self.stage.consumes + self.stage.produces):
            topic = queue.topic(name)
            if topic.quarantine():
                self.ctx.log.warning("queue.quarantined", topic=name)
            topic.expire_done()
            topic.clean_tmp()
            st = topic.stats()
            for state in ("pending", "claimed", "dead"):
                self.metrics.queue_depth.labels(name, state).set(getattr(st, state))
        remove_stale_status(self.layout.status, older_than_s=STATUS_STALE_S * 6)
        self.stage.housekeeping()

    def _write_status(self) -> None:
        now = time.time()
        doc = {
            "worker": self.worker_id,
            "stage": self.stage.name,
            "device": self.ctx.device.kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "heartbeat_at": now,
            "rows": self.totals["rows"],
            "batches": self.totals["batches"],
            "rows_per_s": round(self._rates.add(now, self.totals["rows"]), 1),
            "current": self.stage.current.id if self.stage.current else None,
            "finished": self.finished,
            "metrics_port": self.port,
            "blocked": self.stage.blocked,
            **self.stage.status(),
        }
        durable.write_json(self._status_path, doc, fsync=False)

    # -- the loop ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            # Nothing here may take a lock (see wake.py): no logging, no threading.Event.
            self._signalled = signum
            self.stop.set()
            self.waker.wake()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        s = self.settings
        self.layout.status.mkdir(parents=True, exist_ok=True)
        watch_dirs = [self.ctx.queue.topic(t).dir("pending") for t in self.stage.consumes]
        self.waker = Waker(watch_dirs, s.queue.watch, self.ctx.log)
        self._install_signals()
        self.port = serve(self.metrics, self.health, s.metrics.host, s.metrics.port)
        bg = threading.Thread(target=self._background, name="housekeeping", daemon=True)
        bg.start()
        self.ctx.log.info(
            "worker.started",
            worker=self.worker_id,
            stage=self.stage.name,
            device=self.ctx.device.kind,
            mode=self.mode.value,
            port=self.port,
            data_dir=str(s.data_dir),
            watch=self.waker.active,
        )
        poll = s.queue.poll_min_s
        try:
            while not self.stop.is_set():
                self.health.tick()
                try:
                    outcome = self.stage.step()
                except OSError as exc:  # the volume, not the work: wait, never crash-loop
                    outcome = self.stage.held_up(exc)
                self.totals["rows"] += outcome.rows
                self.totals["batches"] += outcome.batches
                if self.mode is Mode.ONCE and outcome.batches:
                    break
                if outcome.finished:
                    self.finished = True
                    if self.mode is not Mode.FOREVER:
                        break
                if outcome.batches:
                    self.stage.went_through()
                    poll = s.queue.poll_min_s
                    continue
                if self.mode is Mode.BURST and outcome.idle_for is None:
                    break  # drained
                wait = (
                    poll if outcome.idle_for is None else min(outcome.idle_for, s.queue.poll_max_s)
                )
                self.waker.wait(wait)
                poll = min(poll * 2, s.queue.poll_max_s)
        finally:
            self.stop.set()
            bg.join(timeout=5)
            self.waker.close()
            self._status_path.unlink(missing_ok=True)
            self.ctx.log.info("worker.stopped", worker=self.worker_id, **self.totals)
        return 0


def read_status(status_dir: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Status of the live workers: files whose heartbeat is older than STATUS_STALE_S belong
    to workers that died without cleaning up (SIGKILL, node loss) and are left out, as is any
    file that is not a worker's status (whatever was written there, it is not read as one)."""
    now = time.time() if now is None else now
    docs = []
    for path in sorted(status_dir.glob("*.json")) if status_dir.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or not JSON
        if not _well_formed(doc):
            continue
        if now - float(doc["heartbeat_at"]) <= STATUS_STALE_S:
            docs.append(doc)
    return docs


def _well_formed(doc: object) -> bool:
    """Whether doc has what every reader of status files relies on, with the right types."""
    if not isinstance(doc, dict):
        return False
    number = (int, float)
    return (
        isinstance(doc.get("worker"), str)
        and isinstance(doc.get("stage"), str)
        and isinstance(doc.get("pid"), int)
        and not isinstance(doc.get("pid"), bool)
        and isinstance(doc.get("heartbeat_at"), number)
        and isinstance(doc.get("rows", 0), number)
        and isinstance(doc.get("batches", 0), number)
        and isinstance(doc.get("rows_per_s", 0.0), number)
    )


def remove_stale_status(status_dir: Path, older_than_s: float) -> None:
    now = time.time()
    for path in status_dir.glob("*.json"):
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
