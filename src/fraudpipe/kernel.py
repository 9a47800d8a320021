"""The feature kernel, written once against the array API standard (numpy, cupy, strict).

Every function takes the namespace ``xp`` (``Device.xp``: numpy or cupy through
array_api_compat) and only calls what the standard defines: integer and boolean indexing,
``take``, ``argsort``, ``searchsorted``, ``cumulative_sum``, ``where``... Nothing is scattered
(``out[idx] = v``: an inverse permutation is taken instead), no numpy keyword is used
(``np.divide(where=)``, ``argsort(kind=)``), and integer arrays are made float only where a
value is final, so every namespace computes the same bits. ``tests/test_kernel.py`` runs it
under ``array_api_strict``, which refuses anything outside the standard.

What each feature means is in :mod:`fraudpipe.features`; how they are counted (sorted int64
(key, time) codes and binary searches, amounts in integer cents) is said here, beside the code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Array = Any  # an array of whichever namespace computes (numpy, cupy, array_api_strict)

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
_KEY_LIMIT = 2**63 - 1  # (key, time) codes must stay below this to fit in int64
_THURSDAY = 3  # 1970-01-01, counting Monday as 0


@dataclass(frozen=True)
class Inputs:
    """A history of transactions (int64 arrays, one value per row; unique ids), the rows to
    compute (indices into it), and the fraud labels known (transaction id, label time)."""

    ts: Array  # microseconds since the epoch
    transaction_id: Array
    customer_id: Array
    terminal_id: Array
    cents: Array  # the amount in cents (amounts count to the cent)
    rows: Array
    fraud_id: Array
    fraud_label_ts: Array


def features(
    xp: Any, d: Inputs, windows: Sequence[int], delay_days: int, extended: bool
) -> dict[str, Array]:
    """Every feature of the rows d.rows, by name, as float64 arrays in the order of d.rows
    (except ``amount``, the transaction's own column)."""
    ws = list(windows)
    delay = delay_days * DAY_US
    tq = d.ts[d.rows]
    qmin, qmax = int(xp.min(tq)), int(xp.max(tq))
    day = tq // DAY_US  # floor division: right for times before 1970 too
    cols: dict[str, Array] = {
        "is_weekend": _f64(xp, (day + _THURSDAY) % 7 >= 5),
        "is_night": _f64(xp, (tq - day * DAY_US) // HOUR_US <= 6),
    }
    customer, customer_extra = _customer(xp, d, ws, delay, qmin, qmax)
    terminal, terminal_extra = _terminal(xp, d, ws, delay, qmin, qmax)
    for w in ws:
        cols[f"customer_nb_tx_{w}d"], cols[f"customer_avg_amount_{w}d"], _ = customer[w]
    for w in ws:
        cols[f"terminal_nb_tx_{w}d"], cols[f"terminal_risk_{w}d"] = terminal[w]
    if extended:
        for w in ws:
            cols[f"customer_amount_ratio_{w}d"] = customer[w][2]
        cols.update(customer_extra)
        cols.update(terminal_extra)
    return cols


def _f64(xp: Any, x: Array) -> Array:
    return xp.astype(x, xp.float64)


def _ratio(xp: Any, num: Array, den: Array, ok: Array, otherwise: float) -> Array:
    """num / den (integers, divided as float64) where ok, else `otherwise`."""
    safe = xp.where(ok, den, xp.ones_like(den))
    return xp.where(ok, _f64(xp, num) / _f64(xp, safe), otherwise)


def _count_le(xp: Any, sorted_codes: Array, queries: Array) -> Array:
    """How many sorted codes are <= each query (fast when queries are sorted too)."""
    return xp.searchsorted(sorted_codes, queries, side="right")


def _inverse(xp: Any, order: Array) -> Array:
    """The inverse permutation: values[inverse] puts values[k], which belongs to order[k],
    back at order[k] (``out[order] = values`` without scattering)."""
    return xp.argsort(order, stable=False)


class _KeyTime:
    """Maps (key, time) pairs to int64 codes ordered by key, then time, for binary search.

    A key's code is 1 + its offset from the smallest key when that fits, else 1 + its rank
    among the distinct keys; keys not among them get code 0, an empty segment, so every
    count for them is 0. A time is its offset from the earliest time, or, if codes would
    still overflow int64 (very many keys over a very long span), its rank among all the
    times this instance will encode: hence every time array to encode is passed up front.
    """

    def __init__(self, xp: Any, keys: Array, times: Sequence[Array]) -> None:
        self.xp = xp
        nonempty = [t for t in times if t.shape[0]]
        self._base = min(int(xp.min(t)) for t in nonempty)
        span = max(int(xp.max(t)) for t in nonempty) - self._base + 1
        self._kmin = int(xp.min(keys)) if keys.shape[0] else 0
        self._kmax = int(xp.max(keys)) if keys.shape[0] else -1
        n_codes = self._kmax - self._kmin + 2
        self._uniq: Array | None = None
        if n_codes * span > _KEY_LIMIT:
            self._uniq = xp.sort(xp.unique_values(keys))
            n_codes = self._uniq.shape[0] + 1
        self._ranks: Array | None = None
        if n_codes * span > _KEY_LIMIT:
            self._ranks = xp.sort(xp.unique_values(xp.concat(nonempty)))
            span = self._ranks.shape[0]
        self._span = span

    def encode(self, keys: Array, times: Array, *, known: bool = False) -> Array:
        """Codes of (key, time) pairs; known: every key is one given at construction."""
        xp = self.xp
        if self._uniq is None:
            codes = keys - (self._kmin - 1)
            if not known:
                inside = (keys >= self._kmin) & (keys <= self._kmax)
                codes = xp.where(inside, codes, xp.zeros_like(codes))
        else:
            pos = xp.searchsorted(self._uniq, keys)
            hit = self._uniq[xp.minimum(pos, self._uniq.shape[0] - 1)] == keys
            codes = xp.where(hit, pos + 1, xp.zeros_like(pos))
        if self._ranks is None:
            offset = times - self._base
        else:
            offset = xp.astype(xp.searchsorted(self._ranks, times), xp.int64)
        return codes * self._span + offset


def _order(xp: Any, codes: Array, ids: Array) -> tuple[Array, Array, Array | None]:
    """Indices sorting codes ascending, equal codes by id (a sort, then the rare ties put in
    id order by two stable sorts of just those); with them, the sorted codes and, when there
    are ties, the positions in that order of the tied rows (for :func:`_position`)."""
    order = xp.argsort(codes, stable=False)
    s = codes[order]
    tied = s[1:] == s[:-1]
    if not bool(xp.any(tied)):
        return order, s, None
    no = xp.zeros((1,), dtype=xp.bool)
    involved = xp.concat([tied, no]) | xp.concat([no, tied])
    sub, s_sub = order[involved], s[involved]
    by_id = xp.argsort(ids[sub])
    order = xp.asarray(order, copy=True)
    order[involved] = sub[by_id][xp.argsort(s_sub[by_id])]
    return order, s, xp.nonzero(involved)[0]


def _position(
    xp: Any, order: Array, sorted_codes: Array, tied_at: Array | None, rows: Array, codes: Array
) -> Array:
    """Where each of rows (whose codes are codes) lies in order: the last place of its code
    when the code is not tied, else found among the tied rows (an inverse permutation without
    scattering, and without sorting all of order again)."""
    pos = xp.searchsorted(sorted_codes, codes, side="right") - 1
    if tied_at is None:
        return pos
    tied_rows = order[tied_at]
    by_row = xp.argsort(tied_rows, stable=False)
    tied_sorted = tied_rows[by_row]
    k = xp.minimum(xp.searchsorted(tied_sorted, rows), tied_sorted.shape[0] - 1)
    return xp.where(tied_sorted[k] == rows, tied_at[by_row][k], pos)


def _customer(
    xp: Any, d: Inputs, ws: list[int], delay: int, qmin: int, qmax: int
) -> tuple[dict[int, tuple[Array, Array, Array]], dict[str, Array]]:
    """Per window: count and mean amount of the customer's transactions up to (t, id), and
    the amount over the mean of the earlier ones (-1.0 without any, or when they sum to 0);
    then the settled-history features, by name."""
    keep = (d.ts > qmin - max(ws) * DAY_US) & (d.ts <= qmax)
    at = (xp.cumulative_sum(xp.astype(keep, xp.int64)) - 1)[d.rows]  # queries among the kept
    cust, ids, cents, t = d.customer_id[keep], d.transaction_id[keep], d.cents[keep], d.ts[keep]
    tq_all = t[at]
    kt = _KeyTime(xp, cust, [t, *(tq_all - w * DAY_US for w in ws), tq_all - delay])
    keyed = kt.encode(cust, t, known=True)
    order, sorted_codes, tied_at = _order(xp, keyed, ids)
    csum = xp.cumulative_sum(cents[order], include_initial=True)
    # rows up to and including the query row itself
    hi = _position(xp, order, sorted_codes, tied_at, at, keyed[at]) + 1
    by_code = xp.argsort(hi, stable=False)  # queries in code order make the searches fast
    back = _inverse(xp, by_code)
    hi, qcust, tq = hi[by_code], cust[at][by_code], tq_all[by_code]
    mine = cents[at][by_code]
    out: dict[int, tuple[Array, Array, Array]] = {}
    for w in ws:
        lo = _count_le(xp, sorted_codes, kt.encode(qcust, tq - w * DAY_US, known=True))
        n = hi - lo
        total = csum[hi] - csum[lo]  # integer cents: exact, whatever the history
        before = total - mine
        ratio = _ratio(xp, mine * (n - 1), before, (n > 1) & (before != 0), -1.0)
        mean = _f64(xp, total) / _f64(xp, n * 100)
        out[w] = (_f64(xp, n)[back], mean[back], ratio[back])
    # settled: ts_j in (t - W, t - D] and before the query row; unsettled: the rest up to it
    settled_lo = _count_le(xp, sorted_codes, kt.encode(qcust, tq - max(ws) * DAY_US, known=True))
    settled_hi = _count_le(xp, sorted_codes, kt.encode(qcust, tq - delay, known=True))
    settled_hi = xp.minimum(xp.maximum(settled_hi, settled_lo), hi - 1)
    n_settled = settled_hi - settled_lo
    settled = csum[settled_hi] - csum[settled_lo]
    n_recent = hi - settled_hi
    recent = csum[hi] - csum[settled_hi]
    has_settled = (n_settled > 0) & (settled != 0)
    extra = {
        "customer_amount_ratio_settled": _ratio(xp, mine * n_settled, settled, has_settled, -1.0),
        "customer_recent_avg_ratio": _ratio(
            xp, recent * n_settled, settled * n_recent, has_settled, -1.0
        ),
    }
    return out, {name: v[back] for name, v in extra.items()}


def _flagged(xp: Any, d: Inputs, keep: Array, qmax: int) -> tuple[Array, Array]:
    """The history rows (indices among those kept) that a fraud label arrived for by qmax,
    and each one's first such label time."""
    arrived = d.fraud_label_ts <= qmax
    fid, label = d.fraud_id[arrived], d.fraud_label_ts[arrived]
    hid = d.transaction_id[keep]
    if not hid.shape[0] or not fid.shape[0]:
        return xp.zeros((0,), dtype=xp.int64), xp.zeros((0,), dtype=xp.int64)
    by_label = xp.argsort(label)
    by_id = by_label[xp.argsort(fid[by_label])]  # by id, then label time
    fid, label = fid[by_id], label[by_id]
    first = xp.concat([xp.ones((1,), dtype=xp.bool), fid[1:] != fid[:-1]])
    fid, label = fid[first], label[first]
    ho = xp.argsort(hid, stable=False)
    pos = xp.minimum(xp.searchsorted(hid[ho], fid), hid.shape[0] - 1)
    hit = hid[ho][pos] == fid
    return ho[pos[hit]], label[hit]


def _terminal(
    xp: Any, d: Inputs, ws: list[int], delay: int, qmin: int, qmax: int
) -> tuple[dict[int, tuple[Array, Array]], dict[str, Array]]:
    """Per window: count of the terminal's delayed-window transactions and their fraud share;
    then the extended terminal features, by name.

    A fraud j counts for time t iff max(ts_j + D, label_ts_j) <= t < ts_j + D + w, so the
    number of frauds is (entered by t) - (left by t), two binary searches per window. Among the
    frauds sorted by (terminal, ts), those of t's longest window are a contiguous run; its
    first (last) one with label_ts_j <= t is found by binary lifting over range minima.
    """
    longest = max(ws)
    keep = (d.ts > qmin - delay - longest * DAY_US) & (d.ts <= qmax - delay)
    term, t = d.terminal_id[keep], d.ts[keep]
    fraud_rows, fraud_label = _flagged(xp, d, keep, qmax)
    fterm, fts, fcents = term[fraud_rows], t[fraud_rows], d.cents[keep][fraud_rows]
    enter = xp.maximum(fts + delay, fraud_label)
    leave = {w: fts + (delay + w * DAY_US) for w in ws}
    tq, qterm = d.ts[d.rows], d.terminal_id[d.rows]
    kt = _KeyTime(
        xp,
        term,
        [
            t,
            tq,
            tq - delay,
            *(tq - (delay + w * DAY_US) for w in ws),
            enter,
            *leave.values(),
            fts,
            fts - 1,
        ],
    )
    codes = kt.encode(term, t, known=True)
    by_time = xp.argsort(codes, stable=False)
    sorted_codes, t_sorted = codes[by_time], t[by_time]
    now = kt.encode(qterm, tq)
    by_code = xp.argsort(now, stable=False)  # queries in code order make the searches fast
    back = _inverse(xp, by_code)
    now, qterm, tq = now[by_code], qterm[by_code], tq[by_code]
    upto = _count_le(xp, sorted_codes, kt.encode(qterm, tq - delay))
    out: dict[int, tuple[Array, Array]] = {}
    zeros = xp.zeros(tq.shape, dtype=xp.int64)
    n_all, bad_all, bad_cents = zeros, zeros, zeros
    for w in ws:
        n = upto - _count_le(xp, sorted_codes, kt.encode(qterm, tq - (delay + w * DAY_US)))
        live = enter < leave[w]
        entered, entered_cents = _sorted_with_sums(
            xp, kt.encode(fterm[live], enter[live], known=True), fcents[live]
        )
        left, left_cents = _sorted_with_sums(
            xp, kt.encode(fterm[live], leave[w][live], known=True), fcents[live]
        )
        n_entered, n_left = _count_le(xp, entered, now), _count_le(xp, left, now)
        bad = n_entered - n_left
        if w == longest:
            n_all, bad_all = n, bad
            bad_cents = entered_cents[n_entered] - left_cents[n_left]
        out[w] = _f64(xp, n)[back], _ratio(xp, bad, n, n > 0, 0.0)[back]

    # the known frauds of the longest window (ts_j in (t - D - W, t - D], label_ts_j <= t):
    # in (terminal, ts) order, the first and the last of the run [a, b) that has arrived
    fcodes = kt.encode(fterm, fts, known=True)
    order = xp.argsort(fcodes)
    fcodes, fts, arrived = fcodes[order], fts[order], fraud_label[order]
    a = _count_le(xp, fcodes, kt.encode(qterm, tq - (delay + longest * DAY_US)))
    b = _count_le(xp, fcodes, kt.encode(qterm, tq - delay))
    size = fcodes.shape[0]
    first = _first_at_most(xp, _range_minima(xp, arrived), a, b, tq)
    flipped = _range_minima(xp, xp.flip(arrived))
    last = (size - 1) - _first_at_most(xp, flipped, size - b, size - a, tq)
    known = first < b  # == (last >= a) == (bad_all > 0)
    first_ts = fts[xp.minimum(first, size - 1)] if size else tq
    last_ts = fts[xp.maximum(last, 0)] if size else tq
    latest = t_sorted[xp.maximum(upto - 1, 0)] if t_sorted.shape[0] else tq
    # the window's transactions from the first known fraud on (ts_j >= first_ts)
    n_since = upto - _count_le(xp, sorted_codes, kt.encode(qterm, first_ts - 1))
    beyond = float(delay // DAY_US + longest)  # no transaction in the window: longer ago
    extra = {
        "terminal_first_fraud_days": xp.where(known, _f64(xp, tq - first_ts) / DAY_US, -1.0),
        "terminal_last_fraud_days": xp.where(known, _f64(xp, tq - last_ts) / DAY_US, -1.0),
        "terminal_last_tx_days": xp.where(n_all > 0, _f64(xp, tq - latest) / DAY_US, beyond),
        "terminal_risk_since_first_fraud": _ratio(xp, bad_all, n_since, known, -1.0),
        "terminal_last_tx_fraud": _f64(xp, known & (n_all > 0) & (last_ts == latest)),
        "terminal_fraud_avg_amount": _ratio(xp, bad_cents, bad_all * 100, known, -1.0),
    }
    return out, {name: v[back] for name, v in extra.items()}


def _sorted_with_sums(xp: Any, codes: Array, cents: Array) -> tuple[Array, Array]:
    """codes sorted, and the running sums of their cents in that order (a leading 0): the
    cents of the first k sorted codes sum to sums[k]."""
    order = xp.argsort(codes)
    return codes[order], xp.cumulative_sum(cents[order], include_initial=True)


def _range_minima(xp: Any, values: Array) -> list[Array]:
    """Sparse table: level k holds the minimum of values[i : i + 2**k] at i."""
    levels = [values]
    step = 1
    while 2 * step <= values.shape[0]:
        prev = levels[-1]
        levels.append(xp.minimum(prev[:-step], prev[step:]))
        step *= 2
    return levels


def _first_at_most(xp: Any, levels: list[Array], a: Array, b: Array, limit: Array) -> Array:
    """Per query, the first index i in [a, b) with values[i] <= limit, or b when none is.

    Binary lifting: from the largest block down, skip a block lying in [a, b) whose minimum
    exceeds the limit; what is left is the first index that does not, or b.
    """
    pos = a
    for k in range(len(levels) - 1, -1, -1):
        step = 1 << k
        level = levels[k]
        fits = pos + step <= b
        if not bool(xp.any(fits)):
            continue
        at = xp.minimum(pos, level.shape[0] - 1)
        pos = xp.where(fits & (level[at] > limit), pos + step, pos)
    return pos
