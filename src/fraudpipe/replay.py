"""Replay a user's own Parquet or CSV file as the transaction stream, one day at a time.

The file is read once, its columns found (``replay.columns`` mapping first, then our names,
then the fraud handbook's), checked and converted to the simulator's output columns, sorted by
(ts, transaction_id) and kept in memory; ``day(d)`` is then a zero-copy slice.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from fraudpipe.config import ReplaySettings
from fraudpipe.schema import MAX_AMOUNT, TS
from fraudpipe.simulate import DAY_US, SOURCE_COLUMNS

OUR_COLUMNS = ("transaction_id", "ts", "customer_id", "terminal_id", "amount", "is_fraud")
HANDBOOK_COLUMNS = {
    "transaction_id": "TRANSACTION_ID",
    "ts": "TX_DATETIME",
    "customer_id": "CUSTOMER_ID",
    "terminal_id": "TERMINAL_ID",
    "amount": "TX_AMOUNT",
    "is_fraud": "TX_FRAUD",
}
_OPTIONAL = ("transaction_id", "is_fraud")
# The simulator's truth (0: genuine, 1-3: the handbook's fraud scenarios), ours and the
# handbook's name: optional, read when present (evaluate's ceilings need it).
SCENARIO_COLUMNS = ("fraud_scenario", "TX_FRAUD_SCENARIO")
# Times a replayed transaction may have: a stream of card payments lies within these.
EARLIEST_TS = dt.datetime(1970, 1, 1)
LATEST_TS = dt.datetime(2200, 1, 1)
_PARQUET_SUFFIXES = (".parquet", ".pq")


class ReplayError(ValueError):
    """The replay file cannot be used; the message says which file and column, and why."""


def read_table(path: Path, what: str = "replay file", *, csv_as_text: bool = True) -> pl.DataFrame:
    """A whole Parquet or CSV file (by suffix), or ReplayError naming it. CSV columns come in
    as text by default, to be converted column by column with messages that name the row."""
    suffix = path.suffix.lower()
    if suffix not in (*_PARQUET_SUFFIXES, ".csv"):
        raise ReplayError(
            f"{what} {path}: unsupported suffix {path.suffix!r}; expected .parquet, .pq or .csv"
        )
    if not path.is_file():
        raise ReplayError(f"{what} {path}: no such file")
    try:
        if suffix == ".csv":
            if csv_as_text:
                return pl.read_csv(path, infer_schema=False)
            return pl.read_csv(path, try_parse_dates=True)
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ReplayError(f"{what} {path}: cannot be read: {exc}") from exc


def _resolve(columns: list[str], mapping: dict[str, str], path: Path) -> dict[str, str]:
    """Our column name -> the file's column name; an absent optional column is left out."""
    unknown = sorted(set(mapping) - set(OUR_COLUMNS))
    if unknown:
        raise ReplayError(
            f"replay file {path}: replay.columns has unknown column(s) {unknown}; its keys are "
            f"our names, one of {list(OUR_COLUMNS)}, and its values the file's names"
        )
    found: dict[str, str] = {}
    for ours in OUR_COLUMNS:
        if ours in mapping:
            if mapping[ours] not in columns:
                raise ReplayError(
                    f"replay file {path}: replay.columns maps {ours} to {mapping[ours]!r}, "
                    f"which the file does not have; its columns are {columns}"
                )
            found[ours] = mapping[ours]
        elif ours in columns:
            found[ours] = ours
        elif HANDBOOK_COLUMNS[ours] in columns:
            found[ours] = HANDBOOK_COLUMNS[ours]
        elif ours not in _OPTIONAL:
            raise ReplayError(
                f"replay file {path}: no column for {ours} (looked for {ours!r} and "
                f"{HANDBOOK_COLUMNS[ours]!r}; map it with replay.columns.{ours}); "
                f"the file's columns are {columns}"
            )
    return found


_SHOWN_CHARS = 60  # of an offending value, in a message


def _fail(path: Path, s: pl.Series, ours: str, expected: str, bad: pl.Series) -> ReplayError:
    """An error naming the column, what it should hold, and the first offending row and value
    (a long value cut short: a message is read on a terminal and kept in logs)."""
    row = int(bad.arg_true()[0])
    example = s[row]
    if example is None:
        shown = "an empty value"
    else:
        shown = repr(example)
        if len(shown) > _SHOWN_CHARS:
            shown = f"{shown[:_SHOWN_CHARS]}... ({len(shown):,} characters)"
    return ReplayError(
        f"replay file {path}: column {s.name!r} ({ours}) must hold {expected}; "
        f"{int(bad.sum())} row(s) do not, the first at row {row + 1} with {shown}"
    )


def _only(path: Path, s: pl.Series, converted: pl.Series, ours: str, allowed: list[int]) -> None:
    """Refuse a converted column holding a value outside allowed (nulls pass)."""
    bad = ~converted.is_in(allowed).fill_null(True)
    if bad.any():
        *rest, last = (str(v) for v in allowed)
        raise _fail(path, s, ours, f"{', '.join(rest)} or {last}", bad)


def _convert(s: pl.Series, dtype: pl.DataType, ours: str, path: Path) -> pl.Series:
    """Cast to dtype, refusing any value that would be lost or changed (nulls pass through)."""
    expected = "integers" if dtype.is_integer() else "numbers"
    if not (s.dtype.is_numeric() or s.dtype == pl.String or s.dtype == pl.Boolean):
        raise ReplayError(
            f"replay file {path}: column {s.name!r} ({ours}) must hold {expected}, "
            f"but its type is {s.dtype}"
        )
    out = s.cast(dtype, strict=False)
    bad = out.is_null() & s.is_not_null()
    if s.dtype.is_float():
        bad = bad | s.is_nan().fill_null(False)
        if dtype.is_integer():
            bad = bad | (s != s.round()).fill_null(False)
    if bad.any():
        raise _fail(path, s, ours, expected, bad)
    return out


def _unparsed(s: pl.Series) -> pl.Series:
    """Which strings of s are not date-times (all of them when no format can be inferred)."""
    try:
        parsed = s.str.to_datetime(time_unit="us", strict=False, cache=False)
    except pl.exceptions.PolarsError:
        return s.is_not_null()
    return parsed.is_null() & s.is_not_null()


def _to_ts(s: pl.Series, path: Path) -> pl.Series:
    """Date-times (any unit or zone), ISO 8601 strings or epoch seconds -> naive UTC, in us."""
    expected = "date-times (ISO 8601, 'YYYY-MM-DD HH:MM:SS', or epoch seconds)"
    if s.dtype == pl.String:
        try:
            out = s.str.to_datetime(time_unit="us", strict=True, cache=False)
        except pl.exceptions.PolarsError:
            seconds = s.cast(pl.Float64, strict=False)
            if (seconds.is_null() & s.is_not_null()).any():
                raise _fail(path, s, "ts", expected, _unparsed(s)) from None
            s = seconds
        else:
            s = out
    if s.dtype.is_numeric():
        s = _convert(s, pl.Float64(), "ts", path)
        return (s * 1e6).round().cast(pl.Int64).cast(TS)
    if isinstance(s.dtype, pl.Datetime):
        if s.dtype.time_zone is not None:
            s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return s.cast(TS)
    if s.dtype == pl.Date:
        return s.cast(TS)
    raise ReplayError(
        f"replay file {path}: column {s.name!r} (ts) must hold {expected}, "
        f"but its type is {s.dtype}"
    )


def load(path: Path, mapping: dict[str, str], delay_us: int) -> pl.DataFrame:
    """The file as the simulator's columns (SOURCE_COLUMNS), checked, sorted by (ts, id).

    Columns are found through `mapping` (ours -> theirs), then our names, then the fraud
    handbook's; a label arrives `delay_us` after its transaction (label_ts). A
    ``fraud_scenario`` column (the simulator's truth, 0 to 3; the handbook's
    ``TX_FRAUD_SCENARIO``) is kept when the file has one, else it is 0. What streaming replay
    and the offline commands read, so both see the same rows.
    """
    raw = read_table(path)
    if raw.height == 0:
        raise ReplayError(f"replay file {path}: holds no rows")
    names = _resolve(raw.columns, mapping, path)
    cols = {
        ours: _to_ts(raw[theirs], path)
        if ours == "ts"
        else _convert(raw[theirs], SOURCE_COLUMNS[ours], ours, path)
        for ours, theirs in names.items()
    }
    for ours, s in cols.items():
        if ours != "is_fraud" and s.null_count():
            raise _fail(path, raw[names[ours]], ours, "a value in every row", s.is_null())
    out_of_range = ~cols["ts"].is_between(EARLIEST_TS, LATEST_TS, closed="left")
    if out_of_range.any():
        raise _fail(
            path,
            raw[names["ts"]],
            "ts",
            f"times from {EARLIEST_TS:%Y-%m-%d} to before {LATEST_TS:%Y-%m-%d} (a placeholder "
            "such as 9999-12-31 is no time: drop or fix those rows)",
            out_of_range,
        )
    amounts = cols["amount"]
    bad_amount = ~amounts.is_between(0.0, MAX_AMOUNT).fill_null(True)  # NaN and inf too
    if bad_amount.any():
        raise _fail(
            path, raw[names["amount"]], "amount", f"amounts from 0 to {MAX_AMOUNT:g}", bad_amount
        )
    if "is_fraud" in cols:
        _only(path, raw[names["is_fraud"]], cols["is_fraud"], "is_fraud", [0, 1])
    else:
        cols["is_fraud"] = pl.Series("is_fraud", [None] * raw.height, dtype=pl.Int8)
    scenario = pl.Series("fraud_scenario", [0] * raw.height, dtype=pl.Int8)
    given = next((c for c in SCENARIO_COLUMNS if c in raw.columns), None)
    if given is not None:
        scenario = _convert(raw[given], pl.Int8(), "fraud_scenario", path)
        _only(path, raw[given], scenario, "fraud_scenario", [0, 1, 2, 3])
    cols["fraud_scenario"] = scenario.fill_null(0)
    df = pl.DataFrame({ours: s.alias(ours) for ours, s in cols.items()})
    if "transaction_id" in cols:
        dup = df["transaction_id"].is_duplicated()
        if dup.any():
            raise _fail(path, raw[names["transaction_id"]], "transaction_id", "unique ids", dup)
        df = df.sort("ts", "transaction_id")
    else:
        df = df.sort("ts", maintain_order=True).with_row_index("transaction_id")
    return df.select(
        pl.col("transaction_id").cast(pl.Int64),
        "ts",
        "customer_id",
        "terminal_id",
        "amount",
        "is_fraud",
        "fraud_scenario",
        pl.when(pl.col("is_fraud").is_not_null())
        .then(pl.col("ts") + pl.duration(microseconds=delay_us))
        .alias("label_ts"),
    )


class ReplaySource:
    """A user's transactions, served one calendar day (UTC) at a time from the earliest.

    ``data`` holds every row (sorted), ``n_days`` the number of days from ``start_date`` to
    the last transaction, empty days included. Only the days that have rows are indexed, so a
    stream with long gaps costs nothing for them (``next_day`` skips them).
    """

    def __init__(self, cfg: ReplaySettings, label_delay_days: float) -> None:
        if cfg.path is None:
            raise ReplayError("replay.path is not set: name the Parquet or CSV file to replay")
        self.data = load(cfg.path, cfg.columns, round(label_delay_days * DAY_US))
        ts_us = self.data["ts"].to_physical().to_numpy()
        first_day = int(ts_us[0] // DAY_US)
        self.start_date: dt.date = dt.date(1970, 1, 1) + dt.timedelta(days=first_day)
        self.n_days = int(ts_us[-1] // DAY_US) - first_day + 1
        days, starts = np.unique(ts_us // DAY_US - first_day, return_index=True)
        self._days = days.astype(np.int64)  # the days that have rows, ascending
        self._bounds = np.append(starts, len(ts_us))  # rows of _days[i]: bounds[i]..bounds[i+1]

    def day(self, d: int) -> pl.DataFrame | None:
        """Rows of day d (0 = start_date), sorted by (ts, id); None once past the last day."""
        if d < 0:
            raise ValueError(f"replay day must be >= 0, got {d}")
        if d >= self.n_days:
            return None
        i = int(np.searchsorted(self._days, d))
        if self._days[i] != d:
            return self.data.clear()
        lo, hi = int(self._bounds[i]), int(self._bounds[i + 1])
        return self.data.slice(lo, hi - lo)

    def next_day(self, d: int) -> int | None:
        """The first day >= d that has rows; None when no day after d has any."""
        i = int(np.searchsorted(self._days, d))
        return int(self._days[i]) if i < len(self._days) else None
