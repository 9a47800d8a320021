"""Live model quality: the champion's ROC AUC and average precision over the traffic whose
labels have arrived, beside its holdout figures, and a challenger's scored in shadow on the
same rows.

The collector joins each arrived label with the row infer scored (dashboard.collect) and hands
the pairs here. The newest ``dashboard.live_quality_rows`` of them count, whoever scored them:
a window by rows, not by time, so the figures rest on as much evidence at 100 rows/s as at
100,000. A model's figures are over the rows it scored (the champion's over the rows scored
by the version now current; the shadow's over the rows that carry its shadow score, and the
champion's again over exactly those rows, so the two compare). With fewer than
``dashboard.live_quality_min_frauds`` frauds among them a figure is not shown: AP over a
handful of frauds says little, and the page says so instead.

Live figures are not the holdout's and need not match it: the holdout leaves out nothing,
like live traffic, but covers other days. What they must not do is fall far below it: the
dashboard warns when the champion's live AP or ROC AUC is more than
``dashboard.live_quality_margin`` under its holdout's (label noise, a feature gone wrong, a
shift the drift measure did not catch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from fraudpipe.model import average_precision, roc_auc

# What the collector keeps of each labeled row.
SCHEMA: dict[str, pl.DataType] = {
    "is_fraud": pl.Int8(),
    "score": pl.Float64(),
    "model_version": pl.String(),
    "shadow_score": pl.Float64(),
    "shadow_version": pl.String(),
}


@dataclass(frozen=True)
class Figures:
    """A model's figures over some labeled rows; None with why when there are too few frauds
    among them."""

    rows: int
    frauds: int
    roc_auc: float | None
    average_precision: float | None
    why: str | None


class LiveQuality:
    """The newest `keep` labeled rows, and the figures over them."""

    def __init__(self, keep: int, min_frauds: int) -> None:
        self.keep = keep
        self.min_frauds = min_frauds
        self.rows = pl.DataFrame(schema=SCHEMA)

    def add(self, labeled: pl.DataFrame) -> None:
        """Rows whose label arrived (SCHEMA's columns), oldest first."""
        if labeled.height:
            both = pl.concat([self.rows, labeled.select(list(SCHEMA)).cast(SCHEMA)])  # type: ignore[arg-type]
            self.rows = both.tail(self.keep)

    def of(self, version: str | None) -> Figures:
        """The figures of version over the rows it scored."""
        if version is None:
            return Figures(0, 0, None, None, "no model promoted yet")
        rows = self.rows.filter(pl.col("model_version") == version)
        return self._figures(rows, "score", f"scored by {version}")

    def shadow(self, version: str, champion: str | None) -> tuple[Figures, Figures]:
        """(the shadow's, the champion's) figures over the rows the champion scored and the
        shadow version scored too."""
        rows = self.rows.filter(
            (pl.col("shadow_version") == version) & (pl.col("model_version") == champion)
        )
        what = f"scored by {champion} and by {version} in shadow"
        return self._figures(rows, "shadow_score", what), self._figures(rows, "score", what)

    def _figures(self, rows: pl.DataFrame, column: str, what: str) -> Figures:
        y = rows["is_fraud"].to_numpy()
        frauds = int(y.sum())
        if frauds < self.min_frauds:
            why = (
                f"{frauds} labeled fraud(s) among the {rows.height:,} labeled rows {what} in "
                f"the window; figures need {self.min_frauds}"
            )
            return Figures(rows.height, frauds, None, None, why)
        s = rows[column].to_numpy().astype(np.float64)
        return Figures(rows.height, frauds, roc_auc(y, s), average_precision(y, s), None)
