"""preprocess: raw-transactions -> features-ready, with history from the event log.

Features of a batch depend on every earlier transaction of the same customer and terminal,
whichever replica saw them; the history comes from the log gather wrote before publishing
(history.py), so any number of replicas, in any order, compute exactly what one pass over the
history would, or refuse the batch, with the reason, when that log does not hold it whole.
Each feature batch is also kept in the feature store (state/features/) for training: the model
learns from the very values inference sees.
"""

from __future__ import annotations

import datetime as dt
import time

import polars as pl

from fraudpipe import durable, schema
from fraudpipe.eventlog import EventLog, day_dir_name, prune_days
from fraudpipe.history import StreamingFeatures
from fraudpipe.layout import FEATURES, RAW
from fraudpipe.queue import Claim
from fraudpipe.registry import ModelRegistry
from fraudpipe.worker import BatchStage, Context


class Preprocess(BatchStage):
    name = "preprocess"
    consumes = (RAW,)
    produces = (FEATURES,)
    input_schema = schema.TRANSACTIONS

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.features = StreamingFeatures(
            EventLog(ctx.layout, fsync=ctx.settings.queue.fsync), ctx.settings.features, ctx.device
        )
        self.store = ctx.layout.feature_store
        self.registry = ModelRegistry(ctx.layout.models)
        self._newest_day: dt.date | None = None
        self._last_prune = 0.0

    def over_backlog(self) -> bool:
        # Before the first model infer cannot drain features-ready, and that model needs the
        # features of label_delay + holdout + training days: at a low rate those outnumber the
        # bound, and waiting on it would deadlock. The bound holds once a model is promoted.
        return super().over_backlog() and self.registry.current() is not None

    def transform(self, df: pl.DataFrame, claim: Claim) -> dict[str, pl.DataFrame]:
        feats = self.features.compute(df, claim.id)
        day = df["ts"].min().date()  # type: ignore[union-attr]
        durable.write_parquet(
            self.store / day_dir_name(day) / f"{claim.id}.parquet",
            feats,
            fsync=self.ctx.settings.queue.fsync,
        )
        if self._newest_day is None or day > self._newest_day:
            self._newest_day = day
        return {FEATURES: feats}

    def housekeeping(self) -> None:
        if self._newest_day is None or time.monotonic() - self._last_prune < 30:
            return
        self._last_prune = time.monotonic()
        keep = dt.timedelta(days=self.ctx.settings.features.store_retention_days)
        prune_days(self.store, self._newest_day - keep)
