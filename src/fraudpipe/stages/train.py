"""train: a job stage (no input topic): train on a schedule, on demand, or when drift asks.

A training run joins the feature store with the labels that have arrived (gather logs them to
the event log as the clock passes them), trains a challenger, compares it with the champion on
the same holdout, and promotes it only if it wins.

On demand: create the file ``control/train-now`` in the data dir (the dashboard does), or run
``fraudpipe worker --stage=train --once``.

Drift: every ``train.drift_interval_s`` (and right after a promotion) the stage measures the
population stability index of recent traffic against the champion's training window
(fraudpipe.drift), exports it (``fraudpipe_drift_psi``), reports it in its status file, and
trains at once when the score's or a feature's PSI passes ``train.drift_psi_max`` (at most once
per ``train.drift_cooldown_s`` after the previous training).
"""

from __future__ import annotations

import time
from typing import Any

from fraudpipe.control import TRAIN_NOW
from fraudpipe.drift import DriftMonitor, Report
from fraudpipe.features import feature_names
from fraudpipe.model import device_problem
from fraudpipe.registry import ModelRegistry
from fraudpipe.stages import StageError
from fraudpipe.training import run_training
from fraudpipe.worker import Context, Mode, Outcome, Stage

_RETRY_WITHOUT_MODEL_S = 5.0


class Train(Stage):
    name = "train"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        problem = device_problem(ctx.settings.train, ctx.device)
        if problem is not None:
            raise StageError(problem)
        self.trigger = ctx.layout.control / TRAIN_NOW
        self.features = feature_names(ctx.settings.features)
        # The first attempt is due at once; later ones follow the schedule.
        self.next_due = time.monotonic()
        self.registry = ModelRegistry(ctx.layout.models)
        self.last: dict[str, Any] = {}
        self.monitor = DriftMonitor(ctx.layout, ctx.settings.train)
        self.next_drift = time.monotonic()
        self.drift: dict[str, Any] | None = None
        self.drift_due: str | None = None  # why drift asks for a training, until one runs
        self.last_trained: float | None = None  # monotonic

    def _check_drift(self) -> None:
        """Measure drift now; export it, report it, and ask for a training if it is too large."""
        ctx, cfg = self.ctx, self.ctx.settings.train
        self.next_drift = time.monotonic() + cfg.drift_interval_s
        try:
            report = self.monitor.measure()
        except Exception as exc:  # drift is a report: it never stops the stage
            ctx.log.error("train.drift_failed", exc_info=True)
            report = Report(
                time.time(),
                self.monitor.registry.current(),
                why=f"drift measurement failed: {type(exc).__name__}: {exc}",
            )
        ctx.health.tick()
        self.drift = doc = report.as_status(cfg.drift_psi_max)
        gauge = ctx.metrics.drift_psi
        gauge.clear()
        summary = report.summary
        if summary is None:
            ctx.log.info("train.drift", measured=False, why=report.why)
            return
        if summary.score_psi is not None:
            gauge.labels("score", "").set(summary.score_psi)
        for feature, value in summary.feature_psi.items():
            gauge.labels("feature", feature).set(value)
        ctx.log.info(
            "train.drift",
            score_psi=round(summary.score_psi or 0.0, 4),
            max_feature_psi=round(summary.max_feature_psi or 0.0, 4),
            feature=summary.feature,
            reference_version=report.reference_version,
            recent_rows=report.recent.get("rows"),
        )
        if not doc["over_limit"] or self.drift_due is not None:
            return
        since = None if self.last_trained is None else time.monotonic() - self.last_trained
        if since is not None and since < cfg.drift_cooldown_s:
            return  # measured and reported; the next check after the cooldown may train
        self.drift_due = (
            f"drift: score PSI {summary.score_psi:.3f}, max feature PSI "
            f"{summary.max_feature_psi:.3f} ({summary.feature}) vs the training window of "
            f"{report.reference_version}; limit drift_psi_max={cfg.drift_psi_max:g}"
        )
        ctx.log.warning(
            "train.drift_retrain",
            reason=self.drift_due,
            score_psi=summary.score_psi,
            max_feature_psi=summary.max_feature_psi,
            feature=summary.feature,
            limit=cfg.drift_psi_max,
        )

    def _train(self, trigger: str) -> Outcome:
        ctx = self.ctx
        self.trigger.unlink(missing_ok=True)
        why = self.drift_due if trigger == "drift" else None
        self.drift_due = None
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            ctx.health.tick()
            if done % 50 == 0 or done == total:
                ctx.log.info("train.progress", iteration=done, of=total)

        outcome = run_training(
            ctx.layout,
            ctx.settings.train,
            self.features,
            should_stop=ctx.stop.is_set,
            progress=progress,
            device=ctx.device,
        )
        seconds = round(time.monotonic() - started, 2)
        ctx.metrics.trainings.labels(outcome.status).inc()
        self.last_trained = time.monotonic()
        ctx.log.info(
            "train.outcome",
            trigger=trigger,
            status=outcome.status,
            version=outcome.version,
            reason=outcome.reason,
            seconds=seconds,
        )
        self.last = {
            "trigger": trigger,
            "trigger_reason": why,
            "status": outcome.status,
            "version": outcome.version,
            "reason": outcome.reason,
            "seconds": seconds,
            "at": time.time(),
        }
        wait = ctx.settings.train.interval_s
        if self.registry.current() is None:
            wait = min(wait, _RETRY_WITHOUT_MODEL_S)
        self.next_due = time.monotonic() + wait
        if outcome.status == "trained-promoted":
            self.next_drift = time.monotonic()  # a new champion: measure against its window
        return Outcome(batches=1, finished=ctx.mode is not Mode.FOREVER)

    def step(self) -> Outcome:
        mode = self.ctx.mode
        if mode is Mode.ONCE:
            return self._train("once")
        if time.monotonic() >= self.next_drift:
            self._check_drift()
        if self.trigger.exists():
            return self._train("on-demand")
        if mode is Mode.BURST or time.monotonic() >= self.next_due:
            return self._train("schedule")
        if self.drift_due is not None:
            return self._train("drift")
        due = min(self.next_due, self.next_drift)
        return Outcome(idle_for=max(0.0, due - time.monotonic()))

    def status(self) -> dict[str, Any]:
        return {
            "last_training": self.last or None,
            "drift": self.drift,
        }
