"""Is the pipeline flowing end to end right now? (`fraudpipe check`, what `helm test` runs.)

The check passes once a batch of transactions *generated after it started* has been scored:
that proves gather, preprocess, a promoted model and infer all work now, not that they once
did. It only reads the shared volume (the chart mounts it read-only). When time runs out it
says what stands still: stages without a live worker, no promoted model, backlogs, dead letters.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from fraudpipe.config import STAGES, Settings
from fraudpipe.layout import TOPICS, Layout
from fraudpipe.queue import Topic
from fraudpipe.registry import ModelRegistry
from fraudpipe.results import recent_result_files
from fraudpipe.worker import STATUS_STALE_S, read_status


@dataclass
class FlowReport:
    ok: bool
    waited_s: float
    batch: str | None = None
    rows: int = 0
    model_version: str | None = None
    latency_ms_p50: float | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fresh_scored_batch(layout: Layout, since: float) -> tuple[Path, pl.DataFrame] | None:
    """A scored batch holding transactions generated at or after `since`, if there is one."""
    for path in recent_result_files(layout, since):
        try:
            df = pl.read_parquet(path, columns=["created_at", "model_version", "latency_ms"])
        except (OSError, pl.exceptions.PolarsError):
            continue  # moved between listing and reading
        fresh = df.filter(pl.col("created_at") >= since)
        if fresh.height:
            return path, fresh
    return None


CONSUMER = {"raw-transactions": "preprocess", "features-ready": "infer"}


def diagnose(layout: Layout, settings: Settings) -> list[str]:
    """What stands still, in words an operator can act on."""
    problems = []
    workers = read_status(layout.status)
    for stage in STAGES:
        if not any(w.get("stage") == stage for w in workers):
            problems.append(
                f"no live {stage} worker (no heartbeat in status/ for {STATUS_STALE_S:.0f} s)"
            )
    for w in workers:
        if w.get("blocked"):
            problems.append(f"{w['stage']} on {w.get('host')} is held up: {w['blocked']}")
        refused = w.get("model_refused")
        if isinstance(refused, dict):
            problems.append(
                f"infer on {w.get('host')} refuses model {refused.get('version')} "
                f"({refused.get('reason')}); it scores with {w.get('model_version') or 'none'}"
            )
    if ModelRegistry(layout.models).current() is None:
        last = next((w.get("last_training") for w in workers if w.get("stage") == "train"), None)
        why = (
            f": last training {last.get('status')}: {last.get('reason')}"
            if isinstance(last, dict)
            else ""
        )
        problems.append("no model promoted yet, so infer waits" + why)
    now = time.time()
    for name in TOPICS:
        if not layout.topic(name).is_dir():
            problems.append(f"topic {name} does not exist yet")
            continue
        topic = Topic(layout.queue, name, settings.queue)
        st = topic.stats()
        if st.dead:
            problems.append(f"{name}: {st.dead} dead letter(s) (fraudpipe queue ls {name})")
        consumer = CONSUMER.get(name)
        if consumer and st.pending:
            oldest = _oldest_mtime(topic)
            waited = f", the oldest waiting {now - oldest:.0f} s" if oldest is not None else ""
            bound = (
                " (at the bound: producers wait)"
                if st.pending >= settings.queue.max_backlog
                else ""
            )
            problems.append(
                f"{name}: {st.pending} of at most {settings.queue.max_backlog} batches pending"
                f"{bound}{waited}, {st.claimed} in hand: {consumer} is behind"
            )
    latest = _latest_scored(layout)
    if latest is not None:
        age, p50 = latest
        problems.append(
            f"the newest scored batch was written {age:.0f} s ago, with median end-to-end "
            f"latency {p50 / 1000:.1f} s"
        )
    return problems


def _oldest_mtime(topic: Topic) -> float | None:
    times = []
    for msg in topic.pending():
        with contextlib.suppress(FileNotFoundError):
            times.append(msg.path.stat().st_mtime)
    return min(times, default=None)


def _latest_scored(layout: Layout) -> tuple[float, float] | None:
    """(age in s, median latency in ms) of the newest scored batch of the last hour, if any."""
    now = time.time()
    newest: tuple[float, Path] | None = None
    for path in recent_result_files(layout, now - 3600):
        with contextlib.suppress(FileNotFoundError):
            mtime = path.stat().st_mtime
            if newest is None or mtime > newest[0]:
                newest = (mtime, path)
    if newest is None:
        return None
    try:
        latency = pl.read_parquet(newest[1], columns=["latency_ms"])["latency_ms"].median()
    except (OSError, pl.exceptions.PolarsError):
        return None
    if not isinstance(latency, int | float):
        return None
    return now - newest[0], float(latency)


def wait_for_flow(
    settings: Settings,
    timeout_s: float,
    poll_s: float = 1.0,
    on_wait: Callable[[float, list[str]], None] | None = None,
) -> FlowReport:
    """Poll until transactions generated after the call are scored, or timeout_s passes."""
    layout = Layout(settings.data_dir)
    started = time.time()
    next_report = started + 10.0
    while True:
        found = fresh_scored_batch(layout, started)
        now = time.time()
        if found is not None:
            path, df = found
            return FlowReport(
                ok=True,
                waited_s=round(now - started, 1),
                batch=path.stem.split("~")[0],
                rows=df.height,
                model_version=df["model_version"][0],
                latency_ms_p50=round(float(df["latency_ms"].median()), 1),  # type: ignore[arg-type]
            )
        if now - started >= timeout_s:
            return FlowReport(
                ok=False, waited_s=round(now - started, 1), problems=diagnose(layout, settings)
            )
        if on_wait is not None and now >= next_report:
            next_report = now + 10.0
            on_wait(now - started, diagnose(layout, settings))
        time.sleep(poll_s)
