"""An audit of a pipeline run, computed apart from the pipeline: what went in, what came out.

It never trusts fraudpipe's own counters. What went in is the replay file; what came out is
read from the volume (results, the feature store, the queue folders), and held against:

- the file's transaction ids: every one in the results exactly once, nothing else;
- ``fraudpipe features`` over the whole file (the offline command, run as a user would): every
  feature of every row of the feature store equal to it, to the bit;
- a fresh scoring of those offline features by each result row's own model version (its ONNX
  export, as infer runs it): every score equal, every alert decision at that version's
  threshold;
- the dead letters: each one listed with its reason, for the caller to hold against the
  poison it injected; no claim left; no debris in the topics' tmp/.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fraudpipe.config import Settings
from fraudpipe.eventlog import day_partitions
from fraudpipe.layout import RESULTS, TOPICS, Layout
from fraudpipe.queue import Queue
from fraudpipe.registry import ModelRegistry
from fraudpipe.results import ResultsStore, read_all
from tests.conftest import fraudpipe

# How far a score may be from LightGBM's own predict: the scores are float32 (~6e-8 apart near
# 1), and the default scorer computes in float64 as LightGBM does (scoring.py).
SCORE_TOLERANCE = 1e-6


@dataclass
class Report:
    fed: int = 0
    scored_rows: int = 0
    missing: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    features_checked: int = 0
    features_wrong: dict[str, int] = field(default_factory=dict)  # column -> rows that differ
    features_missing: int = 0  # scored rows absent from the feature store
    scores_wrong: int = 0
    alerts_wrong: int = 0
    versions: list[str] = field(default_factory=list)
    dead: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # topic -> (id, reason)
    left: dict[str, int] = field(default_factory=dict)  # "<topic> pending|claimed" -> count
    tmp_debris: list[str] = field(default_factory=list)
    disk_bytes: int = 0

    def problems(self, expected_dead: dict[str, set[str]] | None = None) -> list[str]:
        """Everything wrong, in words; [] when the run kept every promise."""
        out = []
        if self.missing:
            out.append(
                f"{len(self.missing)} fed transactions never scored, e.g. {self.missing[:5]}"
            )
        if self.duplicated:
            out.append(f"{len(self.duplicated)} transactions scored more than once")
        if self.unknown:
            out.append(f"{len(self.unknown)} scored ids were never fed, e.g. {self.unknown[:5]}")
        if self.features_wrong:
            out.append(f"rows with features unlike the offline ones: {self.features_wrong}")
        if self.features_missing:
            out.append(f"{self.features_missing} scored rows are not in the feature store")
        if self.scores_wrong or self.alerts_wrong:
            out.append(f"{self.scores_wrong} scores, {self.alerts_wrong} alerts differ")
        if not self.features_checked:
            out.append("no feature row was checked")
        want = expected_dead or {}
        for topic in sorted(set(self.dead) | set(want)):
            got = {i for i, _ in self.dead.get(topic, [])}
            if got != want.get(topic, set()):
                why = dict(self.dead.get(topic, []))
                out.append(f"{topic}: dead letters {why} (expected {sorted(want.get(topic, []))})")
        if self.left:
            out.append(f"left in the queue: {self.left}")
        if self.tmp_debris:
            out.append(f"debris in tmp/: {self.tmp_debris[:5]}")
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "fed": self.fed,
            "scored_rows": self.scored_rows,
            "missing": len(self.missing),
            "duplicated": len(self.duplicated),
            "unknown": len(self.unknown),
            "features_checked": self.features_checked,
            "features_wrong": self.features_wrong,
            "features_missing": self.features_missing,
            "scores_wrong": self.scores_wrong,
            "alerts_wrong": self.alerts_wrong,
            "model_versions": len(self.versions),
            "dead": {t: len(v) for t, v in self.dead.items()},
            "left": self.left,
            "tmp_debris": len(self.tmp_debris),
            "disk_mb": round(self.disk_bytes / 2**20, 1),
        }


def offline_features(replay: Path, config: Path, out: Path) -> pl.DataFrame:
    """`fraudpipe features` over the whole replay file, as a user runs it."""
    fraudpipe(
        "features", "--input", str(replay), "--output", str(out), "--config", str(config),
        timeout=600, check=True,
    )  # fmt: skip
    return pl.read_parquet(out)


def feature_store(layout: Layout) -> pl.DataFrame | None:
    frames = [
        pl.read_parquet(p)
        for _, part in day_partitions(layout.feature_store)
        for p in sorted(part.glob("*.parquet"))
    ]
    return pl.concat(frames, how="vertical_relaxed") if frames else None


def disk_usage(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


def audit(settings: Settings, offline: pl.DataFrame) -> Report:
    """Hold the run on settings.data_dir against the offline features of what was fed."""
    layout = Layout(settings.data_dir)
    queue = Queue(layout.queue, settings.queue)
    report = Report(disk_bytes=disk_usage(layout.root))
    fed = offline["transaction_id"]
    report.fed = fed.len()

    results = read_all(ResultsStore(layout.results), queue.topic(RESULTS))
    got = results if results is not None else pl.DataFrame(schema={"transaction_id": pl.Int64})
    ids = got["transaction_id"]
    report.scored_rows = ids.len()
    report.duplicated = ids.filter(ids.is_duplicated()).unique().sort().to_list()
    report.missing = fed.filter(~fed.is_in(ids.implode())).sort().to_list()
    report.unknown = ids.filter(~ids.is_in(fed.implode())).unique().sort().to_list()

    names = [c for c in offline.columns if c not in ("is_fraud", "label_ts", "created_at")]
    store = feature_store(layout)
    if store is not None:
        both = store.select(names).join(offline.select(names), on="transaction_id", suffix="~")
        report.features_checked = both.height
        for col in names:
            if col == "transaction_id":
                continue
            a, b = both[col], both[f"{col}~"]
            same = (a == b) | (a.is_nan() & b.is_nan()) if a.dtype.is_float() else a == b
            wrong = both.height - int(same.fill_null(False).sum())
            if wrong:
                report.features_wrong[col] = wrong
        report.features_missing = ids.filter(~ids.is_in(store["transaction_id"].implode())).len()

    if results is not None:
        registry = ModelRegistry(layout.models)
        report.versions = sorted(results["model_version"].unique().to_list())
        for version in report.versions:
            manifest = registry.manifest(version)
            rows = results.filter(pl.col("model_version") == version)
            X = (
                rows.select("transaction_id")
                .join(offline, on="transaction_id", how="left", maintain_order="left")
                .select(manifest["feature_names"])
                .to_numpy()
                .astype(np.float32)
            )
            # LightGBM's own predict, not the scorer infer uses: scores equal within
            # SCORE_TOLERANCE, alerts equal but where a score lies that close to the threshold
            expected = registry.load_booster(version).predict(X.astype(np.float64))
            got = rows["score"].to_numpy().astype(np.float64)
            report.scores_wrong += int((np.abs(got - expected) > SCORE_TOLERANCE).sum())
            configured = settings.infer.threshold
            threshold = configured if configured is not None else manifest["threshold"]
            clear = np.abs(expected - threshold) > SCORE_TOLERANCE
            report.alerts_wrong += int(
                ((expected >= threshold) != rows["is_alert"].to_numpy())[clear].sum()
            )

    for topic in TOPICS:
        t = queue.topic(topic)
        dead = t.dead_letters()
        if dead:
            report.dead[topic] = [(d.id, str(d.reason.get("reason"))) for d in dead]
        st = t.stats()
        # scored batches wait in inference-results (for live readers) before results/: done
        for state in ("claimed",) if topic == RESULTS else ("pending", "claimed"):
            if getattr(st, state):
                report.left[f"{topic} {state}"] = getattr(st, state)
        report.tmp_debris += [p.name for p in t.dir("tmp").iterdir()]
    return report
