"""The fraud handbook's transaction features, bit-identical offline and streaming.

Per transaction i (time t, id) and window w in ``cfg.windows_days``, with D the terminal delay:

- ``amount``; ``is_weekend`` (Saturday/Sunday); ``is_night`` (hour <= 6);
- ``customer_nb_tx_{w}d`` / ``customer_avg_amount_{w}d``: count and mean amount of the
  customer's transactions j with t - w days < ts_j <= t and (ts_j, id_j) <= (t, id): the
  window holds the current transaction, and ties are broken by transaction id;
- ``terminal_nb_tx_{w}d``: the terminal's transactions with t - D - w days < ts_j <= t - D;
- ``terminal_risk_{w}d``: the share of those with a fraud label that arrived by t
  (label_ts_j <= t), 0.0 when there are none. No feature ever sees a label before it arrives.

Then fraudpipe's own (``cfg.extended``), with W the longest window:

- ``customer_amount_ratio_{w}d``: amount over the mean amount of the customer's earlier
  transactions in the window (those above but the current one), -1.0 when there are none (or
  they sum to 0): a card paying far more than it usually does (a stolen card's big spend);
- ``customer_amount_ratio_settled``: amount over the mean amount of the customer's settled
  transactions, those with t - W days < ts_j <= t - D (and before the current one), old enough
  for their labels to have arrived; -1.0 when there are none (or they sum to 0). Unlike the
  windows above, this baseline holds none of the card's latest payments, which a thief may
  have made and no label has yet flagged;
- ``customer_recent_avg_ratio``: the mean amount of the customer's unsettled transactions (the
  rest of the W window, the current one included) over the mean of the settled ones, -1.0
  when either is empty (or the settled ones sum to 0): a card whose spending has just risen;
- ``terminal_first_fraud_days`` / ``terminal_last_fraud_days``: days from the terminal's
  earliest / latest known fraud to t, among its transactions with t - D - W days < ts_j <= t - D
  whose fraud label arrived by t (the ``terminal_risk_{W}d`` frauds), -1.0 when there are none:
  how long a terminal has been known compromised, and whether it still is;
- ``terminal_last_tx_days``: days from the terminal's latest transaction of that window to t
  (D + W when there is none); ``terminal_risk_since_first_fraud``: the share of known frauds
  among the window's transactions from the first known fraud on (-1.0 without one); and
  ``terminal_last_tx_fraud``: 1.0 when the latest of them is a known fraud;
- ``terminal_fraud_avg_amount``: the mean amount of those known frauds, -1.0 when there are
  none. A compromised terminal (a skimmer) defrauds ordinary payments of many cards, while a
  stolen card's big spends make frauds at whatever terminal it is used: this tells the two
  apart.

Everything is counted with sorted arrays and binary searches over int64 (key, time) codes,
never per row, and amounts are summed in integer cents (amounts count to the cent). So a
feature does not depend on which older rows the history happens to hold:
:func:`compute_features` over the whole history and :class:`fraudpipe.history.StreamingFeatures`
over one batch and its slice of the event log agree to the bit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudpipe.config import FeatureSettings
from fraudpipe.schema import LABELS, MAX_AMOUNT, TRANSACTIONS, BadBatch, check

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

_DAY_US = 86_400_000_000
_EPOCH = dt.datetime(1970, 1, 1)
_KEY_LIMIT = 2**63 - 1  # (key, time) codes must stay below this to fit in int64


_CUSTOMER_EXTENDED = ("customer_amount_ratio_settled", "customer_recent_avg_ratio")
_TERMINAL_EXTENDED = (
    "terminal_first_fraud_days",
    "terminal_last_fraud_days",
    "terminal_last_tx_days",
    "terminal_risk_since_first_fraud",
    "terminal_last_tx_fraud",
    "terminal_fraud_avg_amount",
)


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
    if cfg.extended:
        names += [f"customer_amount_ratio_{w}d" for w in ws]
        names += [*_CUSTOMER_EXTENDED, *_TERMINAL_EXTENDED]
    return names


def lookback(cfg: FeatureSettings) -> dt.timedelta:
    """How far before a batch's first transaction its history must reach (terminal windows)."""
    return dt.timedelta(days=cfg.terminal_delay_days + max(_windows(cfg)))


def output_schema(cfg: FeatureSettings) -> dict[str, pl.DataType]:
    """The columns of a features batch: the transaction's, then every feature."""
    extra = [n for n in feature_names(cfg) if n not in TRANSACTIONS]  # `amount` is there already
    return {**TRANSACTIONS, **{n: pl.Float64() for n in extra}}


def valid_transactions(tx: pl.DataFrame, what: str) -> pl.DataFrame:
    """tx as TRANSACTIONS columns; BadBatch on nulls, repeated ids, or an amount outside
    [0, MAX_AMOUNT] (so that integer-cent sums stay exact), naming a row that breaks it."""
    tx = check(tx, TRANSACTIONS, what)
    nulls = [c for c, n in tx.drop("created_at").null_count().row(0, named=True).items() if n]
    if nulls:
        raise BadBatch(f"{what}: null values in {nulls}")
    amount = tx["amount"]
    bad = ~amount.is_between(0.0, MAX_AMOUNT).fill_null(False)  # NaN and inf are outside too
    if bad.any():
        row = tx.filter(bad).row(0, named=True)
        raise BadBatch(
            f"{what}: amount must be a number from 0 to {MAX_AMOUNT:g}; {int(bad.sum())} row(s) "
            f"are not, e.g. transaction {row['transaction_id']} with amount {row['amount']!r}"
        )
    if tx["transaction_id"].n_unique() != tx.height:
        raise BadBatch(f"{what}: transaction_id must be unique")
    return tx


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
    tx = valid_transactions(tx, "transactions")
    labels = check(labels, LABELS, "labels")
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
    return compute_rows(tx, frauds, cfg, rows)


def compute_rows(
    tx: pl.DataFrame, frauds: pl.DataFrame, cfg: FeatureSettings, rows: I64
) -> pl.DataFrame:
    """Features of tx[rows], tx being valid_transactions; frauds holds (transaction_id,
    label_ts) of fraud labels."""
    if rows.size == 0:
        return pl.DataFrame(schema=output_schema(cfg))
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
    customer, customer_extra = _customer_features(tx, ts, rows, ws, delay, qmin, qmax)
    terminal, terminal_extra = _terminal_features(tx, ts, frauds, rows, ws, delay, qmin, qmax)
    for w in ws:
        cols[f"customer_nb_tx_{w}d"], cols[f"customer_avg_amount_{w}d"], _ = customer[w]
    for w in ws:
        cols[f"terminal_nb_tx_{w}d"], cols[f"terminal_risk_{w}d"] = terminal[w]
    if cfg.extended:
        for w in ws:
            cols[f"customer_amount_ratio_{w}d"] = customer[w][2]
        cols.update(customer_extra)
        cols.update(terminal_extra)
    return out.with_columns(pl.Series(name, v, dtype=pl.Float64) for name, v in cols.items())


class _KeyTime:
    """Maps (key, time) pairs to int64 codes ordered by key, then time, for binary search.

    A key's code is 1 + its offset from the smallest key when that fits, else 1 + its rank
    among the distinct keys; keys not among them get code 0, an empty segment, so every
    count for them is 0. A time is its offset from the earliest time, or, if codes would
    still overflow int64 (very many keys over a very long span), its rank among all the
    times this instance will encode: hence every time array to encode is passed up front.
    """

    def __init__(self, keys: I64, times: Sequence[I64]) -> None:
        nonempty = [t for t in times if t.size]
        self._base = min(int(t.min()) for t in nonempty)
        span = max(int(t.max()) for t in nonempty) - self._base + 1
        self._kmin = int(keys.min()) if keys.size else 0
        self._kmax = int(keys.max()) if keys.size else -1
        n_codes = self._kmax - self._kmin + 2
        self._uniq: I64 | None = None
        if n_codes * span > _KEY_LIMIT:
            self._uniq = np.unique(keys)
            n_codes = len(self._uniq) + 1
        self._ranks: I64 | None = None
        if n_codes * span > _KEY_LIMIT:
            self._ranks = np.unique(np.concatenate(nonempty))
            span = len(self._ranks)
        self._span = span

    def encode(self, keys: I64, times: I64, *, known: bool = False) -> I64:
        """Codes of (key, time) pairs; known: every key is one given at construction."""
        if self._uniq is None:
            codes = keys - self._kmin + 1
            if not known:
                codes = np.where((keys >= self._kmin) & (keys <= self._kmax), codes, 0)
        else:
            pos = np.searchsorted(self._uniq, keys)
            hit = self._uniq[np.minimum(pos, len(self._uniq) - 1)] == keys
            codes = np.where(hit, pos + 1, 0)
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


def _count_le(sorted_codes: I64, queries: I64) -> I64:
    """How many sorted codes are <= each query (fast when queries are sorted too)."""
    return np.searchsorted(sorted_codes, queries, side="right")


def _customer_features(
    tx: pl.DataFrame, ts: I64, rows: I64, ws: list[int], delay: int, qmin: int, qmax: int
) -> tuple[dict[int, tuple[F64, F64, F64]], dict[str, F64]]:
    """Per window: count and mean amount of the customer's transactions up to (t, id), and
    the amount over the mean of the earlier ones (-1.0 without any, or when they sum to 0);
    then the settled-history features, by name (see the module's docstring)."""
    keep = (ts > qmin - max(ws) * _DAY_US) & (ts <= qmax)
    at = (np.cumsum(keep) - 1)[rows]  # the query rows among the kept rows
    cust = tx["customer_id"].to_numpy()[keep]
    ids = tx["transaction_id"].to_numpy()[keep]
    cents = np.rint(tx["amount"].to_numpy()[keep] * 100).astype(np.int64)
    t = ts[keep]
    kt = _KeyTime(cust, [t, *(ts[rows] - w * _DAY_US for w in ws), ts[rows] - delay])
    keyed = kt.encode(cust, t, known=True)
    order = _order(keyed, ids)
    sorted_codes = keyed[order]
    csum = np.concatenate(([0], np.cumsum(cents[order])))
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    hi = position[at] + 1  # rows up to and including the query row itself
    by_code = np.argsort(hi)  # queries in code order make the searches fast
    hi, qcust, tq = hi[by_code], cust[at][by_code], t[at][by_code]
    mine = cents[at][by_code]
    out: dict[int, tuple[F64, F64, F64]] = {}
    for w in ws:
        lo = _count_le(sorted_codes, kt.encode(qcust, tq - w * _DAY_US, known=True))
        n = hi - lo
        before = csum[hi] - csum[lo] - mine  # integer cents: exact, whatever the history
        ratio = np.divide(
            mine * (n - 1), before, out=np.full(len(n), -1.0), where=(n > 1) & (before != 0)
        )
        out[w] = (
            _unsort(by_code, n.astype(np.float64)),
            _unsort(by_code, (csum[hi] - csum[lo]) / (n * 100)),
            _unsort(by_code, ratio),
        )
    # settled: ts_j in (t - W, t - D] and before the query row; unsettled: the rest up to it
    settled_lo = _count_le(sorted_codes, kt.encode(qcust, tq - max(ws) * _DAY_US, known=True))
    settled_hi = _count_le(sorted_codes, kt.encode(qcust, tq - delay, known=True))
    settled_hi = np.clip(settled_hi, settled_lo, hi - 1)
    n_settled = settled_hi - settled_lo
    settled = csum[settled_hi] - csum[settled_lo]
    n_recent = hi - settled_hi
    recent = csum[hi] - csum[settled_hi]
    has_settled = (n_settled > 0) & (settled != 0)
    extra = {
        "customer_amount_ratio_settled": np.divide(
            mine * n_settled, settled, out=np.full(len(hi), -1.0), where=has_settled
        ),
        "customer_recent_avg_ratio": np.divide(
            recent * n_settled, settled * n_recent, out=np.full(len(hi), -1.0), where=has_settled
        ),
    }
    return out, {name: _unsort(by_code, v) for name, v in extra.items()}


def _unsort(order: I64, values: F64) -> F64:
    """values[k] belongs to query order[k]: put it back at its query's place."""
    out = np.empty_like(values)
    out[order] = values
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
) -> tuple[dict[int, tuple[F64, F64]], dict[str, F64]]:
    """Per window: count of the terminal's delayed-window transactions and their fraud share;
    then the extended terminal features, by name (see the module's docstring).

    A fraud j counts for time t iff max(ts_j + D, label_ts_j) <= t < ts_j + D + w, so the
    number of frauds is (entered by t) - (left by t), two binary searches per window. Among the
    frauds sorted by (terminal, ts), those of t's longest window are a contiguous run; its
    first (last) one with label_ts_j <= t is found by binary lifting over range minima.
    """
    longest = max(ws)
    keep = (ts > qmin - delay - longest * _DAY_US) & (ts <= qmax - delay)
    hist = tx.filter(pl.Series(keep)).select("transaction_id", "ts", "terminal_id", "amount")
    flagged = (
        frauds.filter(pl.col("label_ts") <= pl.lit(qmax).cast(pl.Datetime("us")))
        .group_by("transaction_id")
        .agg(pl.col("label_ts").min())
        .join(hist, on="transaction_id", how="inner")
    )
    term = hist["terminal_id"].to_numpy()
    t = ts[keep]
    fterm = flagged["terminal_id"].to_numpy()
    fts = flagged["ts"].to_physical().to_numpy()
    enter = np.maximum(fts + delay, flagged["label_ts"].to_physical().to_numpy())
    leave = {w: fts + delay + w * _DAY_US for w in ws}
    tq = ts[rows]
    qterm = tx["terminal_id"].to_numpy()[rows]
    kt = _KeyTime(
        term,
        [
            t,
            tq,
            tq - delay,
            *(tq - delay - w * _DAY_US for w in ws),
            enter,
            *leave.values(),
            fts,
            fts - 1,
        ],
    )
    codes = kt.encode(term, t, known=True)
    by_time = np.argsort(codes)
    sorted_codes, t_sorted = codes[by_time], t[by_time]
    now = kt.encode(qterm, tq)
    by_code = np.argsort(now)  # queries in code order make the searches fast
    now, qterm, tq = now[by_code], qterm[by_code], tq[by_code]
    upto = _count_le(sorted_codes, kt.encode(qterm, tq - delay))
    out: dict[int, tuple[F64, F64]] = {}
    fcents = np.rint(flagged["amount"].to_numpy() * 100).astype(np.int64)
    n_all = bad_all = bad_cents = np.zeros(len(tq), np.int64)
    for w in ws:
        n = upto - _count_le(sorted_codes, kt.encode(qterm, tq - delay - w * _DAY_US))
        live = enter < leave[w]
        entered, entered_cents = _sorted_with_sums(
            kt.encode(fterm[live], enter[live], known=True), fcents[live]
        )
        left, left_cents = _sorted_with_sums(
            kt.encode(fterm[live], leave[w][live], known=True), fcents[live]
        )
        n_entered, n_left = _count_le(entered, now), _count_le(left, now)
        bad = n_entered - n_left
        if w == longest:
            n_all, bad_all = n, bad
            bad_cents = entered_cents[n_entered] - left_cents[n_left]
        risk = np.divide(bad, n, out=np.zeros(len(n), np.float64), where=n > 0)
        out[w] = _unsort(by_code, n.astype(np.float64)), _unsort(by_code, risk)

    # the known frauds of the longest window (ts_j in (t - D - W, t - D], label_ts_j <= t):
    # in (terminal, ts) order, the first and the last of the run [a, b) that has arrived
    fcodes = kt.encode(fterm, fts, known=True)
    order = np.argsort(fcodes, kind="stable")
    fcodes, fts = fcodes[order], fts[order]
    arrived = flagged["label_ts"].to_physical().to_numpy()[order]
    a = _count_le(fcodes, kt.encode(qterm, tq - delay - longest * _DAY_US))
    b = _count_le(fcodes, kt.encode(qterm, tq - delay))
    size = len(fcodes)
    first = _first_at_most(_range_minima(arrived), a, b, tq)
    last = size - 1 - _first_at_most(_range_minima(arrived[::-1]), size - b, size - a, tq)
    known = first < b  # == (last >= a) == (bad_all > 0)
    first_ts = fts[np.minimum(first, size - 1)] if size else tq
    last_ts = fts[np.maximum(last, 0)] if size else tq
    latest = t_sorted[np.maximum(upto - 1, 0)] if len(t_sorted) else tq
    # the window's transactions from the first known fraud on (ts_j >= first_ts)
    n_since = upto - _count_le(sorted_codes, kt.encode(qterm, first_ts - 1))
    beyond = float(delay // _DAY_US + longest)  # no transaction in the window: longer ago
    extra = {
        "terminal_first_fraud_days": np.where(known, (tq - first_ts) / _DAY_US, -1.0),
        "terminal_last_fraud_days": np.where(known, (tq - last_ts) / _DAY_US, -1.0),
        "terminal_last_tx_days": np.where(n_all > 0, (tq - latest) / _DAY_US, beyond),
        "terminal_risk_since_first_fraud": np.divide(
            bad_all, n_since, out=np.full(len(tq), -1.0), where=known
        ),
        "terminal_last_tx_fraud": (known & (n_all > 0) & (last_ts == latest)).astype(np.float64),
        "terminal_fraud_avg_amount": np.divide(
            bad_cents, bad_all * 100, out=np.full(len(tq), -1.0), where=known
        ),
    }
    return out, {name: _unsort(by_code, v) for name, v in extra.items()}


def _sorted_with_sums(codes: I64, cents: I64) -> tuple[I64, I64]:
    """codes sorted, and the running sums of their cents in that order (a leading 0): the
    cents of the first k sorted codes sum to sums[k]."""
    order = np.argsort(codes, kind="stable")
    return codes[order], np.concatenate(([0], np.cumsum(cents[order])))


def _range_minima(values: I64) -> list[I64]:
    """Sparse table: level k holds the minimum of values[i : i + 2**k] at i."""
    levels = [values]
    step = 1
    while 2 * step <= len(values):
        prev = levels[-1]
        levels.append(np.minimum(prev[:-step], prev[step:]))
        step *= 2
    return levels


def _first_at_most(levels: list[I64], a: I64, b: I64, limit: I64) -> I64:
    """Per query, the first index i in [a, b) with values[i] <= limit, or b when none is.

    Binary lifting: from the largest block down, skip a block lying in [a, b) whose minimum
    exceeds the limit; what is left is the first index that does not, or b.
    """
    pos = a.copy()
    for k in range(len(levels) - 1, -1, -1):
        step = 1 << k
        level = levels[k]
        fits = pos + step <= b
        if not fits.any():
            continue
        at = np.minimum(pos, len(level) - 1)
        pos = np.where(fits & (level[at] > limit), pos + step, pos)
    return pos
