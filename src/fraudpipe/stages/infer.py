"""infer: features-ready -> inference-results, scored by the current model.

Before the first model exists infer claims nothing: features stay queued, no score is invented.
Between batches it checks models/current and loads a newly promoted model, so a promotion never
drops or splits a batch; each result row names the model version that scored it. It scores with
the scorer ``infer.scorer`` names (scoring.py: by default the forest compiled when train saved
the version on the CPU, the forest walked as arrays on the GPU). A version it
cannot load (missing, cut short: ``ModelRegistry.verify``) is refused and named in its log and
status, and infer goes on with the last good model (or waits, if it has none); it tries the
same version again only after RETRY_REFUSED_S, or once models/current moves.

Every alert carries reason codes (``reasons``): the schema.REASONS features contributing most
towards fraud, path attributions of the version's LightGBM booster (reasons.py), computed for
the alert rows only; the rest get [].

A version in shadow (models/shadow: a challenger, see registry.py) scores every batch too: its
score and name go in ``shadow_score`` and ``shadow_version`` and decide nothing, so the
dashboard can compare it with the champion on the same rows. One it cannot load, or whose
features the batches lack, is refused like a current version and the batches go on without.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import polars as pl

from fraudpipe import schema
from fraudpipe.layout import FEATURES, RESULTS
from fraudpipe.queue import Claim
from fraudpipe.reasons import Forest, alert_reasons
from fraudpipe.registry import ModelRegistry
from fraudpipe.results import ResultsStore
from fraudpipe.scoring import CompiledScorer, Scorer, resolve
from fraudpipe.worker import BatchStage, Context

_PASS_THROUGH = ["transaction_id", "ts", "customer_id", "terminal_id", "amount", "created_at"]
RETRY_REFUSED_S = 30.0


class Infer(BatchStage):
    name = "infer"
    consumes = (FEATURES,)
    produces = (RESULTS,)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.registry = ModelRegistry(ctx.layout.models)
        self.results = ResultsStore(ctx.layout.results)
        self.version: str | None = None
        self.scorer: Scorer | None = None
        self.forest: Forest | None = None
        self.feature_names: list[str] = []
        self.threshold = 0.5
        self.input_schema = dict(schema.TRANSACTIONS)
        self._latencies: deque[np.ndarray] = deque(maxlen=20)
        self.alerts = 0
        self._last_prune = 0.0
        self.refused: dict[str, Any] | None = None  # the version last refused, and why
        self.shadow: tuple[str, Scorer, list[str]] | None = None  # version, scorer, features
        self.shadow_refused: dict[str, Any] | None = None

    def ready(self) -> bool:
        current = self.registry.current()
        if current is not None and current == self.version:
            self.refused = None  # current is back at the model in hand
        elif current is not None and not self._refused_now(current):
            try:
                self._load(current)
            except Exception as exc:  # whatever stops a version loading: refuse it, go on
                self.refused = {"version": current, "reason": str(exc), "at": time.time()}
                self.ctx.log.error(
                    "model.refused", version=current, reason=str(exc), keeps=self.version
                )
        if self.scorer is not None:
            self._follow_shadow()
        return self.scorer is not None

    def _refused_now(self, version: str, refused: dict[str, Any] | None = None) -> bool:
        r = self.refused if refused is None else refused
        return r is not None and r["version"] == version and time.time() - r["at"] < RETRY_REFUSED_S

    def _follow_shadow(self) -> None:
        """Load the version models/shadow names, or drop the one in hand when it moved."""
        wanted = self.registry.shadow()
        if wanted == self.version:
            wanted = None  # promoted meanwhile: the champion is not its own challenger
        held = self.shadow[0] if self.shadow is not None else None
        if wanted == held:
            return
        self.shadow = None
        if wanted is None or self._refused_now(wanted, self.shadow_refused):
            return
        try:
            manifest = self.registry.verify(wanted)
            names = list(manifest["feature_names"])
            missing = [n for n in names if n not in self.input_schema]
            if missing:
                raise ValueError(f"it needs features the batches lack: {missing}")
            cfg = self.ctx.settings.infer
            scorer = self.registry.scorer(wanted, cfg.scorer, cfg.threads, self.ctx.device)
        except Exception as exc:  # whatever stops it loading: score without a shadow
            self.shadow_refused = {"version": wanted, "reason": str(exc), "at": time.time()}
            self.ctx.log.error("model.shadow_refused", version=wanted, reason=str(exc))
            return
        self.shadow, self.shadow_refused = (wanted, scorer, names), None
        self.ctx.log.info("model.shadow_loaded", version=wanted, champion=self.version)

    def _load(self, version: str) -> None:
        manifest = self.registry.verify(version)
        # Both loaded before either is swapped in: a failed load leaves the old model whole.
        cfg = self.ctx.settings.infer
        scorer = self.registry.scorer(version, cfg.scorer, cfg.threads, self.ctx.device)
        if isinstance(scorer, CompiledScorer) and scorer.compiled_here_s is not None:
            self.ctx.log.warning(
                "model.compiled", version=version, seconds=round(scorer.compiled_here_s, 1),
                why="the version keeps no compiled object for this architecture",
            )  # fmt: skip
        forest = Forest.of(self.registry.load_booster(version), threads=cfg.threads)
        self.scorer, self.forest = scorer, forest
        self.feature_names = list(manifest["feature_names"])
        configured = self.ctx.settings.infer.threshold
        self.threshold = float(configured if configured is not None else manifest["threshold"])
        self.input_schema = {
            **schema.TRANSACTIONS,
            **{f: pl.Float64() for f in self.feature_names},
        }
        if self.version is not None:
            self.ctx.metrics.model_info.remove(self.version)
        self.version = version
        self.ctx.metrics.model_info.labels(version).set(1)
        self.refused = None
        self.ctx.log.info(
            "model.loaded",
            version=version,
            scorer=resolve(cfg.scorer, self.ctx.device),
            device=self.ctx.device.kind,
            threshold=round(self.threshold, 4),
        )

    def transform(self, df: pl.DataFrame, claim: Claim) -> dict[str, pl.DataFrame]:
        assert self.scorer is not None and self.forest is not None and self.version is not None
        X = df.select(self.feature_names).to_numpy().astype(np.float32)
        scores = self.scorer.score(X)
        scored_at = time.time()
        latency_ms = (scored_at - df["created_at"].to_numpy()) * 1000.0
        alerts = scores >= self.threshold
        shadow_scores, shadow_version = None, None
        if self.shadow is not None:
            shadow_version, shadow_scorer, names = self.shadow
            shadow_X = X if names == self.feature_names else df.select(names).to_numpy()
            shadow_scores = shadow_scorer.score(shadow_X.astype(np.float32))
        out = (
            df.select(_PASS_THROUGH)
            .with_columns(
                score=pl.Series(scores, dtype=pl.Float32),
                is_alert=pl.Series(alerts),
                model_version=pl.lit(self.version),
                scored_at=pl.lit(scored_at),
                latency_ms=pl.Series(latency_ms),
                # X is what was scored: the forest explains exactly the inputs scored.
                reasons=alert_reasons(self.forest, X, alerts, self.feature_names),
                shadow_score=pl.Series(shadow_scores, dtype=pl.Float32)
                if shadow_scores is not None
                else pl.lit(None, dtype=pl.Float32),
                shadow_version=pl.lit(shadow_version, dtype=pl.String),
            )
            .select(list(schema.RESULTS))
        )
        n_alerts = int(alerts.sum())
        self.alerts += n_alerts
        self.ctx.metrics.alerts.inc(n_alerts)
        self.ctx.metrics.e2e_latency.observe_many(latency_ms / 1000.0)
        self._latencies.append(latency_ms)
        return {RESULTS: out}

    def housekeeping(self) -> None:
        q = self.ctx.settings.queue
        self.results.deliver(self.ctx.queue.topic(RESULTS), q.results_hold_s)
        if time.monotonic() - self._last_prune > 60:
            self._last_prune = time.monotonic()
            self.results.prune(q.results_retention_days)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "model_version": self.version,
            "alerts": self.alerts,
            "model_refused": self.refused,
            "shadow_version": self.shadow[0] if self.shadow is not None else None,
            "shadow_refused": self.shadow_refused,
        }
        if self._latencies:
            recent = np.concatenate(list(self._latencies))
            p50, p99 = np.percentile(recent, [50, 99])
            doc["latency_ms"] = {"p50": round(float(p50), 1), "p99": round(float(p99), 1)}
        return doc
