"""Waking an idle worker: short adaptive polling everywhere, inotify where it works.

NFS clients get no inotify events for files other clients create, so polling is the protocol
and watchdog only an optimisation: with watch=auto it is used on local filesystems only.
"""

from __future__ import annotations

import threading
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


class Waker:
    def __init__(self, dirs: list[Path], watch: str, log: EventLogger) -> None:
        self._event = threading.Event()
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

            event = self._event

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, ev: FileSystemEvent) -> None:
                    event.set()

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
        self._event.set()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
