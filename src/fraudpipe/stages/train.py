"""train: consume the label stream; train on a schedule, on demand, or once enough has arrived.

Label batches are the stage's input topic: each one is counted (metrics) and acknowledged. A
training run joins the feature store with the labels that have arrived, trains a challenger,
compares it with the champion on the same holdout, and promotes it only if it wins.

On demand: create the file ``control/train-now`` in the data dir (the dashboard does), or run
``fraudpipe worker --stage=train --once``.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl

from fraudpipe import schema
from fraudpipe.control import TRAIN_NOW
from fraudpipe.features import feature_names
from fraudpipe.layout import LABELS
from fraudpipe.queue import Claim
from fraudpipe.registry import ModelRegistry
from fraudpipe.training import run_training
from fraudpipe.worker import BatchStage, Context, Mode, Outcome

_RETRY_WITHOUT_MODEL_S = 5.0


class Train(BatchStage):
    name = "train"
    consumes = (LABELS,)
    input_schema = schema.LABELS

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.trigger = ctx.layout.control / TRAIN_NOW
        self.features = feature_names(ctx.settings.features)
        # The first attempt is due at once; later ones follow the schedule.
        self.next_due = time.monotonic()
        self.registry = ModelRegistry(ctx.layout.models)
        self.last: dict[str, Any] = {}
        self.labels_seen = 0

    def transform(self, df: pl.DataFrame, claim: Claim) -> dict[str, pl.DataFrame]:
        """Count an arrived label batch; training reads the labels from the event log."""
        frauds = int(df["is_fraud"].sum())
        self.ctx.metrics.labels.labels("1").inc(frauds)
        self.ctx.metrics.labels.labels("0").inc(df.height - frauds)
        self.labels_seen += df.height
        return {}

    def _train(self) -> Outcome:
        ctx = self.ctx
        self.trigger.unlink(missing_ok=True)
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
        )
        seconds = round(time.monotonic() - started, 2)
        ctx.metrics.trainings.labels(outcome.status).inc()
        ctx.log.info(
            "train.outcome",
            status=outcome.status,
            version=outcome.version,
            reason=outcome.reason,
            seconds=seconds,
        )
        self.last = {
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
        return Outcome(batches=1, finished=ctx.mode is not Mode.FOREVER)

    def step(self) -> Outcome:
        mode = self.ctx.mode
        if mode is Mode.ONCE:
            return self._train()
        consumed = super().step()
        if consumed.batches:
            return consumed
        if mode is Mode.BURST or self.trigger.exists() or time.monotonic() >= self.next_due:
            return self._train()
        return Outcome(idle_for=max(0.0, self.next_due - time.monotonic()))

    def status(self) -> dict[str, Any]:
        return {"labels_seen": self.labels_seen, "last_training": self.last or None}
