"""The durable file queue (DESIGN.md section 4).

One message is one Parquet file. A topic is a folder on the shared volume::

    queue/<topic>/pending/<id>~<tries>.parquet               published, waiting
    queue/<topic>/claimed/<id>~<tries>~<consumer>.parquet    held under a lease
    queue/<topic>/done/<id>.parquet                          acknowledged, kept for retention_s
    queue/<topic>/dead/<id>~<tries>.parquet + <id>.reason.json   dead letters
    queue/<topic>/tmp/                                       writes in progress

``<tries>`` counts what went wrong so far: ``<failed>`` or ``<failed>-<lost>``, the attempts
that failed (the stage raised an error on the batch) and the leases lost (the holder vanished:
killed, stopped, or cut off). The two are bounded apart (``max_attempts``, ``max_lost_leases``):
a lost lease says little about the batch (a node dies, a pod is evicted), so it takes many of
them, in a row of holders, to call a batch poison (one that kills whoever holds it).

Every state change is one ``rename`` inside the topic folder, which is atomic on a local disk and
on NFS, and exclusive: of two processes renaming the same file, exactly one succeeds. That is the
whole locking story; there are no lock files and no shared counters.

* Names: ``<id>`` is ``<13-digit ms time>-<producer>-<8-digit sequence>``: time-ordered,
  unique by construction. A stage's output batch keeps its input's id, so re-processing after a
  crash finds the name taken instead of adding a second copy. A file in pending/ whose name is
  not of this form is nobody's message: housekeeping moves it to dead/, with a reason.
* Publish: write under tmp/, fsync, rename into pending/. An id already in the topic (pending,
  claimed, done or dead) is not published again.
* Claim: touch, then rename pending -> claimed (the winner holds the lease). The lease is the
  claimed file's change time (ctime), which the volume stamps with its own clock (the NFS
  server's; the kernel's on a local disk), never the holder's: a heartbeat renews it with
  ``utime``. A reaper judges it on that same clock (:class:`VolumeClock`), so the clocks of the
  nodes may be off by any amount. The reaper moves claims whose
  lease expired back to pending with lost + 1, or to dead/ after ``max_lost_leases``. A failed
  attempt goes back with failed + 1, or to dead/ after ``max_attempts``; a batch the stage could
  not finish for a reason outside it (a full disk) goes back unchanged (``defer``).
* Ack: rename claimed -> done (after the output was durably published). If the rename finds the
  file gone, the lease was lost to the reaper; the output was idempotent, so nothing duplicates.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from fraudpipe import durable
from fraudpipe.config import QueueSettings
from fraudpipe.logs import MAX_TRACEBACK_CHARS, bounded

SUFFIX = ".parquet"
REASON_SUFFIX = ".reason.json"
_STATES = ("pending", "claimed", "done", "dead", "tmp")
_ID = re.compile(r"^\d{13}-[^~/]+-\d{8}$")
_TRIES = re.compile(r"^(\d+)(?:-(\d+))?$")


class Unreadable(Exception):
    """A message file that cannot be read as Parquet (corrupt, truncated, not Parquet)."""


def producer_id(role: str) -> str:
    """A process-unique producer/consumer name: role, host, pid and a random tag."""
    host = socket.gethostname().split(".")[0].replace("-", "").replace("~", "")[:20] or "host"
    return f"{role}.{host}.{os.getpid()}.{secrets.token_hex(2)}"


def make_id(time_ms: int, producer: str, seq: int) -> str:
    if "~" in producer or "/" in producer:
        raise ValueError(f"producer name may not contain '~' or '/': {producer!r}")
    return f"{time_ms:013d}-{producer}-{seq:08d}"


def is_id(name: str) -> bool:
    """Whether name is a message id of this protocol (what make_id makes)."""
    return _ID.match(name) is not None


def id_time_ms(msg_id: str) -> int:
    """The time component of a message id (milliseconds since the epoch)."""
    return int(msg_id.split("-", 1)[0])


@dataclass(frozen=True)
class Message:
    topic: str
    id: str
    attempt: int  # attempts that failed so far
    path: Path
    lost: int = 0  # leases lost so far (holders that vanished)

    @property
    def tries(self) -> str:
        """The <tries> part of its file names."""
        return f"{self.attempt}-{self.lost}" if self.lost else str(self.attempt)


@dataclass(frozen=True)
class Claim(Message):
    consumer: str = ""


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    id: str
    attempt: int
    path: Path | None
    reason: dict[str, Any]
    foreign: bool = False  # a file that was never a message of this protocol (see _parse)


@dataclass(frozen=True)
class TopicStats:
    topic: str
    pending: int
    claimed: int
    expired: int
    done: int
    dead: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "pending": self.pending,
            "claimed": self.claimed,
            "expired": self.expired,
            "done": self.done,
            "dead": self.dead,
        }


@dataclass(frozen=True)
class _Name:
    id: str
    attempt: int
    lost: int
    consumer: str | None


def _parse(name: str) -> _Name | None:
    """'<id>~<tries>[~<consumer>].parquet' -> its parts; None if it is not such a name."""
    if not name.endswith(SUFFIX) or name.startswith("."):
        return None
    parts = name[: -len(SUFFIX)].split("~")
    if len(parts) not in (2, 3) or not is_id(parts[0]):
        return None
    tries = _TRIES.match(parts[1])
    if tries is None:
        return None
    return _Name(
        parts[0],
        int(tries[1]),
        int(tries[2] or 0),
        parts[2] if len(parts) == 3 and parts[2] else None,
    )


def _scan(folder: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            yield from it
    except FileNotFoundError:
        return


def _delete_older(folder: Path, max_age_s: float, now: float | None) -> int:
    """Delete the files in folder last modified more than max_age_s ago; how many."""
    now = time.time() if now is None else now
    removed = 0
    for entry in _scan(folder):
        with contextlib.suppress(FileNotFoundError):
            if now - entry.stat().st_mtime > max_age_s:
                os.unlink(entry.path)
                removed += 1
    return removed


class VolumeClock:
    """The volume's clock, read from this node: ``time.time()`` plus the node's measured offset.

    Leases are ctimes, stamped by the volume. Now and then (``every_s``) the clock touches a
    probe file, ``queue/.clock``, and reads its ctime against this node's clock: the
    difference is the node's skew against the volume, however large. Where the probe cannot be
    written (a read-only mount) the last offset stands, at first none.
    """

    def __init__(self, probe: Path, every_s: float = 10.0) -> None:
        self.probe = probe
        self.every_s = every_s
        self.offset = 0.0
        self._probed_at: float | None = None

    def now(self) -> float:
        local = time.monotonic()
        if self._probed_at is None or local - self._probed_at >= self.every_s:
            self._probed_at = local
            with contextlib.suppress(OSError):
                self.offset = self._measure()
        return time.time() + self.offset

    def _measure(self) -> float:
        before = time.time()
        fd = os.open(self.probe, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.utime(fd)
            stamped = os.fstat(fd).st_ctime
        finally:
            os.close(fd)
        after = time.time()
        return stamped - (before + after) / 2


class Topic:
    """One topic folder and the operations of the protocol on it."""

    def __init__(
        self,
        queue_root: Path,
        name: str,
        settings: QueueSettings,
        clock: VolumeClock | None = None,
    ) -> None:
        self.name = name
        self.root = queue_root / name
        self.settings = settings
        self.clock = clock or VolumeClock(queue_root / ".clock")
        for state in _STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True)
        self._backlog_cache: tuple[float, int] = (0.0, 0)

    def dir(self, state: str) -> Path:
        return self.root / state

    # -- producing ---------------------------------------------------------------------------

    def known(self, msg_id: str) -> bool:
        """True if the id is pending, claimed, acknowledged or dead in this topic."""
        if (self.dir("done") / f"{msg_id}{SUFFIX}").exists():
            return True
        prefix = f"{msg_id}~"
        return any(
            e.name.startswith(prefix)
            for state in ("pending", "claimed", "dead")
            for e in _scan(self.dir(state))
        )

    def publish(self, msg_id: str, df: pl.DataFrame) -> Path | None:
        """Durably publish df as message msg_id; None if that id is already in the topic (a
        producer re-emitting after a crash), so a batch is never live twice."""
        if self.known(msg_id):
            return None
        final = self.dir("pending") / f"{msg_id}~0{SUFFIX}"
        return durable.write_parquet(final, df, tmp_dir=self.dir("tmp"), fsync=self.settings.fsync)

    def backlog(self, max_age_s: float = 0.5) -> int:
        """Pending messages, cached for max_age_s (producers ask often)."""
        at, count = self._backlog_cache
        now = time.monotonic()
        if now - at > max_age_s:
            count = sum(1 for e in _scan(self.dir("pending")) if _parse(e.name))
            self._backlog_cache = (now, count)
        return count

    def over_backlog(self) -> bool:
        return self.backlog() >= self.settings.max_backlog

    def oldest_ms(self) -> int | None:
        """The time in the id of the oldest message not yet done (pending or claimed): how far
        back this topic's consumers still are. None when there is none."""
        # claimed, pending, claimed: a message moving either way between two of the scans
        # (claimed, released, reaped) is seen by one of them
        seen = [*self.claims(), *self.pending(), *self.claims()]
        return min((id_time_ms(m.id) for m in seen), default=None)

    # -- consuming ---------------------------------------------------------------------------

    def pending(self) -> list[Message]:
        out = []
        for entry in _scan(self.dir("pending")):
            parsed = _parse(entry.name)
            if parsed and parsed.consumer is None:
                out.append(
                    Message(self.name, parsed.id, parsed.attempt, Path(entry.path), parsed.lost)
                )
        out.sort(key=lambda m: m.id)
        return out

    def claim(self, consumer: str) -> Claim | None:
        """Claim the oldest pending message (exclusive); None when nothing is pending."""
        candidates = self.pending()
        if not candidates:
            return None
        # Oldest first. Having lost a race, jump to a random file of the next few, so that
        # many consumers do not all chase the same next file.
        order = list(candidates)
        i = 0
        while i < len(order):
            msg = order[i]
            target = self.dir("claimed") / f"{msg.id}~{msg.tries}~{consumer}{SUFFIX}"
            try:
                os.utime(msg.path)  # the lease starts now (rename keeps the mtime)
                os.rename(msg.path, target)
            except FileNotFoundError:
                rest = order[i + 1 : i + 9]
                random.shuffle(rest)
                order[i + 1 : i + 9] = rest
                i += 1
                continue  # another consumer won it
            return Claim(self.name, msg.id, msg.attempt, target, msg.lost, consumer)
        return None

    def read(self, msg: Message) -> pl.DataFrame:
        try:
            return pl.read_parquet(msg.path)
        except FileNotFoundError as exc:  # polars names no file: name the message's own
            raise FileNotFoundError(errno.ENOENT, "message gone", str(msg.path)) from exc
        except Exception as exc:  # polars/arrow raise many types for a bad file
            raise Unreadable(f"cannot read batch {msg.id} as Parquet: {exc}") from exc

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False if the claim is gone (reaped: the lease was lost)."""
        try:
            os.utime(claim.path)
        except FileNotFoundError:
            return False
        return True

    def ack(self, claim: Claim) -> bool:
        """Acknowledge a processed claim; False if the lease had been lost meanwhile."""
        try:
            os.rename(claim.path, self.dir("done") / f"{claim.id}{SUFFIX}")
        except FileNotFoundError:
            return False
        return True

    def release(self, claim: Claim, reason: str, *, detail: str = "") -> str:
        """Give a claim back after a failed attempt: retry later, or dead-letter when out of
        attempts. Returns "retry", "dead" or "lost" (the lease was lost meanwhile)."""
        attempt = claim.attempt + 1
        if attempt >= self.settings.max_attempts:
            ok = self.dead_letter(
                claim, f"failed {attempt} time(s); last error: {reason}", detail=detail
            )
            return "dead" if ok else "lost"
        return self._back(claim, Message(self.name, claim.id, attempt, claim.path, claim.lost))

    def defer(self, claim: Claim) -> str:
        """Give a claim back untouched: the stage could not finish it for a reason outside the
        batch (a full disk, a volume gone), so it counts as no attempt. "retry" or "lost"."""
        return self._back(claim, claim)

    def _back(self, claim: Claim, counts: Message) -> str:
        try:
            os.rename(claim.path, self.dir("pending") / f"{claim.id}~{counts.tries}{SUFFIX}")
        except FileNotFoundError:
            return "lost"
        return "retry"

    def dead_letter(self, msg: Message, reason: str, *, detail: str = "") -> bool:
        """Move a message to dead/ with a reason file (written first, so a dead batch always
        has its reason). False if the message was gone."""
        info = {
            "topic": self.name,
            "id": msg.id,
            "attempts": msg.attempt + 1,
            "lost_leases": msg.lost,
            "reason": bounded(reason),
            "detail": bounded(detail, MAX_TRACEBACK_CHARS),
            "consumer": getattr(msg, "consumer", None),
            "at": time.time(),
        }
        durable.write_json(
            self.dir("dead") / f"{msg.id}{REASON_SUFFIX}", info, fsync=self.settings.fsync
        )
        try:
            os.rename(msg.path, self.dir("dead") / f"{msg.id}~{msg.tries}{SUFFIX}")
        except FileNotFoundError:
            (self.dir("dead") / f"{msg.id}{REASON_SUFFIX}").unlink(missing_ok=True)
            return False
        return True

    # -- housekeeping ------------------------------------------------------------------------

    def claims(self) -> list[Claim]:
        out = []
        for entry in _scan(self.dir("claimed")):
            parsed = _parse(entry.name)
            if parsed and parsed.consumer:
                out.append(
                    Claim(
                        self.name,
                        parsed.id,
                        parsed.attempt,
                        Path(entry.path),
                        parsed.lost,
                        parsed.consumer,
                    )
                )
        return out

    @staticmethod
    def _touched(path: Path) -> float | None:
        """When a claim's lease was last renewed, on the volume's clock (its ctime). Read
        through an open file: an NFS client revalidates attributes on open (close-to-open),
        where a stat may be answered from an attribute cache up to a minute old."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return os.fstat(fd).st_ctime
        finally:
            os.close(fd)

    def reap(self, now: float | None = None) -> int:
        """Return claims whose lease expired to pending with one more lost lease, or to dead/
        when that makes max_lost_leases; how many were moved."""
        now = self.clock.now() if now is None else now
        moved = 0
        for claim in self.claims():
            touched = self._touched(claim.path)
            if touched is None or now - touched <= self.settings.lease_s:
                continue
            lost = claim.lost + 1
            if lost >= self.settings.max_lost_leases:
                ok = self.dead_letter(
                    Message(self.name, claim.id, claim.attempt, claim.path, lost),
                    f"lost {lost} lease(s): each holder vanished while processing it (last: "
                    f"{claim.consumer}); a batch that kills its worker (out of memory?) is poison",
                )
                moved += ok
                continue
            counts = Message(self.name, claim.id, claim.attempt, claim.path, lost)
            moved += self._back(claim, counts) != "lost"
        return moved

    def quarantine(self) -> int:
        """Move files in pending/ that are no message of this protocol (a name not made by
        make_id, e.g. dropped there by hand) to dead/, each with a reason; how many. Left in
        pending/ they would be seen by no consumer and counted by no one."""
        moved = 0
        for entry in _scan(self.dir("pending")):
            name = entry.name
            if name.startswith(".") or _parse(name) is not None:
                continue
            info = {
                "topic": self.name,
                "id": name,
                "reason": "not a message of this topic: its name is not "
                "'<13-digit ms>-<producer>-<8-digit seq>~<tries>.parquet'",
                "at": time.time(),
            }
            durable.write_json(
                self.dir("dead") / f"{name}{REASON_SUFFIX}", info, fsync=self.settings.fsync
            )
            try:
                os.rename(entry.path, self.dir("dead") / name)
            except FileNotFoundError:
                (self.dir("dead") / f"{name}{REASON_SUFFIX}").unlink(missing_ok=True)
                continue
            moved += 1
        return moved

    def expire_done(self, now: float | None = None) -> int:
        """Delete acknowledged batches older than retention_s."""
        return _delete_older(self.dir("done"), self.settings.retention_s, now)

    def clean_tmp(self, max_age_s: float = 600.0, now: float | None = None) -> int:
        """Delete abandoned partial writes (a writer crashed mid-publish): at once when their
        writer is known dead (same host, pid gone), else once older than max_age_s."""
        removed = 0
        for entry in _scan(self.dir("tmp")):
            if durable.writer_gone(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed + _delete_older(self.dir("tmp"), max_age_s, now)

    def stats(self, now: float | None = None) -> TopicStats:
        # a read: the offset a reaper of this process measured, if any, but no probe written
        # (`fraudpipe check` runs on a read-only mount)
        now = time.time() + self.clock.offset if now is None else now
        claims = self.claims()
        expired = 0
        for c in claims:
            touched = self._touched(c.path)
            expired += touched is not None and now - touched > self.settings.lease_s
        return TopicStats(
            topic=self.name,
            pending=len(self.pending()),
            claimed=len(claims),
            expired=expired,
            done=sum(1 for e in _scan(self.dir("done")) if e.name.endswith(SUFFIX)),
            dead=sum(
                1
                for e in _scan(self.dir("dead"))
                if not e.name.endswith(REASON_SUFFIX) and not e.name.startswith(".")
            ),
        )

    # -- dead letters ------------------------------------------------------------------------

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, with its reason; foreign files (see quarantine) by their name."""
        reasons: dict[str, dict[str, Any]] = {}
        batches: dict[str, tuple[int, Path, bool]] = {}
        for entry in _scan(self.dir("dead")):
            if entry.name.endswith(REASON_SUFFIX):
                try:
                    reasons[entry.name[: -len(REASON_SUFFIX)]] = json.loads(
                        Path(entry.path).read_text()
                    )
                except (OSError, ValueError):
                    continue
            elif parsed := _parse(entry.name):
                batches[parsed.id] = (parsed.attempt, Path(entry.path), False)
            elif not entry.name.startswith("."):
                batches[entry.name] = (0, Path(entry.path), True)
        return [
            DeadLetter(
                self.name,
                msg_id,
                attempt,
                path,
                reasons.get(msg_id, {"reason": "(no reason file)"}),
                foreign,
            )
            for msg_id, (attempt, path, foreign) in sorted(batches.items())
        ]

    def find_dead(self, msg_id: str) -> DeadLetter:
        for dl in self.dead_letters():
            if dl.id == msg_id:
                return dl
        raise KeyError(f"no dead letter {msg_id!r} in topic {self.name!r}")

    def requeue(self, msg_id: str) -> Path:
        """Send a dead letter back to pending with fresh counts (ValueError for a foreign file:
        it would only come back; inspect and purge it)."""
        dl = self.find_dead(msg_id)
        if dl.foreign:
            raise ValueError(
                f"{msg_id!r} in {self.name} is not a message of this protocol; it cannot be "
                "requeued (inspect it, then purge it)"
            )
        assert dl.path is not None
        target = self.dir("pending") / f"{dl.id}~0{SUFFIX}"
        os.rename(dl.path, target)
        (self.dir("dead") / f"{dl.id}{REASON_SUFFIX}").unlink(missing_ok=True)
        return target

    def purge(self, msg_id: str) -> None:
        """Delete a dead letter and its reason for good."""
        dl = self.find_dead(msg_id)
        if dl.path is not None:
            dl.path.unlink(missing_ok=True)
        (self.dir("dead") / f"{dl.id}{REASON_SUFFIX}").unlink(missing_ok=True)


class Queue:
    """All topics under one data dir."""

    def __init__(self, queue_root: Path, settings: QueueSettings) -> None:
        self.root = queue_root
        self.settings = settings
        self.clock = VolumeClock(queue_root / ".clock")
        self._topics: dict[str, Topic] = {}

    def topic(self, name: str) -> Topic:
        if name not in self._topics:
            self._topics[name] = Topic(self.root, name, self.settings, self.clock)
        return self._topics[name]

    def existing(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())
