"""The fraud handbook's transaction features, bit-identical offline and streaming.

Per transaction i (time t, id) and window w in ``cfg.windows_days``, with D the terminal delay:

- ``amount``; ``is_weekend`` (Saturday/Sunday); ``is_night`` (hour <= 6);
- ``customer_nb_tx_{w}d`` / ``customer_avg_amount_{w}d``: count and mean amount of the
  customer's transactions j with t - w days < ts_j <= t and (ts_j, id_j) <= (t, id): the
  window holds the current transaction, and ties are broken by transaction id;
- ``terminal_nb_tx_{w}d``: the terminal's transactions with t - D - w days < ts_j <= t - D;
- ``terminal_risk_{w}d``: the share of those with a fraud label that arrived by t
  (label_ts_j <= t), 0.0 when there are none. No feature ever sees a label before it arrives.

Everything is counted with sorted arrays and binary searches over int64 (key, time) codes,
never per row, and amounts are summed in integer cents. So a feature does not depend on which
older rows the history happens to hold: :func:`compute_features` over the whole history and
:class:`StreamingFeatures` over one batch and its slice of the event log agree to the bit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudpipe.config import FeatureSettings
from fraudpipe.eventlog import EventLog, Kind, parse_day_dir
from fraudpipe.schema import LABELS, TRANSACTIONS, check

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

_DAY_US = 86_400_000_000
_KEY_LIMIT = 2**63 - 1  # (key, time) codes must stay below this to fit in int64


def _windows(cfg: FeatureSettings) -> list[int]:
    """The windows in days, checked: feature names must be unique and windows non-empty."""
    ws = list(cfg.windows_days)
    if len(set(ws)) != len(ws) or min(ws) < 1:
        raise ValueError(f"windows_days must be distinct whole days >= 1, got {ws}")
    return ws


def feature_names(cfg: FeatureSettings) -> list[str]:
    """The model's feature columns, in the handbook's order (per window: count, then mean/risk)."""
    ws = _windows(cfg)
    names = ["amount", "is_weekend", "is_night"]
    for w in ws:
        names += [f"customer_nb_tx_{w}d", f"customer_avg_amount_{w}d"]
    for w in ws:
        names += [f"terminal_nb_tx_{w}d", f"terminal_risk_{w}d"]
    return names


def lookback(cfg: FeatureSettings) -> dt.timedelta:
    """How far before a batch's first transaction its history must reach (terminal windows)."""
    return dt.timedelta(days=cfg.terminal_delay_days + max(_windows(cfg)))


def _output_schema(cfg: FeatureSettings) -> dict[str, pl.DataType]:
    extra = [n for n in feature_names(cfg) if n not in TRANSACTIONS]  # `amount` is there already
    return {**TRANSACTIONS, **{n: pl.Float64() for n in extra}}


def compute_features(
    tx: pl.DataFrame,
    labels: pl.DataFrame,
    cfg: FeatureSettings,
    query_ids: pl.Series | None = None,
) -> pl.DataFrame:
    """Features of the query rows (all of tx when query_ids is None), history = tx.

    tx holds TRANSACTIONS columns with unique transaction ids; labels holds LABELS columns
    (labels of transactions absent from tx are ignored; a transaction with several labels
    counts as fraud from its first fraud label). Returns the TRANSACTIONS columns followed by
    the features, in the order of tx, or of query_ids when given.
    """
    tx = check(tx, TRANSACTIONS, "transactions")
    labels = check(labels, LABELS, "labels")
    ids = tx["transaction_id"]
    if ids.is_duplicated().any():
        raise ValueError("compute_features: transaction_id must be unique in tx")
    if query_ids is None:
        rows = np.arange(tx.height, dtype=np.int64)
    else:
        found = (
            pl.DataFrame({"transaction_id": query_ids.cast(pl.Int64)})
            .join(
                tx.select("transaction_id").with_row_index("row"),
                on="transaction_id",
                how="left",
                maintain_order="left",
            )
            .get_column("row")
        )
        if found.null_count():
            raise ValueError(f"compute_features: {found.null_count()} query id(s) not in tx")
        rows = found.cast(pl.Int64).to_numpy()
    frauds = labels.filter(pl.col("is_fraud") == 1).select("transaction_id", "label_ts")
    return _compute(tx, frauds, cfg, rows)


def _compute(
    tx: pl.DataFrame, frauds: pl.DataFrame, cfg: FeatureSettings, rows: I64
) -> pl.DataFrame:
    """Features of tx[rows]; frauds holds (transaction_id, label_ts) of fraud labels."""
    if rows.size == 0:
        return pl.DataFrame(schema=_output_schema(cfg))
    ws = _windows(cfg)
    delay = cfg.terminal_delay_days * _DAY_US
    ts = tx["ts"].to_physical().to_numpy()
    tq = ts[rows]
    qmin, qmax = int(tq.min()), int(tq.max())
    out = tx[rows]
    when = out["ts"]
    cols: dict[str, pl.Series | F64] = {
        "is_weekend": (when.dt.weekday() >= 6).cast(pl.Float64),
        "is_night": (when.dt.hour() <= 6).cast(pl.Float64),
    }
    customer = _customer_features(tx, ts, rows, ws, qmin, qmax)
    terminal = _terminal_features(tx, ts, frauds, rows, ws, delay, qmin, qmax)
    for w in ws:
        cols[f"customer_nb_tx_{w}d"], cols[f"customer_avg_amount_{w}d"] = customer[w]
    for w in ws:
        cols[f"terminal_nb_tx_{w}d"], cols[f"terminal_risk_{w}d"] = terminal[w]
    return out.with_columns(pl.Series(name, v, dtype=pl.Float64) for name, v in cols.items())


class _KeyTime:
    """Maps (key, time) pairs to int64 codes ordered by key, then time, for binary search.

    Keys get dense codes (their rank among the distinct keys). Times are offsets from the
    earliest time, or, when codes would overflow int64 (very many keys over a very long
    span), their ranks among every time this instance will encode: hence all time arrays to
    encode are passed up front.
    """

    def __init__(self, keys: I64, times: Sequence[I64]) -> None:
        self.keys = np.sort(pl.Series(keys, dtype=pl.Int64).unique().to_numpy())
        nonempty = [t for t in times if t.size]
        self._base = min(int(t.min()) for t in nonempty)
        span = max(int(t.max()) for t in nonempty) - self._base + 1
        self._ranks: I64 | None = None
        if len(self.keys) * span > _KEY_LIMIT:
            self._ranks = np.unique(np.concatenate(nonempty))
            span = len(self._ranks)
        self._span = span

    def code(self, keys: I64) -> tuple[I64, Mask]:
        """Dense codes of keys, and whether each key is known (unknown ones get code 0)."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), np.bool_)
        pos = np.searchsorted(self.keys, keys)
        known = self.keys[np.minimum(pos, len(self.keys) - 1)] == keys
        return np.where(known, pos, 0), known

    def encode(self, codes: I64, times: I64) -> I64:
        if self._ranks is None:
            offset = times - self._base
        else:
            offset = np.searchsorted(self._ranks, times).astype(np.int64)
        return codes * self._span + offset


def _order(codes: I64, ids: I64) -> I64:
    """Indices sorting codes ascending, equal codes by id (argsort, then fix the rare ties)."""
    order = np.argsort(codes)
    s = codes[order]
    tied = s[1:] == s[:-1]
    if tied.any():
        involved = np.zeros(len(order), np.bool_)
        involved[1:] |= tied
        involved[:-1] |= tied
        at = np.flatnonzero(involved)
        sub = order[at]
        order[at] = sub[np.lexsort((ids[sub], s[at]))]
    return order


def _customer_features(
    tx: pl.DataFrame, ts: I64, rows: I64, ws: list[int], qmin: int, qmax: int
) -> dict[int, tuple[F64, F64]]:
    """Per window: count and mean amount of the customer's transactions up to (t, id)."""
    keep = (ts > qmin - max(ws) * _DAY_US) & (ts <= qmax)
    at = np.cumsum(keep) - 1  # index of a kept tx row among the kept rows
    cust = tx["customer_id"].to_numpy()[keep]
    ids = tx["transaction_id"].to_numpy()[keep]
    cents = np.rint(tx["amount"].to_numpy()[keep] * 100).astype(np.int64)
    t = ts[keep]
    tq = ts[rows]
    kt = _KeyTime(cust, [t, *(tq - w * _DAY_US for w in ws)])
    codes = kt.code(cust)[0]
    keyed = kt.encode(codes, t)
    order = _order(keyed, ids)
    sorted_codes = keyed[order]
    csum = np.concatenate(([0], np.cumsum(cents[order])))
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    hi = position[at[rows]] + 1  # rows up to and including the query row itself
    qcodes = codes[at[rows]]
    out: dict[int, tuple[F64, F64]] = {}
    for w in ws:
        lo = np.searchsorted(sorted_codes, kt.encode(qcodes, tq - w * _DAY_US), side="right")
        n = hi - lo
        out[w] = n.astype(np.float64), (csum[hi] - csum[lo]) / (n * 100)
    return out


def _terminal_features(
    tx: pl.DataFrame,
    ts: I64,
    frauds: pl.DataFrame,
    rows: I64,
    ws: list[int],
    delay: int,
    qmin: int,
    qmax: int,
) -> dict[int, tuple[F64, F64]]:
    """Per window: count of the terminal's delayed-window transactions and their fraud share.

    A fraud j counts for time t iff max(ts_j + D, label_ts_j) <= t < ts_j + D + w, so the
    number of frauds is (entered by t) - (left by t), two binary searches per window.
    """
    keep = (ts > qmin - delay - max(ws) * _DAY_US) & (ts <= qmax - delay)
    hist = tx.filter(pl.Series(keep)).select("transaction_id", "ts", "terminal_id")
    known = (
        frauds.filter(pl.col("label_ts") <= pl.lit(qmax).cast(pl.Datetime("us")))
        .group_by("transaction_id")
        .agg(pl.col("label_ts").min())
        .join(hist, on="transaction_id", how="inner")
    )
    term = hist["terminal_id"].to_numpy()
    t = ts[keep]
    fterm = known["terminal_id"].to_numpy()
    fts = known["ts"].to_physical().to_numpy()
    enter = np.maximum(fts + delay, known["label_ts"].to_physical().to_numpy())
    leave = {w: fts + delay + w * _DAY_US for w in ws}
    tq = ts[rows]
    qterm = tx["terminal_id"].to_numpy()[rows]
    kt = _KeyTime(
        term,
        [t, tq, tq - delay, *(tq - delay - w * _DAY_US for w in ws), enter, *leave.values()],
    )
    sorted_codes = np.sort(kt.encode(kt.code(term)[0], t))
    qcodes, present = kt.code(qterm)
    fcodes = kt.code(fterm)[0]
    now = kt.encode(qcodes, tq)
    upto = np.searchsorted(sorted_codes, kt.encode(qcodes, tq - delay), side="right")
    out: dict[int, tuple[F64, F64]] = {}
    for w in ws:
        start = kt.encode(qcodes, tq - delay - w * _DAY_US)
        n = np.where(present, upto - np.searchsorted(sorted_codes, start, side="right"), 0)
        live = enter < leave[w]
        entered = np.sort(kt.encode(fcodes[live], enter[live]))
        left = np.sort(kt.encode(fcodes[live], leave[w][live]))
        bad = np.searchsorted(entered, now, side="right") - np.searchsorted(left, now, side="right")
        bad = np.where(present, bad, 0)
        risk = np.divide(bad, n, out=np.zeros(len(n), np.float64), where=n > 0)
        out[w] = n.astype(np.float64), risk
    return out


@dataclass
class _Part:
    """One log file's rows held in memory: exactly its rows with time > kept_from."""

    rows: pl.DataFrame
    kept_from: int
    last: int  # the file's latest time (-1 for an empty file)


class _LogCache:
    """The rows of one event-log kind held in memory file by file, over a sliding window."""

    def __init__(
        self, log: EventLog, kind: Kind, time_col: str, keep: pl.Expr | None = None
    ) -> None:
        self._log = log
        self._kind: Kind = kind
        self._time = time_col
        self._schema = TRANSACTIONS if kind == "transactions" else LABELS
        self._keep = keep
        self._parts: dict[Path, _Part] = {}

    def rows(self, lo: int, hi: dt.datetime) -> pl.DataFrame:
        """Every held row with time > lo, after loading what is missing from files up to hi.

        A file is read once; it is read again only if an earlier window needs rows that
        were evicted. Rows later than hi may come along (gather runs ahead); callers ignore them.
        """
        paths = self._log.files(self._kind, dt.date.min, hi.date())
        listed = set(paths)
        for path in [p for p in self._parts if p not in listed]:
            day = parse_day_dir(path.parent.name)
            if day is not None and day <= hi.date():  # pruned by gather
                del self._parts[path]
        frames = []
        for path in paths:
            part = self._parts.get(path)
            if part is None or (lo < part.kept_from and part.last > lo):
                part = self._read(path, lo)
                if part is None:
                    continue
                self._parts[path] = part
            if part.rows.height:
                frames.append(part.rows)
        if not frames:
            return pl.DataFrame(schema={c: self._schema[c] for c in self._columns()})
        return pl.concat(frames)

    def _columns(self) -> list[str]:
        return (
            list(TRANSACTIONS) if self._kind == "transactions" else ["transaction_id", "label_ts"]
        )

    def _read(self, path: Path, lo: int) -> _Part | None:
        try:
            df = check(pl.read_parquet(path), self._schema, str(path))
        except FileNotFoundError:  # pruned since listed: older than any window
            return None
        if self._keep is not None:
            df = df.filter(self._keep)
        df = df.select(self._columns())
        times = df[self._time].to_physical()
        last = -1 if df.is_empty() else int(times.max())  # type: ignore[arg-type]
        return _Part(df.filter(times > lo), lo, last)

    def evict(self, lo: int) -> None:
        """Drop rows with time <= lo (older than any later batch needs)."""
        for part in self._parts.values():
            if part.kept_from < lo:
                if part.rows.height:
                    part.rows = part.rows.filter(pl.col(self._time).to_physical() > lo)
                part.kept_from = lo


class StreamingFeatures:
    """Features of one raw-transactions batch, with history from the event log.

    The history is read from the log (not from the batches this replica happened to see), so
    any replica computes the same features for a batch, in any order, and again after a crash:
    exactly :func:`compute_features` over the whole log, restricted to the batch. Log files are
    cached by path; rows older than the current batch's lookback are evicted, and reloaded if
    an older batch comes later. Labels are assumed never to precede their transaction.
    """

    def __init__(self, log: EventLog, cfg: FeatureSettings) -> None:
        self._cfg = cfg
        self._lookback_us = lookback(cfg) // dt.timedelta(microseconds=1)
        self._tx = _LogCache(log, "transactions", "ts")
        self._frauds = _LogCache(log, "labels", "label_ts", pl.col("is_fraud") == 1)

    def compute(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The batch's rows (same order) with their features."""
        batch = check(batch, TRANSACTIONS, "raw-transactions batch")
        if batch.is_empty():
            return pl.DataFrame(schema=_output_schema(self._cfg))
        ids = batch["transaction_id"]
        if ids.is_duplicated().any():
            raise ValueError("raw-transactions batch: transaction_id must be unique")
        first = batch["ts"].to_physical().min()
        hi = batch["ts"].max()
        assert isinstance(first, int) and isinstance(hi, dt.datetime)
        lo = first - self._lookback_us
        hist = self._tx.rows(lo, hi).filter(~pl.col("transaction_id").is_in(ids.implode()))
        if hist["transaction_id"].is_duplicated().any():  # a batch logged under two names
            hist = hist.unique("transaction_id", keep="first")
        frauds = self._frauds.rows(lo, hi)
        out = _compute(pl.concat([batch, hist]), frauds, self._cfg, np.arange(batch.height))
        self._tx.evict(lo)
        self._frauds.evict(lo)
        return out
