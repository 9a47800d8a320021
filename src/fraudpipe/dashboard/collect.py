"""Build the dashboard's snapshot from what the pipeline itself recorded.

Sources, all on the shared volume (plus the Kubernetes metrics API in a cluster):
- status/*.json heartbeats: live workers, their device and rows/s;
- queue folders: pending/claimed/dead per topic;
- scored batches (queue/inference-results, then results/): end-to-end rows/s, latency
  percentiles, alerts with their reason codes, counted from the rows themselves;
- the labels in the event log (state/log/labels), as they arrive: precision and recall of the
  alerts whose outcome is known, and the live ROC AUC and AP of the champion and of a version
  in shadow (read by dashboard.quality);
- models/: the current version, its manifest and promotion;
- the train worker's status file: drift of recent traffic against the champion's window
  (read by dashboard.drift);
- control/generation.json and gather's heartbeat: when generation last resumed, so latency
  can say which of its rows waited through a stop.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fraudpipe.config import STAGES, Settings
from fraudpipe.control import GENERATION, read_generation
from fraudpipe.dashboard import payload as p
from fraudpipe.dashboard.cluster import ClusterView
from fraudpipe.dashboard.drift import read_drift
from fraudpipe.dashboard.quality import SCHEMA as LABELED
from fraudpipe.dashboard.quality import LiveQuality
from fraudpipe.layout import FEATURES, RAW, TOPICS, Layout
from fraudpipe.queue import SUFFIX, Topic
from fraudpipe.registry import ModelRegistry, RegistryError
from fraudpipe.results import recent_result_files
from fraudpipe.worker import STATUS_STALE_S, read_status

# Rates (rows/s, alerts/s) cover the rows scored in the last RATE_WINDOW_S seconds; latency
# percentiles and the alert rate the last WINDOW_S.
RATE_WINDOW_S = 10.0
WINDOW_S = 30.0
# Precision/recall cover the labels that arrived in the last QUALITY_WINDOW_S seconds.
QUALITY_WINDOW_S = 300.0
# Scored rows wait this long for their label, labels this long for their row (then dropped).
MATCH_TTL_S = 900.0
# Who consumes each topic (for "falls behind" warnings).
CONSUMER = {RAW: "preprocess", FEATURES: "infer"}
# The topics a transaction waits in between entry and score.
HOT_PATH = (RAW, FEATURES)
# "falls behind" is raised at BEHIND_AT x queue.max_backlog pending batches and cleared only
# below CAUGHT_UP_BELOW x it (hysteresis: a backlog at the bound does not flip it each second).
BEHIND_AT, CAUGHT_UP_BELOW = 0.9, 0.5
# Latency notices: a warning from dashboard.latency_warn_s, critical from LATENCY_CRITICAL x
# it; each is cleared only below LATENCY_CLEAR_BELOW x its own threshold.
LATENCY_CRITICAL, LATENCY_CLEAR_BELOW = 3.0, 0.5
_RESULT_COLUMNS = [
    "transaction_id",
    "ts",
    "customer_id",
    "terminal_id",
    "amount",
    "score",
    "is_alert",
    "model_version",
    "scored_at",
    "latency_ms",
]
_OPTIONAL_COLUMNS = ["reasons", "shadow_score", "shadow_version"]  # not in older files


@dataclass
class _Scored:
    at: float  # when it was read
    scored_at: np.ndarray
    latency_ms: np.ndarray
    alerts: pl.DataFrame


class _FileTail:
    """New Parquet files under some folders, each read once (tolerates files moving away)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def fresh(self, paths: list[Path], now: float) -> list[Path]:
        out = [path for path in paths if path.stem.split("~")[0] not in self.seen]
        for path in out:
            self.seen[path.stem.split("~")[0]] = now
        for key in [k for k, t in self.seen.items() if now - t > MATCH_TTL_S]:
            del self.seen[key]
        return out


class Collector:
    def __init__(self, settings: Settings, cluster: ClusterView) -> None:
        self.settings = settings
        self.layout = Layout(settings.data_dir)
        self.registry = ModelRegistry(self.layout.models)
        self.cluster = cluster
        self.started = time.time()
        self._results = _FileTail()
        self._labels = _FileTail()
        self._scored: deque[_Scored] = deque()
        # Outcomes waiting for their other half: scored rows without label, labels without row.
        self._unlabeled = pl.DataFrame(
            schema={
                "transaction_id": pl.Int64,
                "is_alert": pl.Boolean,
                **{k: v for k, v in LABELED.items() if k != "is_fraud"},
                "t": pl.Float64,
            }
        )
        self._unmatched = pl.DataFrame(
            schema={"transaction_id": pl.Int64, "is_fraud": pl.Int8, "t": pl.Float64}
        )
        self._outcomes: deque[tuple[float, int, int, int]] = deque()  # (t, tp, fp, fn)
        d = settings.dashboard
        self.quality = LiveQuality(d.live_quality_rows, d.live_quality_min_frauds)
        self._pending_history: deque[tuple[float, dict[str, int]]] = deque()
        self._held: set[str] = set()  # notices raised and not yet cleared (see _raised)
        self.history: deque[p.HistoryPoint] = deque()
        self._model_cache: p.ModelState | None = None
        self._paused: bool | None = None  # generation's state at the last snapshot
        self._resumed_at: float | None = None  # when the dashboard saw it resume

    # -- reading what happened -----------------------------------------------------------------

    def _read_results(self, now: float) -> pl.DataFrame | None:
        since = now - WINDOW_S if self._results.seen else self.started - WINDOW_S
        frames = []
        for path in self._results.fresh(list(recent_result_files(self.layout, since)), now):
            try:
                frames.append(pl.read_parquet(path, columns=self._columns(path)))
            except (OSError, pl.exceptions.PolarsError):
                continue  # moved to results/ meanwhile; it is read from there next time
        if not frames:
            return None
        df = pl.concat(frames, how="diagonal_relaxed")
        alerts = df.filter(pl.col("is_alert"))
        self._scored.append(
            _Scored(now, df["scored_at"].to_numpy(), df["latency_ms"].to_numpy(), alerts)
        )
        return df

    @staticmethod
    def _columns(path: Path) -> list[str]:
        names = pl.read_parquet_schema(path)
        return _RESULT_COLUMNS + [c for c in _OPTIONAL_COLUMNS if c in names]

    def _read_labels(self, now: float) -> pl.DataFrame | None:
        root = self.layout.log / "labels"
        if not root.is_dir():
            return None
        days = sorted(root.iterdir())[-2:]  # labels arrive in the newest day partitions
        since = now - WINDOW_S if self._labels.seen else self.started - WINDOW_S
        candidates = [f for d in days for f in d.glob(f"*{SUFFIX}") if _mtime(f) >= since]
        frames = []
        for path in self._labels.fresh(candidates, now):
            try:
                frames.append(pl.read_parquet(path, columns=["transaction_id", "is_fraud"]))
            except (OSError, pl.exceptions.PolarsError):
                continue
        return pl.concat(frames) if frames else None

    def _match(self, scored: pl.DataFrame | None, labels: pl.DataFrame | None, now: float) -> None:
        """Join arrived labels with scored rows (either may come first) into outcomes."""
        if scored is not None:
            kept = self._unlabeled.columns
            absent = [c for c in ("shadow_score", "shadow_version") if c not in scored.columns]
            scored = scored.with_columns(
                pl.lit(None, dtype=LABELED[c]).alias(c) for c in absent
            ).with_columns(t=pl.lit(now))
            self._unlabeled = pl.concat(
                [self._unlabeled, scored.select(kept).cast(self._unlabeled.schema)]
            )
        if labels is not None:
            self._unmatched = pl.concat(
                [self._unmatched, labels.with_columns(t=pl.lit(now))], how="vertical_relaxed"
            )
        if self._unlabeled.height and self._unmatched.height:
            both = self._unlabeled.join(
                self._unmatched.select("transaction_id", "is_fraud"), on="transaction_id"
            )
            if both.height:
                self.quality.add(both)
                fraud = both["is_fraud"] == 1
                alert = both["is_alert"]
                self._outcomes.append(
                    (
                        now,
                        int((fraud & alert).sum()),
                        int((~fraud & alert).sum()),
                        int((fraud & ~alert).sum()),
                    )
                )
                done = both["transaction_id"]
                self._unlabeled = self._unlabeled.filter(~pl.col("transaction_id").is_in(done))
                self._unmatched = self._unmatched.filter(~pl.col("transaction_id").is_in(done))
        self._unlabeled = self._unlabeled.filter(pl.col("t") > now - MATCH_TTL_S)
        self._unmatched = self._unmatched.filter(pl.col("t") > now - MATCH_TTL_S)

    # -- the snapshot ----------------------------------------------------------------------------

    def snapshot(self) -> p.Snapshot:
        now = time.time()
        self._match(self._read_results(now), self._read_labels(now), now)
        while self._scored and self._scored[0].at < now - WINDOW_S * 2:
            self._scored.popleft()
        while self._outcomes and self._outcomes[0][0] < now - QUALITY_WINDOW_S:
            self._outcomes.popleft()

        workers = read_status(self.layout.status, now)
        pods = self.cluster.pod_metrics()
        backlog = self._backlog()
        at, lat = self._recent(now)  # the rows scored in the last WINDOW_S, read once
        throughput = self._throughput(workers, at, now)
        generation = read_generation(self.layout.control / GENERATION)
        latency = self._latency(at, lat, self._resumed(workers, generation.paused))
        detection = self._detection(at, now)
        model = self._model(workers)
        quality = self._quality(model)
        snap = p.Snapshot(
            at=now,
            throughput=throughput,
            latency=latency,
            backlog=backlog,
            warnings=[
                *self._warnings(workers, backlog, throughput, latency, generation.paused, now),
                *self._quality_notices(quality, model),
            ],
            detection=detection,
            model=model,
            quality=quality,
            workers=[self._worker(w, pods.by_pod, now) for w in workers],
            cluster=p.Cluster(mode=self.cluster.mode, metrics_api=pods.status, detail=pods.detail),
            controls=p.Controls(
                enabled=self.settings.dashboard.token is not None,
                scale_available=self.cluster.scale_why is None,
                scale_why=self.cluster.scale_why,
                generation_paused=generation.paused,
                generation_rate=generation.rate,
                configured_rate=self.settings.gather.rate,
            ),
        )
        self._remember(snap)
        return snap

    def _window(self, now: float) -> float:
        """Seconds the rate window really covers (less right after the dashboard started)."""
        return max(1.0, min(RATE_WINDOW_S, now - self.started))

    def _recent(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """scored_at and latency_ms of the rows scored in the last WINDOW_S seconds."""
        if not self._scored:
            return np.empty(0), np.empty(0)
        at = np.concatenate([s.scored_at for s in self._scored])
        lat = np.concatenate([s.latency_ms for s in self._scored])
        keep = at >= now - WINDOW_S
        return at[keep], lat[keep]

    def _throughput(
        self, workers: list[dict[str, Any]], at: np.ndarray, now: float
    ) -> p.Throughput:
        stages = []
        for stage in STAGES:
            mine = [w for w in workers if w.get("stage") == stage]
            rate = float(sum(w.get("rows_per_s", 0.0) for w in mine))
            stages.append(p.StageThroughput(stage=stage, rows_per_s=rate, workers=len(mine)))
        scored = int((at >= now - RATE_WINDOW_S).sum())
        return p.Throughput(stages=stages, end_to_end_rows_per_s=scored / self._window(now))

    def _resumed(self, workers: list[dict[str, Any]], paused: bool) -> float | None:
        """When generation last resumed: gather's start (a restart resumes the stream where
        it stopped) or the dashboard's resume (seen as paused, then not), whichever is later.
        Rows that entered before it and are scored after it waited through the stop."""
        if self._paused and not paused:
            self._resumed_at = _mtime(self.layout.control / GENERATION) or time.time()
        self._paused = paused
        starts = [
            float(w["started_at"])
            for w in workers
            if w.get("stage") == "gather" and isinstance(w.get("started_at"), int | float)
        ]
        found = [t for t in (*starts, self._resumed_at) if t is not None]
        return max(found) if found else None

    def _latency(self, at: np.ndarray, lat: np.ndarray, resumed_at: float | None) -> p.Latency:
        """Percentiles over every row of the window, including those that waited through a
        stop (entered before the resume, scored after it): leaving them out would hide a wait
        they really had; they are counted instead. Gather stamps a batch's rows as arriving
        evenly over the batch interval before it publishes, so its first batch after a resume
        reaches back that far: only rows older than that came before the stop."""
        before = 0
        if resumed_at is not None:
            entered = at - lat / 1000
            cut = resumed_at - self.settings.gather.batch_interval_s
            before = int(((entered < cut) & (at >= resumed_at)).sum())
        if not lat.size:
            return p.Latency(
                window_s=WINDOW_S,
                rows=0,
                p50_ms=None,
                p95_ms=None,
                p99_ms=None,
                resumed_at=resumed_at,
                before_resume=0,
            )
        p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
        return p.Latency(
            window_s=WINDOW_S,
            rows=int(lat.size),
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            resumed_at=resumed_at,
            before_resume=before,
        )

    def _detection(self, at: np.ndarray, now: float) -> p.Detection:
        alerts = [s.alerts for s in self._scored if s.alerts.height]
        recent = (
            pl.concat(alerts, how="diagonal_relaxed").filter(pl.col("scored_at") >= now - WINDOW_S)
            if alerts
            else None
        )
        n_alerts = 0 if recent is None else recent.height
        n_rate = 0 if recent is None else int((recent["scored_at"] >= now - RATE_WINDOW_S).sum())
        newest = (
            []
            if recent is None
            else recent.sort(["ts", "transaction_id"], descending=True)
            .head(self.settings.dashboard.recent_alerts)
            .to_dicts()
        )
        tp = sum(o[1] for o in self._outcomes)
        fp = sum(o[2] for o in self._outcomes)
        fn = sum(o[3] for o in self._outcomes)
        why = None
        if not self._outcomes:
            why = (
                "no label has arrived yet for a transaction scored while the dashboard ran "
                f"(labels follow {self.settings.gather.label_delay_days:g} simulated days later)"
            )
        return p.Detection(
            window_s=WINDOW_S,
            rate_window_s=RATE_WINDOW_S,
            quality_window_s=QUALITY_WINDOW_S,
            alerts_per_s=n_rate / self._window(now),
            alert_rate=n_alerts / at.size if at.size else None,
            recent_alerts=[_alert(a) for a in newest],
            labeled_alerts=tp + fp,
            labeled_frauds=tp + fn,
            precision=tp / (tp + fp) if tp + fp else None,
            recall=tp / (tp + fn) if tp + fn else None,
            quality_why=why or (None if tp + fp and tp + fn else "no labeled alert or fraud yet"),
        )

    def _backlog(self) -> list[p.TopicBacklog]:
        out = []
        for name in TOPICS:
            if not self.layout.topic(name).is_dir():
                out.append(p.TopicBacklog(topic=name, pending=0, claimed=0, dead=0))
                continue
            st = Topic(self.layout.queue, name, self.settings.queue).stats()
            out.append(
                p.TopicBacklog(topic=name, pending=st.pending, claimed=st.claimed, dead=st.dead)
            )
        return out

    def _warnings(
        self,
        workers: list[dict[str, Any]],
        backlog: list[p.TopicBacklog],
        throughput: p.Throughput,
        latency: p.Latency,
        paused: bool,
        now: float,
    ) -> list[p.Notice]:
        """Every condition an operator must act on, each as one notice: the page shows "all
        stages keeping up" only when this is empty."""
        return [
            *self._stage_notices(workers, throughput, paused, now),
            *self._backlog_notices(backlog, now),
            *self._latency_notices(latency, backlog),
        ]

    def _raised(self, key: str, value: float, raise_at: float, clear_below: float) -> bool:
        """Whether notice `key` holds: raised at raise_at, cleared only below clear_below, so a
        value hovering at a bound does not flip it every second."""
        held = value >= raise_at or (key in self._held and value >= clear_below)
        if held:
            self._held.add(key)
        else:
            self._held.discard(key)
        return held

    def _stage_notices(
        self, workers: list[dict[str, Any]], throughput: p.Throughput, paused: bool, now: float
    ) -> list[p.Notice]:
        out = []
        live = {w.get("stage") for w in workers}
        finished = any(w.get("stage") == "gather" and w.get("finished") for w in workers)
        for stage in STAGES:
            if stage not in live:
                out.append(
                    p.Notice(
                        level="critical",
                        message=f"{stage}: no live worker (no heartbeat for "
                        f"{STATUS_STALE_S:.0f} s)",
                    )
                )
        for w in workers:  # what a live worker itself says holds it up
            if w.get("blocked"):
                out.append(
                    p.Notice(
                        level="critical",
                        message=f"{w['stage']} on {w.get('host')} is held up by the volume: "
                        f"{w['blocked']} (it retries; nothing is lost)",
                    )
                )
            refused = w.get("model_refused")
            if isinstance(refused, dict):
                out.append(
                    p.Notice(
                        level="critical",
                        message=f"infer on {w.get('host')} refuses model "
                        f"{refused.get('version')}: {refused.get('reason')}; it scores with "
                        f"{w.get('model_version') or 'no model yet'}",
                    )
                )
        if paused:
            out.append(p.Notice(level="warning", message="generation is paused (dashboard)"))
        if self.registry.current() is None:
            out.append(p.Notice(level="warning", message="no model promoted yet: infer waits"))
        elif (
            throughput.end_to_end_rows_per_s == 0
            and not paused
            and not finished
            and now - self.started >= RATE_WINDOW_S
        ):
            out.append(
                p.Notice(
                    level="critical",
                    message=f"stalled: nothing scored in the last {RATE_WINDOW_S:.0f} s",
                )
            )
        return out

    def _backlog_notices(self, backlog: list[p.TopicBacklog], now: float) -> list[p.Notice]:
        out = []
        bound = self.settings.queue.max_backlog
        pending = {b.topic: b.pending for b in backlog}
        self._pending_history.append((now, pending))
        while self._pending_history and self._pending_history[0][0] < now - WINDOW_S:
            self._pending_history.popleft()
        then = self._pending_history[0][1]
        for b in backlog:
            consumer = CONSUMER.get(b.topic)
            if b.dead:
                out.append(
                    p.Notice(
                        level="warning",
                        message=f"{b.topic}: {b.dead} dead letter(s) "
                        f"(fraudpipe queue ls {b.topic})",
                    )
                )
            if consumer is None:
                continue
            if self._raised(
                f"behind:{b.topic}", b.pending, BEHIND_AT * bound, CAUGHT_UP_BELOW * bound
            ):
                where = "at the bound: producers wait" if b.pending >= bound else "near the bound"
                out.append(
                    p.Notice(
                        level="critical",
                        message=f"{consumer} falls behind: {b.topic} has {b.pending} of "
                        f"{bound} pending batches ({where}; clears below "
                        f"{CAUGHT_UP_BELOW * bound:g})",
                    )
                )
            elif b.pending > then.get(b.topic, b.pending) + 2 and b.pending >= 8:
                out.append(
                    p.Notice(
                        level="warning",
                        message=f"{consumer} falls behind: {b.topic} pending grew from "
                        f"{then[b.topic]} to {b.pending} in {WINDOW_S:.0f} s",
                    )
                )
        return out

    def _latency_notices(self, latency: p.Latency, backlog: list[p.TopicBacklog]) -> list[p.Notice]:
        warn_s = self.settings.dashboard.latency_warn_s
        p50_s = (latency.p50_ms or 0.0) / 1000  # nothing scored: the stall notice says so
        critical = self._raised(
            "latency:critical",
            p50_s,
            LATENCY_CRITICAL * warn_s,
            LATENCY_CRITICAL * warn_s * LATENCY_CLEAR_BELOW,
        )
        warning = self._raised("latency:warning", p50_s, warn_s, warn_s * LATENCY_CLEAR_BELOW)
        if not (critical or warning):
            return []
        path = [b for b in backlog if b.topic in HOT_PATH]
        worst = max(path, key=lambda b: b.pending, default=None)
        cause = (
            f"{CONSUMER[worst.topic]} has the largest input backlog ({worst.topic}: "
            f"{worst.pending} pending)"
            if worst is not None and worst.pending
            else "no stage has an input backlog: the time goes inside the stages"
        )
        return [
            p.Notice(
                level="critical" if critical else "warning",
                message=f"slow: end-to-end latency p50 {p50_s:,.1f} s over the last "
                f"{latency.window_s:.0f} s, bound {warn_s:g} s (dashboard.latency_warn_s); "
                f"{cause}",
            )
        ]

    def _quality(self, model: p.ModelState) -> p.Quality:
        """Live figures of the champion and of the version in shadow (dashboard.quality)."""
        d = self.settings.dashboard
        champion = self.quality.of(model.version)
        shadow = None
        version = self.registry.shadow()
        if version is not None and version != model.version:
            mine, theirs = self.quality.shadow(version, model.version)
            shadow = p.ShadowQuality(
                version=version,
                **asdict(mine),
                champion_roc_auc=theirs.roc_auc,
                champion_average_precision=theirs.average_precision,
            )
        return p.Quality(
            window_rows=d.live_quality_rows,
            min_frauds=d.live_quality_min_frauds,
            margin=d.live_quality_margin,
            champion=p.ChampionQuality(
                version=model.version,
                **asdict(champion),
                holdout_roc_auc=model.metrics.get("roc_auc"),
                holdout_average_precision=model.metrics.get("average_precision"),
            ),
            shadow=shadow,
        )

    def _quality_notices(self, quality: p.Quality, model: p.ModelState) -> list[p.Notice]:
        """A warning while the champion's live AP or ROC AUC is more than the margin below its
        holdout's (cleared at half the margin). Not while its training window is warming up
        (dashboard.drift): rows without a full history train a model that live traffic, with
        one, is bound to find worse; the page shows the figures and drift says why."""
        c = quality.champion
        if model.drift_warming_up:
            self._held.discard("live-quality")
            return []
        pairs = (
            ("AP", c.average_precision, c.holdout_average_precision),
            ("ROC AUC", c.roc_auc, c.holdout_roc_auc),
        )
        gaps = [(name, live, held) for name, live, held in pairs if live is not None and held]
        worst = max((held - live for _, live, held in gaps), default=0.0)
        if not self._raised("live-quality", worst, quality.margin, quality.margin / 2):
            return []
        figures = ", ".join(f"{name} {live:.3f} (holdout {held:.3f})" for name, live, held in gaps)
        return [
            p.Notice(
                level="warning",
                message=f"live quality below holdout: champion {c.version} scores {figures} "
                f"over its {c.rows:,} newest labeled rows ({c.frauds:,} frauds), more than "
                f"dashboard.live_quality_margin={quality.margin:g} under (label noise, a "
                "feature gone wrong, a shift drift did not catch)",
            )
        ]

    def _model(self, workers: list[dict[str, Any]]) -> p.ModelState:
        """The champion (read once per version) with the drift the train worker measured now."""
        version = self.registry.current()
        if self._model_cache is None or self._model_cache.version != version:
            self._model_cache = self._read_model(version)
        d = read_drift(self.settings, self.layout, version, workers)
        return self._model_cache.model_copy(
            update={
                "drift": d.drift,
                "drift_feature": d.feature,
                "drift_psi_max": d.psi_max,
                "drift_warming_up": d.warming_up,
                "drift_why": d.why,
            }
        )

    def _read_model(self, version: str | None) -> p.ModelState:
        why = "no model promoted yet: drift is measured against the champion's training window"
        if version is None:
            return p.ModelState(
                version=None,
                promoted_at=None,
                promotion_reason=None,
                created_at=None,
                metrics={},
                threshold=None,
                drift=None,
                drift_feature=None,
                drift_psi_max=None,
                drift_warming_up=None,
                drift_why=why,
            )
        try:
            manifest = self.registry.manifest(version)
        except (OSError, ValueError, RegistryError):
            manifest = {}
        promoted: dict[str, Any] = next(
            (e for e in reversed(self.registry.history()) if e.get("to") == version), {}
        )
        metrics = {
            k: (float(v) if isinstance(v, int | float) else None)
            for k, v in (manifest.get("metrics") or {}).items()
            if isinstance(v, int | float) or v is None
        }
        threshold = manifest.get("threshold")
        return p.ModelState(
            version=version,
            promoted_at=_text(promoted.get("at")),
            promotion_reason=_text(promoted.get("reason")),
            created_at=_text(manifest.get("created_at")),
            metrics=metrics,
            threshold=float(threshold) if threshold is not None else None,
            drift=None,
            drift_feature=None,
            drift_psi_max=None,
            drift_warming_up=None,
            drift_why=why,
        )

    def _worker(self, doc: dict[str, Any], pods: dict[str, Any], now: float) -> p.WorkerState:
        pod = pods.get(str(doc.get("host", "")), {})
        gpu = doc.get("gpu_utilization")
        return p.WorkerState(
            worker=str(doc.get("worker", "")),
            stage=str(doc.get("stage", "")),
            device=str(doc.get("device", "")),
            host=str(doc.get("host", "")),
            rows_per_s=float(doc.get("rows_per_s", 0.0)),
            heartbeat_age_s=round(now - float(doc.get("heartbeat_at", now)), 1),
            cpu_millicores=pod.get("cpu_millicores"),
            memory_bytes=pod.get("memory_bytes"),
            gpu_utilization=float(gpu) if gpu is not None else None,
        )

    def _remember(self, snap: p.Snapshot) -> None:
        self.history.append(
            p.HistoryPoint(
                at=snap.at,
                stages={s.stage: s.rows_per_s for s in snap.throughput.stages},
                end_to_end_rows_per_s=snap.throughput.end_to_end_rows_per_s,
                p50_ms=snap.latency.p50_ms,
                p95_ms=snap.latency.p95_ms,
                p99_ms=snap.latency.p99_ms,
                alerts_per_s=snap.detection.alerts_per_s,
                pending={b.topic: b.pending for b in snap.backlog},
            )
        )
        while self.history and self.history[0].at < snap.at - self.settings.dashboard.history_s:
            self.history.popleft()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _alert(row: dict[str, Any]) -> p.Alert:
    return p.Alert(
        transaction_id=int(row["transaction_id"]),
        ts=row["ts"].isoformat() if hasattr(row["ts"], "isoformat") else str(row["ts"]),
        customer_id=int(row["customer_id"]),
        terminal_id=int(row["terminal_id"]),
        amount=float(row["amount"]),
        score=float(row["score"]),
        model_version=str(row["model_version"]),
        scored_at=float(row["scored_at"]),
        reasons=[
            p.Reason(feature=str(r["feature"]), contribution=float(r["contribution"]))
            for r in (row.get("reasons") or [])
        ],
    )
