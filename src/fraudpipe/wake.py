"""Waking an idle worker: short adaptive polling everywhere, inotify where it works.

NFS clients get no inotify events for files other clients create, so polling is the protocol
and watchdog only an optimisation: with watch=auto it is used on local filesystems only.

Both the wake-up and the stop flag may be raised from a signal handler. They are a pipe, not
a threading.Event: Event.set takes a lock, and a handler that runs while its own thread holds
that lock (in the middle of an earlier set, or of wait) waits for itself forever. A pod killed
with its node's supervisor gets SIGTERM once per thread of the parent (Linux re-parents the
orphan, and sends PR_SET_PDEATHSIG, as each thread exits), so the handler runs nested.
"""

from __future__ import annotations

import contextlib
import os
import select
from pathlib import Path
from typing import Any

from fraudpipe.logs import EventLogger

_REMOTE_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "ceph", "glusterfs", "9p"}


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding path, from /proc/mounts (None if unknown)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = path.resolve()
    best: tuple[int, str] | None = None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == Path(mount_point) or Path(mount_point) in target.parents
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), fields[2])
    return best[1] if best else None


class _Pipe:
    """A wake-up raised by one write and waited on by select: no lock anywhere."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def raise_(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: it is raised already
            os.write(self._w, b"!")

    def wait(self, timeout: float) -> bool:
        """Whether raised within timeout (select is resumed after a signal's handler ran)."""
        readable, _, _ = select.select([self._r], [], [], max(0.0, timeout))
        return bool(readable)

    def lower(self) -> None:
        with contextlib.suppress(BlockingIOError):  # empty now
            while os.read(self._r, 4096):
                pass


class StopFlag:
    """Like threading.Event (set, is_set, wait), but set may be called from a signal handler."""

    def __init__(self) -> None:
        self._set = False
        self._pipe = _Pipe()

    def set(self) -> None:
        self._set = True
        self._pipe.raise_()  # never lowered: every later wait returns at once

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        return self._set or self._pipe.wait(timeout) or self._set


class Waker:
    def __init__(self, dirs: list[Path], watch: str, log: EventLogger) -> None:
        self._pipe = _Pipe()
        self._observer: Any = None
        self.active = False
        if not dirs or watch == "off":
            return
        if watch == "auto" and any(filesystem_type(d) in _REMOTE_FS for d in dirs):
            log.info("wake.polling_only", reason="network filesystem: no cross-client inotify")
            return
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer

            pipe = self._pipe

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, ev: FileSystemEvent) -> None:
                    pipe.raise_()

            observer = Observer()
            for d in dirs:
                observer.schedule(_Handler(), str(d), recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer
            self.active = True
        except Exception as exc:  # inotify limits, unsupported fs: polling still works
            log.warning("wake.watch_unavailable", error=str(exc))

    def wake(self) -> None:
        self._pipe.raise_()

    def wait(self, timeout: float) -> None:
        self._pipe.wait(timeout)
        self._pipe.lower()

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
