"""Operator requests, dropped as files under control/ on the shared volume.

Any process that can write the volume (the dashboard, a person with `kubectl exec`) can ask;
the stage that owns the behaviour reads the file. Writes are atomic, so a reader sees the old
request or the new one, never half of one.

- ``control/generation.json``: gather's pause switch and a rate that overrides
  ``gather.rate`` (null: the configured rate).
- ``control/train-now``: train runs a training at its next step, then deletes the file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from fraudpipe import durable
from fraudpipe.layout import Layout

GENERATION = "generation.json"
TRAIN_NOW = "train-now"


@dataclass(frozen=True)
class Generation:
    paused: bool = False
    rate: float | None = None


class GenerationControl:
    """gather's view of control/generation.json, re-read when the file changes."""

    def __init__(self, layout: Layout) -> None:
        self.path = layout.control / GENERATION
        self._seen: tuple[int, int] | None = None
        self.current = Generation()

    def poll(self) -> Generation:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self.current = None, Generation()
            return self.current
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._seen:
            self._seen = stamp
            self.current = read_generation(self.path)
        return self.current


def read_generation(path: Path) -> Generation:
    """The request in the file; a missing or unreadable file is no request."""
    try:
        doc = json.loads(path.read_text())
        rate = doc.get("rate")
        return Generation(
            paused=bool(doc.get("paused", False)),
            rate=float(rate) if rate is not None and float(rate) > 0 else None,
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return Generation()


def set_generation(
    layout: Layout, *, paused: bool | None = None, rate: float | None = None
) -> Generation:
    """Change what was asked (None: keep that part), atomically; the new request."""
    path = layout.control / GENERATION
    old = read_generation(path)
    new = Generation(
        paused=old.paused if paused is None else paused,
        rate=old.rate if rate is None else rate,
    )
    durable.write_json(
        path, {"paused": new.paused, "rate": new.rate, "at": time.time()}, fsync=True
    )
    return new


def request_training(layout: Layout) -> None:
    layout.control.mkdir(parents=True, exist_ok=True)
    (layout.control / TRAIN_NOW).touch()
