"""The dashboard's reading of drift: the train worker's measurement, and whether it means much.

The train stage measures drift (fraudpipe.drift) and reports it in its status file; this module
turns the freshest report against the current champion into the payload's drift fields: the
worst PSI, what has it (the score or a feature), the limit it is held to, and whether the
comparison is still warming up.

Warming up: a row's features look back ``features.lookback`` (the longest window plus the
terminal delay: 37 days by default). Rows within that span of the stream's first day have
shorter histories, so their 30-day counts and risks are small. A champion trained on such rows
makes recent traffic (with full histories) look drifted by construction: the number is not
shown as drift until the champion's training window starts after the lookback.

The stream's first day: the simulator's ``start_date`` (its day 0); for a replay, the first day
of the event log, which is that day while the log spans less than ``gather.log_retention_days``
(pruning can only have removed days once it spans more). Otherwise it is unknown, and so is
the warm-up, and the payload says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fraudpipe.config import Settings
from fraudpipe.drift import SCORE
from fraudpipe.eventlog import day_partitions
from fraudpipe.features import lookback
from fraudpipe.layout import Layout


@dataclass(frozen=True)
class DriftView:
    """The payload's drift fields (see payload.ModelState)."""

    drift: float | None
    feature: str | None
    psi_max: float | None
    warming_up: bool | None
    why: str | None


def read_drift(
    settings: Settings, layout: Layout, version: str | None, workers: list[dict[str, Any]]
) -> DriftView:
    """The freshest drift report of a live train worker against the current champion."""
    limit = settings.train.drift_psi_max

    def unmeasured(why: str) -> DriftView:
        return DriftView(None, None, limit, None, why)

    if version is None:
        return unmeasured("no model promoted yet: drift is measured against the champion's window")
    if not any(w.get("stage") == "train" for w in workers):
        return unmeasured("no live train worker: drift is measured by the train stage")
    docs = [w["drift"] for w in workers if w.get("stage") == "train" and w.get("drift")]
    if not docs:
        return unmeasured("the train worker has not measured drift yet")
    doc = max(docs, key=lambda d: float(d.get("at") or 0.0))
    limit = doc.get("psi_max", limit)  # the limit the train worker applied
    if doc.get("why"):
        return unmeasured(str(doc["why"]))
    if doc.get("reference_version") != version:
        return unmeasured(
            f"drift was last measured against {doc.get('reference_version')}, not the current "
            f"{version}; the train worker measures again shortly"
        )
    named = ((SCORE, doc.get("score_psi")), (doc.get("feature"), doc.get("max_feature_psi")))
    found = [(float(v), str(name)) for name, v in named if name is not None and v is not None]
    if not found:
        return unmeasured("the train worker reported no PSI")
    psi, worst = max(found)
    warming, why = _warm_up(settings, layout, (doc.get("reference") or {}).get("first_ts"))
    if warming:
        return DriftView(None, worst, limit, True, why)
    return DriftView(psi, worst, limit, warming, why)


def _warm_up(settings: Settings, layout: Layout, first_ts: Any) -> tuple[bool | None, str | None]:
    """(warming up, why) for a champion whose training window starts at first_ts."""
    if not isinstance(first_ts, str):
        return None, "the drift report names no training window: its warm-up is unknown"
    start, unknown = stream_start(settings, layout)
    if start is None:
        return None, (
            f"whether the champion's training window had a full feature history is unknown: "
            f"{unknown}"
        )
    span = lookback(settings.features)
    full_from = dt.datetime.combine(start, dt.time()) + span
    window = dt.datetime.fromisoformat(first_ts)
    if window.tzinfo is not None:
        window = window.astimezone(dt.UTC).replace(tzinfo=None)
    if window >= full_from:
        return False, None
    return True, (
        f"warming up: the champion trained from {window:%Y-%m-%d}, but features have their "
        f"full {span.days}-day history only from {full_from:%Y-%m-%d} (the stream began "
        f"{start}); drift is shown once a champion trains on rows from then on"
    )


def stream_start(settings: Settings, layout: Layout) -> tuple[dt.date | None, str]:
    """The stream's first simulated day, or None and why it is unknown."""
    gather = settings.gather
    if gather.source == "simulator":
        return gather.simulator.start_date, ""
    days = [day for day, _ in day_partitions(layout.log / "transactions")]
    if not days:
        return None, "the event log holds no transactions yet"
    if (days[-1] - days[0]).days >= gather.log_retention_days:
        return None, (
            "the event log may no longer reach the replay's first day (it keeps "
            f"gather.log_retention_days={gather.log_retention_days} and spans more)"
        )
    return days[0], ""
