"""Drift: how far recent traffic has moved from the champion's training window.

The measure is the population stability index (PSI) of the champion's score and of each model
feature. The reference's deciles cut the value range into (at most) 10 bins; with p the
reference's share of a bin and q recent traffic's,

    PSI = sum over bins of (q - p) * ln(q / p)

an empty bin counting as EPSILON. Ties (a binary flag, a feature mostly 0) merge quantile cut
points, so such a column has fewer bins; a constant column has two (up to the constant, above it).
Missing values (NaN) get a bin of their own. Usual reading: < 0.1 stable, 0.1-0.25 moderate
shift, > 0.25 major shift.

Reference: the feature-store rows of the champion's training window (its manifest's
``window.first_ts .. window.last_ts``: training days and holdout), scored with the champion's
ONNX export; only its bin edges and shares are kept, per champion version. Recent traffic: the
feature-store rows of the newest ``train.drift_window_days`` simulated days, scored with the
same champion (results/ may hold scores of other versions, and need not be there at all).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudpipe import schema
from fraudpipe.config import TrainSettings
from fraudpipe.eventlog import day_partitions
from fraudpipe.layout import Layout
from fraudpipe.registry import ModelRegistry
from fraudpipe.scoring import OnnxScorer

BINS = 10
EPSILON = 1e-4
SCORE = "score"
# The reference keeps at most this many rows (an even, seeded sample) to bound memory and time.
MAX_REFERENCE_ROWS = 500_000

FloatArray = npt.NDArray[np.float64]


# -- PSI ---------------------------------------------------------------------------------------


def quantile_edges(reference: npt.ArrayLike, bins: int = BINS) -> FloatArray:
    """Interior cut points of ``bins`` quantile bins of the reference's finite values
    (reference values themselves: a cut never falls between two tied values).

    Duplicate cut points (ties) are merged, so a column of few distinct values gets fewer bins;
    a constant column gets one cut point, no values at all none.
    """
    values = np.asarray(reference, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.empty(0, dtype=np.float64)
    cuts = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf")
    return np.unique(cuts)


def shares(values: npt.ArrayLike, edges: FloatArray) -> FloatArray:
    """Share of values per bin: len(edges) + 1 value bins (a bin holds its upper edge), then
    one for NaN. All zeros for no values."""
    x = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(edges, x, side="left")
    idx[np.isnan(x)] = len(edges) + 1
    counts = np.bincount(idx, minlength=len(edges) + 2)
    return counts / max(x.size, 1)


def psi_of_shares(reference: FloatArray, recent: FloatArray, eps: float = EPSILON) -> float:
    """PSI of two share vectors over the same bins; empty bins count as eps."""
    p = np.maximum(reference, eps)
    q = np.maximum(recent, eps)
    return float(np.sum((q - p) * np.log(q / p)))


def psi(
    reference: npt.ArrayLike, recent: npt.ArrayLike, bins: int = BINS, eps: float = EPSILON
) -> float:
    """Population stability index of recent values against reference values."""
    edges = quantile_edges(reference, bins)
    return psi_of_shares(shares(reference, edges), shares(recent, edges), eps)


@dataclass(frozen=True)
class Profile:
    """The reference side of PSI for named columns: bin edges and shares, not the rows."""

    edges: dict[str, FloatArray]
    shares: dict[str, FloatArray]
    rows: int

    @classmethod
    def of(cls, columns: Mapping[str, npt.ArrayLike], bins: int = BINS) -> Profile:
        edges = {name: quantile_edges(values, bins) for name, values in columns.items()}
        return cls(
            edges=edges,
            shares={name: shares(values, edges[name]) for name, values in columns.items()},
            rows=min((np.asarray(v).size for v in columns.values()), default=0),
        )

    def psi(self, columns: Mapping[str, npt.ArrayLike], eps: float = EPSILON) -> dict[str, float]:
        """PSI per column of the profile, for recent values of the same columns."""
        return {
            name: psi_of_shares(self.shares[name], shares(columns[name], edges), eps)
            for name, edges in self.edges.items()
        }


@dataclass(frozen=True)
class Summary:
    """Score PSI, the largest feature PSI and which feature it is."""

    score_psi: float | None
    max_feature_psi: float | None
    feature: str | None
    feature_psi: dict[str, float]

    @property
    def worst(self) -> float | None:
        """The larger of the score PSI and the largest feature PSI."""
        found = [v for v in (self.score_psi, self.max_feature_psi) if v is not None]
        return max(found) if found else None


def summarize(psis: Mapping[str, float], score: str = SCORE) -> Summary:
    """Split per-column PSI into the score's and the features' (max and its name)."""
    features = {k: float(v) for k, v in psis.items() if k != score}
    top = max(features, key=lambda k: features[k]) if features else None
    return Summary(
        score_psi=float(psis[score]) if score in psis else None,
        max_feature_psi=features[top] if top is not None else None,
        feature=top,
        feature_psi=features,
    )


# -- the champion's reference and recent traffic -----------------------------------------------


def _read_part(part: Path, names: list[str]) -> pl.DataFrame | None:
    """ts and float32 features of one feature-store day; files lacking a feature are skipped."""
    columns = ["ts", *names]
    frames = []
    for path in sorted(part.glob("*.parquet")):
        try:
            if not set(columns) <= set(pl.read_parquet_schema(path)):
                continue
            frame = pl.read_parquet(path, columns=columns)
        except FileNotFoundError:  # pruned by retention while listed
            continue
        frames.append(
            frame.select(pl.col("ts").cast(schema.TS), *(pl.col(n).cast(pl.Float32) for n in names))
        )
    return pl.concat(frames) if frames else None


def read_window(
    store: Path, names: list[str], first: dt.datetime, last: dt.datetime
) -> pl.DataFrame | None:
    """Feature-store rows with first <= ts <= last (naive UTC), reading only their days.

    A day partition holds the batches whose first row falls on that day, so the last partition
    before the window may hold rows inside it: it is read too.
    """
    parts = day_partitions(store)
    before = [i for i, (day, _) in enumerate(parts) if day < first.date()]
    start = before[-1] if before else 0
    frames = [
        f
        for day, part in parts[start:]
        if day <= last.date() and (f := _read_part(part, names)) is not None
    ]
    if not frames:
        return None
    return pl.concat(frames).filter(pl.col("ts").is_between(first, last))


def read_newest(store: Path, names: list[str], days: float) -> pl.DataFrame | None:
    """Feature-store rows of the newest ``days`` simulated days (ts > newest ts - days).

    Partitions are read newest first until one lies wholly before the window (a batch that
    crosses midnight, or several, sits in the partition of its first row).
    """
    frames: list[pl.DataFrame] = []
    since: dt.datetime | None = None
    for _, part in reversed(day_partitions(store)):
        frame = _read_part(part, names)
        if frame is None or not frame.height:
            continue
        newest = frame["ts"].max()
        assert isinstance(newest, dt.datetime)
        if since is None:
            since = newest - dt.timedelta(days=days)
        elif newest <= since:
            break
        frames.append(frame)
    if since is None:
        return None
    return pl.concat(frames).filter(pl.col("ts") > since)


def _naive_utc(text: str) -> dt.datetime:
    ts = dt.datetime.fromisoformat(text)
    return ts if ts.tzinfo is None else ts.astimezone(dt.UTC).replace(tzinfo=None)


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else None


@dataclass
class Report:
    """One drift measurement, as the train stage's status doc carries it."""

    at: float
    reference_version: str | None
    summary: Summary | None = None
    why: str | None = None  # set when not measured
    reference: dict[str, Any] = field(default_factory=dict)
    recent: dict[str, Any] = field(default_factory=dict)

    def as_status(self, limit: float | None) -> dict[str, Any]:
        s = self.summary
        worst = s.worst if s is not None else None
        return {
            "at": self.at,
            "reference_version": self.reference_version,
            "score_psi": s.score_psi if s is not None else None,
            "max_feature_psi": s.max_feature_psi if s is not None else None,
            "feature": s.feature if s is not None else None,
            "feature_psi": s.feature_psi if s is not None else {},
            "psi_max": limit,
            "over_limit": bool(limit is not None and worst is not None and worst > limit),
            "why": self.why,
            "reference": self.reference,
            "recent": self.recent,
        }


@dataclass
class _Reference:
    version: str
    names: list[str]
    scorer: OnnxScorer
    profile: Profile | None
    info: dict[str, Any]
    why: str | None


class DriftMonitor:
    """Measures drift of the current champion; its reference is built once per version."""

    def __init__(self, layout: Layout, cfg: TrainSettings, threads: int = 1) -> None:
        self.layout = layout
        self.cfg = cfg
        self.threads = threads
        self.registry = ModelRegistry(layout.models)
        self._ref: _Reference | None = None

    def _reference(self, version: str) -> _Reference:
        if self._ref is not None and self._ref.version == version:
            return self._ref
        manifest = self.registry.manifest(version)
        names = list(manifest["feature_names"])
        scorer = OnnxScorer(self.registry.onnx_path(version), threads=self.threads)
        window = manifest.get("window") or {}
        first, last = window.get("first_ts"), window.get("last_ts")
        profile, why, info = None, None, {"first_ts": first, "last_ts": last, "rows": 0}
        if not first or not last:
            why = f"the manifest of {version} records no training window"
        else:
            rows = read_window(
                self.layout.feature_store, names, _naive_utc(first), _naive_utc(last)
            )
            n = 0 if rows is None else rows.height
            info["rows"] = n
            if rows is None or n < self.cfg.drift_min_rows:
                why = (
                    f"the training window of {version} ({first} .. {last}) has {n} rows left "
                    f"in the feature store (need drift_min_rows={self.cfg.drift_min_rows}; "
                    "older days are pruned by features.store_retention_days)"
                )
            else:
                if n > MAX_REFERENCE_ROWS:
                    rows = rows.sample(MAX_REFERENCE_ROWS, seed=0)
                profile = Profile.of(self._columns(rows, names, scorer))
        self._ref = _Reference(version, names, scorer, profile, info, why)
        return self._ref

    @staticmethod
    def _columns(
        rows: pl.DataFrame, names: list[str], scorer: OnnxScorer
    ) -> dict[str, npt.NDArray[Any]]:
        X = np.ascontiguousarray(rows.select(names).to_numpy(), dtype=np.float32)
        columns: dict[str, npt.NDArray[Any]] = {SCORE: scorer.score(X)}
        columns.update({name: X[:, i] for i, name in enumerate(names)})
        return columns

    def measure(self) -> Report:
        """Drift of the newest drift_window_days of traffic against the champion's window."""
        now = time.time()
        version = self.registry.current()
        if version is None:
            return Report(now, None, why="no model promoted yet: nothing to compare with")
        ref = self._reference(version)
        report = Report(now, version, reference=ref.info)
        if ref.profile is None:
            report.why = ref.why
            return report
        days = self.cfg.drift_window_days
        recent = read_newest(self.layout.feature_store, ref.names, days)
        n = 0 if recent is None else recent.height
        report.recent = {
            "window_days": days,
            "rows": n,
            "first_ts": _iso(recent["ts"].min()) if recent is not None and n else None,
            "last_ts": _iso(recent["ts"].max()) if recent is not None and n else None,
        }
        if recent is None or n < self.cfg.drift_min_rows:
            report.why = (
                f"not enough recent traffic: {n} feature-store rows in the newest {days:g} "
                f"simulated day(s); need drift_min_rows={self.cfg.drift_min_rows}"
            )
            return report
        report.summary = summarize(ref.profile.psi(self._columns(recent, ref.names, ref.scorer)))
        return report
