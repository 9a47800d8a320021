"""Column contracts of every topic. Stages validate what they read against these."""

from __future__ import annotations

import polars as pl

TS = pl.Datetime("us")  # simulated/event time, naive UTC

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
}


class SchemaMismatch(ValueError):
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
    if got.is_integer() and (want.is_integer() or want.is_float()):
        return True
    if got.is_float() and want.is_float():
        return True
    return isinstance(got, pl.Datetime) and isinstance(want, pl.Datetime)
