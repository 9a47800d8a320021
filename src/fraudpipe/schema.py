"""Column contracts of every topic. Stages validate what they read against these."""

from __future__ import annotations

import polars as pl
from polars.datatypes import DataTypeClass

_Nested = pl.DataType | DataTypeClass  # a member of a List or Struct

TS = pl.Datetime("us")  # simulated/event time, naive UTC

# The largest transaction amount accepted. Amounts are summed in integer cents (int64), so
# sums over any history stay exact up to about 90 million transactions of this amount.
MAX_AMOUNT = 1e9

TRANSACTIONS: dict[str, pl.DataType] = {
    "transaction_id": pl.Int64(),
    "ts": TS,
    "customer_id": pl.Int64(),
    "terminal_id": pl.Int64(),
    "amount": pl.Float64(),
    # wall-clock epoch seconds at which the row entered the stream (for end-to-end latency)
    "created_at": pl.Float64(),
}

LABELS: dict[str, pl.DataType] = {
    "transaction_id": pl.Int64(),
    "is_fraud": pl.Int8(),
    "label_ts": TS,
}

# An alert's reason codes: the REASONS features contributing most towards fraud (path
# attributions of the LightGBM booster, in log-odds), largest first; reasons.py computes them.
REASONS = 3
REASON = pl.Struct({"feature": pl.String(), "contribution": pl.Float64()})

RESULTS: dict[str, pl.DataType] = {
    "transaction_id": pl.Int64(),
    "ts": TS,
    "customer_id": pl.Int64(),
    "terminal_id": pl.Int64(),
    "amount": pl.Float64(),
    "score": pl.Float32(),
    "is_alert": pl.Boolean(),
    "model_version": pl.String(),
    "created_at": pl.Float64(),
    "scored_at": pl.Float64(),
    "latency_ms": pl.Float64(),
    # top REASONS contributions for an alert; an empty list (never null) for any other row
    "reasons": pl.List(REASON),
    # the score of the version in shadow (models/shadow) and its name; null without one
    "shadow_score": pl.Float32(),
    "shadow_version": pl.String(),
}


class BadBatch(ValueError):
    """A batch that no retry can help: it goes to dead letters at once, with this reason."""


class SchemaMismatch(BadBatch):
    """A batch does not carry the columns (or types) its topic promises."""


def check(df: pl.DataFrame, expected: dict[str, pl.DataType], what: str) -> pl.DataFrame:
    """Return df restricted to the expected columns, cast safely; raise SchemaMismatch if not."""
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise SchemaMismatch(f"{what}: missing column(s) {missing}; got {df.columns}")
    wrong = [
        f"{c}: {df.schema[c]} (expected {t})"
        for c, t in expected.items()
        if df.schema[c] != t and not _castable(df.schema[c], t)
    ]
    if wrong:
        raise SchemaMismatch(f"{what}: wrong type(s) " + "; ".join(wrong))
    try:
        return df.select([pl.col(c).cast(t, strict=True) for c, t in expected.items()])
    except pl.exceptions.PolarsError as exc:
        raise SchemaMismatch(f"{what}: values do not fit the schema: {exc}") from exc


def _castable(got: pl.DataType, want: pl.DataType) -> bool:
    if isinstance(got, pl.List) and isinstance(want, pl.List):
        # List(Null) is how a column of nothing but empty lists comes out of plain Python lists
        return isinstance(got.inner, pl.Null) or _same_or_castable(got.inner, want.inner)
    if isinstance(got, pl.Struct) and isinstance(want, pl.Struct):
        fields = {f.name: f.dtype for f in got.fields}
        return list(fields) == [f.name for f in want.fields] and all(
            _same_or_castable(fields[f.name], f.dtype) for f in want.fields
        )
    if got.is_integer() and (want.is_integer() or want.is_float()):
        return True
    if got.is_float() and want.is_float():
        return True
    return isinstance(got, pl.Datetime) and isinstance(want, pl.Datetime)


def _same_or_castable(got: _Nested, want: _Nested) -> bool:
    """For nested types, whose members polars may hand out as classes (pl.String) or instances."""
    got_ = got() if isinstance(got, type) else got
    want_ = want() if isinstance(want, type) else want
    return got_ == want_ or _castable(got_, want_)
