"""The dashboard's JSON payload: `GET /api/snapshot` and every WebSocket message.

These models are the documented contract (README "Dashboard payload"); the server builds them
and tests validate what it sends against them. A value that was not measured is null, and the
field's `*_why` / `status` text says why, so a page never shows an invented number.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageThroughput(_Model):
    stage: str
    rows_per_s: float = Field(description="Sum over the stage's live workers (heartbeat rates).")
    workers: int = Field(description="Live workers (heartbeat within the last 10 s).")


class Throughput(_Model):
    stages: list[StageThroughput]
    end_to_end_rows_per_s: float = Field(
        description="Transactions scored per second, counted from the scored batches."
    )


class Latency(_Model):
    """Stream entry (created_at) to score, over the rows scored in the last `window_s`.

    Rows that entered before generation last resumed are kept in the percentiles (they did
    wait that long) and counted in `before_resume`, so the page can say that the figures
    include the time the pipeline stood still.
    """

    window_s: float
    rows: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    resumed_at: float | None = Field(
        description="Wall-clock epoch seconds generation last resumed (gather started, or "
        "was resumed from the dashboard) as far as the dashboard knows; null: not seen."
    )
    before_resume: int = Field(
        description="Rows of the window that entered the stream before resumed_at and were "
        "scored after it: their latency includes the time the pipeline was stopped."
    )


class TopicBacklog(_Model):
    topic: str
    pending: int
    claimed: int
    dead: int


class Notice(_Model):
    level: Literal["warning", "critical"]
    message: str


class Reason(_Model):
    feature: str
    contribution: float = Field(description="Path attribution to the log-odds of fraud.")


class Alert(_Model):
    transaction_id: int
    ts: str = Field(description="Transaction time (simulated or replayed), ISO 8601.")
    customer_id: int
    terminal_id: int
    amount: float
    score: float
    model_version: str
    scored_at: float = Field(description="Wall-clock epoch seconds.")
    reasons: list[Reason]


class Detection(_Model):
    window_s: float = Field(description="Window of alert_rate and recent_alerts.")
    rate_window_s: float = Field(description="Window of alerts_per_s.")
    quality_window_s: float = Field(description="Labels arrived in this window count.")
    alerts_per_s: float
    alert_rate: float | None = Field(description="Alerts / scored rows in the window.")
    recent_alerts: list[Alert] = Field(
        description="Newest transaction time first; ties (rows of one batch) by transaction "
        "id, highest first."
    )
    labeled_alerts: int = Field(
        description="Alerts whose label arrived in the window: precision's denominator."
    )
    labeled_frauds: int = Field(
        description="Frauds whose label arrived in the window (alerted or not): recall's "
        "denominator."
    )
    precision: float | None = Field(description="Among labeled alerts: share that were fraud.")
    recall: float | None = Field(description="Among labeled frauds: share that were alerted.")
    quality_why: str | None = Field(description="Why precision/recall are null, if they are.")


class ModelState(_Model):
    version: str | None
    promoted_at: str | None
    promotion_reason: str | None
    created_at: str | None
    metrics: dict[str, float | None] = Field(description="Holdout metrics from its manifest.")
    threshold: float | None
    drift: float | None = Field(
        description="Population stability index of recent traffic vs the champion's training "
        "window: the larger of the score's PSI and the largest feature PSI (the train stage "
        "measures it; > train.drift_psi_max triggers a training). Null when not measured, or "
        "while the windows are warming up (the number would compare unlike features)."
    )
    drift_feature: str | None = Field(
        description='What has that PSI: "score" or the name of the feature.'
    )
    drift_psi_max: float | None = Field(
        description="train.drift_psi_max, the PSI above which train retrains (null: never)."
    )
    drift_warming_up: bool | None = Field(
        description="True: the champion's training window starts before the features' "
        "lookback (the longest window plus the terminal delay) has passed since the stream "
        "began, so its rows lack a full history; null: unknown (drift_why says why)."
    )
    drift_why: str | None = Field(
        description="Why drift is null, or why drift_warming_up is unknown; null otherwise."
    )


class WorkerState(_Model):
    worker: str
    stage: str
    device: str
    host: str
    rows_per_s: float
    heartbeat_age_s: float
    cpu_millicores: float | None = Field(description="From the metrics API (cluster only).")
    memory_bytes: int | None = Field(description="From the metrics API (cluster only).")
    gpu_utilization: float | None = Field(
        description="Percent (0-100, as NVML reports it); reported by GPU stages only."
    )


class Cluster(_Model):
    mode: Literal["local", "kubernetes"]
    metrics_api: Literal["available", "unavailable", "not in a cluster"]
    detail: str | None


class Controls(_Model):
    enabled: bool = Field(description="False: no token is configured; the page is read-only.")
    scale_available: bool = Field(description="Scaling needs the Kubernetes API (cluster only).")
    scale_why: str | None = Field(description="Why scaling is unavailable; null when it is.")
    generation_paused: bool
    generation_rate: float | None = Field(description="Rate set from the dashboard, if any.")
    configured_rate: float = Field(description="gather.rate of the configuration (rows/s).")


class LiveFigures(_Model):
    """A model's ROC AUC and average precision over labeled live traffic (dashboard.quality)."""

    version: str | None
    rows: int = Field(description="Labeled rows of the window it scored.")
    frauds: int = Field(description="Frauds among them.")
    roc_auc: float | None
    average_precision: float | None
    why: str | None = Field(description="Why the figures are null (too few frauds, ...).")


class ChampionQuality(LiveFigures):
    holdout_roc_auc: float | None = Field(description="From its manifest: its own holdout.")
    holdout_average_precision: float | None


class ShadowQuality(LiveFigures):
    """A challenger infer scores beside the champion (models/shadow), before any promotion."""

    champion_roc_auc: float | None = Field(description="The champion over the same rows.")
    champion_average_precision: float | None


class Quality(_Model):
    window_rows: int = Field(description="The newest this many labeled rows count (any model).")
    min_frauds: int = Field(description="Frauds a figure needs among its rows.")
    margin: float = Field(description="Warn when live is this far below holdout (AP or AUC).")
    champion: ChampionQuality
    shadow: ShadowQuality | None = Field(description="Null: no model is in shadow.")


class Snapshot(_Model):
    kind: Literal["snapshot"] = "snapshot"
    at: float = Field(description="Wall-clock epoch seconds when the snapshot was taken.")
    throughput: Throughput
    latency: Latency
    backlog: list[TopicBacklog]
    warnings: list[Notice]
    detection: Detection
    model: ModelState
    quality: Quality
    workers: list[WorkerState]
    cluster: Cluster
    controls: Controls


class HistoryPoint(_Model):
    at: float
    stages: dict[str, float] = Field(description="rows/s per stage.")
    end_to_end_rows_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    alerts_per_s: float
    pending: dict[str, int] = Field(description="Pending batches per topic.")


class History(_Model):
    """`GET /api/history`: the points the charts start from (one per second)."""

    points: list[HistoryPoint]
