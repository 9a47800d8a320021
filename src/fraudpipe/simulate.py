"""Seeded, vectorised transaction simulator after the fraud handbook (Le Borgne et al., ch. 3).

Customers and terminals sit on a 100 x 100 square; a customer pays at the terminals within
``radius``. Each simulated day every customer makes Poisson(mean_nb_tx_per_day) payments at
N(noon, 20000 s) times of day with N(mean, mean/2) amounts. Three fraud scenarios label them:

1. the amount exceeds ``large_amount_threshold``;
2. every day a few terminals are compromised for the next ``terminal_compromise_days`` days:
   all payments there are fraud;
3. every day a few customers are compromised for ``customer_compromise_days`` days: each of
   their payments in that window is, with probability ``compromised_customer_fraction``,
   fraud with its amount multiplied by ``compromised_amount_factor``.

Difficulty knobs, all off by default (the handbook's stream, bit for bit): ``scenarios`` turns
scenarios off; ``amount_overlap`` blurs scenario 1's threshold and pulls scenario 3's factor
toward 1, so fraud amounts overlap genuine ones; ``label_noise`` flips that share of the
reported labels (``is_fraud``), while ``fraud_scenario`` keeps the truth for evaluation.

``Simulator.day(d)`` is a pure function of (settings, label delay, d): every random draw comes
from a generator seeded with (seed, d, purpose), so a restarted gather regenerates any day alone
and gets the same rows, whatever it generated before.
"""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np
import numpy.typing as npt
import polars as pl

from fraudpipe.config import SimulatorSettings
from fraudpipe.schema import TS

DAY_US = 86_400_000_000
# transaction_id = day * MAX_TX_PER_DAY + rank of the transaction within its day (by ts):
# unique across days as long as no day holds more rows, and valid up to day 9.2e10.
MAX_TX_PER_DAY = 10**8
_INDEX_BITS = 27  # 2**27 > MAX_TX_PER_DAY and 2**37 > DAY_US: (tod, index) packs into a uint64

_EPOCH = dt.date(1970, 1, 1)
_TIME_MEAN_S = 43_200.0
_TIME_STD_S = 20_000.0
# Terminal/customer distance test works on chunks of about this many pairs (memory bound).
_PAIRS_PER_CHUNK = 4_000_000

# Stream tags: one independent random stream per (seed, day, purpose).
_PROFILES = 0
_TRANSACTIONS = 1
_TERMINAL_PICK = 2
_CUSTOMER_PICK = 3
_SCENARIO_3 = 4
_SCENARIO_1 = 5  # drawn only when amount_overlap > 0
_LABEL_NOISE = 6  # drawn only when label_noise > 0
# Scenario 1 under amount_overlap o ranks amounts by log(amount) + o * this * N(0, 1).
_OVERLAP_LOG_SD = 1.0

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

SOURCE_COLUMNS: dict[str, pl.DataType] = {
    "transaction_id": pl.Int64(),
    "ts": TS,
    "customer_id": pl.Int64(),
    "terminal_id": pl.Int64(),
    "amount": pl.Float64(),
    "is_fraud": pl.Int8(),
    "fraud_scenario": pl.Int8(),
    "label_ts": TS,
}


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one (seed, stream...) key; negative seeds map to distinct entropy."""
    return np.random.default_rng([seed % 2**64, *stream])


@functools.lru_cache(maxsize=1024)
def _pick(seed: int, day: int, tag: int, population: int, k: int) -> Int64Array:
    """The k ids (of 0..population-1) compromised on ``day``; cached, read-only."""
    picked = _rng(seed, day, tag).choice(population, size=min(k, population), replace=False)
    out = np.sort(picked.astype(np.int64))
    out.setflags(write=False)
    return out


def _terminals_within(
    customer_xy: FloatArray, terminal_xy: FloatArray, radius: float
) -> tuple[Int64Array, Int64Array]:
    """CSR (indptr, indices) of the terminals strictly within ``radius`` of each customer.

    Customers are visited in x order, in chunks, and only against the terminals whose x lies in
    the chunk's x range widened by the radius, so memory and time stay bounded.
    """
    n_customers = len(customer_xy)
    c_order = np.argsort(customer_xy[:, 0], kind="stable")
    t_order = np.argsort(terminal_xy[:, 0], kind="stable")
    t_sorted_x = terminal_xy[t_order, 0]
    chunk = max(1, _PAIRS_PER_CHUNK // max(1, len(terminal_xy)))
    r2 = radius * radius
    cust_parts: list[Int64Array] = []
    term_parts: list[Int64Array] = []
    for start in range(0, n_customers, chunk):
        cust = c_order[start : start + chunk]
        cxy = customer_xy[cust]
        lo = np.searchsorted(t_sorted_x, cxy[:, 0].min() - radius, side="left")
        hi = np.searchsorted(t_sorted_x, cxy[:, 0].max() + radius, side="right")
        term = t_order[lo:hi]
        txy = terminal_xy[term]
        d2 = (cxy[:, None, 0] - txy[None, :, 0]) ** 2 + (cxy[:, None, 1] - txy[None, :, 1]) ** 2
        rows, cols = np.nonzero(d2 < r2)
        cust_parts.append(cust[rows].astype(np.int64))
        term_parts.append(term[cols].astype(np.int64))
    cust_all = np.concatenate(cust_parts) if cust_parts else np.empty(0, np.int64)
    term_all = np.concatenate(term_parts) if term_parts else np.empty(0, np.int64)
    order = np.lexsort((term_all, cust_all))
    indptr = np.zeros(n_customers + 1, dtype=np.int64)
    np.cumsum(np.bincount(cust_all, minlength=n_customers), out=indptr[1:])
    return indptr, term_all[order]


def _time_of_day_us(rng: np.random.Generator, n: int) -> Int64Array:
    """n times of day in microseconds, N(noon, 20000 s) redrawn until inside [0, 1 day)."""
    out = np.floor(rng.normal(_TIME_MEAN_S, _TIME_STD_S, n) * 1e6).astype(np.int64)
    bad = np.flatnonzero((out < 0) | (out >= DAY_US))
    while bad.size:
        out[bad] = np.floor(rng.normal(_TIME_MEAN_S, _TIME_STD_S, bad.size) * 1e6)
        bad = bad[(out[bad] < 0) | (out[bad] >= DAY_US)]
    return out


def _check_day(d: int) -> None:
    """Days count from start_date; there is no day before it."""
    if d < 0:
        raise ValueError(f"simulated day must be >= 0, got {d}")


class Simulator:
    """An endless, seeded source of days of transactions with their fraud labels.

    The profiles are public for inspection: ``customer_xy``, ``mean_amount``, ``std_amount``,
    ``mean_nb_tx_per_day`` (per customer), ``terminal_xy``, and the customers' reachable
    terminals as CSR arrays ``terminal_indptr`` / ``terminal_indices``.
    """

    def __init__(self, cfg: SimulatorSettings, label_delay_days: float) -> None:
        self.cfg = cfg
        self.start_date: dt.date = cfg.start_date
        self._delay_us = round(label_delay_days * DAY_US)
        rng = _rng(cfg.seed, _PROFILES)
        self.customer_xy: FloatArray = rng.uniform(0, 100, (cfg.n_customers, 2))
        self.mean_amount: FloatArray = rng.uniform(5, 100, cfg.n_customers)
        self.std_amount: FloatArray = self.mean_amount / 2
        self.mean_nb_tx_per_day: FloatArray = rng.uniform(0, 4, cfg.n_customers)
        self.terminal_xy: FloatArray = rng.uniform(0, 100, (cfg.n_terminals, 2))
        self.terminal_indptr, self.terminal_indices = _terminals_within(
            self.customer_xy, self.terminal_xy, cfg.radius
        )
        self._n_available = np.diff(self.terminal_indptr)

    def available_terminals(self, customer_id: int) -> Int64Array:
        """The terminals a customer may pay at (sorted ids)."""
        return self.terminal_indices[
            self.terminal_indptr[customer_id] : self.terminal_indptr[customer_id + 1]
        ]

    def _active(
        self, d: int, scenario: int, tag: int, population: int, per_day: int, days: int
    ) -> Int64Array:
        """Union of the picks of days d-days+1..d (never before day 0), sorted; none while the
        scenario is off."""
        _check_day(d)
        if per_day == 0 or scenario not in self.cfg.scenarios:
            return np.empty(0, dtype=np.int64)
        picks = [
            _pick(self.cfg.seed, k, tag, population, per_day)
            for k in range(max(0, d - days + 1), d + 1)
        ]
        return np.unique(np.concatenate(picks))

    def compromised_terminals(self, d: int) -> Int64Array:
        """Terminals under scenario 2 on day d: all their transactions that day are fraud."""
        c = self.cfg
        return self._active(
            d,
            2,
            _TERMINAL_PICK,
            c.n_terminals,
            c.compromised_terminals_per_day,
            c.terminal_compromise_days,
        )

    def compromised_customers(self, d: int) -> Int64Array:
        """Customers under scenario 3 on day d."""
        c = self.cfg
        return self._active(
            d,
            3,
            _CUSTOMER_PICK,
            c.n_customers,
            c.compromised_customers_per_day,
            c.customer_compromise_days,
        )

    def next_day(self, d: int) -> int:
        """The first day >= d that may have rows: every simulated day may."""
        return d

    def day(self, d: int) -> pl.DataFrame:
        """Every transaction of simulated day d (0 = start_date), sorted by (ts, id)."""
        _check_day(d)
        c = self.cfg
        rng = _rng(c.seed, d, _TRANSACTIONS)
        n = rng.poisson(self.mean_nb_tx_per_day)
        n[self._n_available == 0] = 0  # a customer with no terminal in reach cannot pay
        total = int(n.sum())
        if total >= MAX_TX_PER_DAY:
            raise ValueError(
                f"simulated day {d} has {total} transactions, more than the {MAX_TX_PER_DAY} "
                "that transaction ids allow per day; lower gather.simulator.n_customers"
            )
        cust = np.repeat(np.arange(c.n_customers, dtype=np.int64), n)
        tod = _time_of_day_us(rng, total)
        mean = self.mean_amount[cust]
        amount = rng.normal(mean, self.std_amount[cust])
        neg = np.flatnonzero(amount < 0)
        amount[neg] = rng.uniform(0, 2 * mean[neg])
        amount = np.round(amount, 2)
        term = self.terminal_indices[
            self.terminal_indptr[cust] + rng.integers(0, self._n_available[cust])
        ]

        at_risk = np.flatnonzero(np.isin(cust, self.compromised_customers(d)))
        hit = _rng(c.seed, d, _SCENARIO_3).random(at_risk.size) < c.compromised_customer_fraction
        s3 = np.zeros(total, dtype=bool)
        s3[at_risk[hit]] = True
        overlap = c.amount_overlap
        factor = c.compromised_amount_factor
        if overlap > 0:
            factor = 1 + (1 - overlap) * (factor - 1)
        amount[s3] = np.round(amount[s3] * factor, 2)
        bad_terminal = np.zeros(c.n_terminals, dtype=bool)
        bad_terminal[self.compromised_terminals(d)] = True
        s2 = bad_terminal[term]
        # Scenario 1 is judged on the amount as recorded: without overlap "amount > threshold"
        # always holds. With overlap o, as many transactions as have such an amount are fraud,
        # those with the largest log(amount) + o * N(0, 1): a soft boundary, same count.
        s1 = amount > c.large_amount_threshold
        if 1 not in c.scenarios:
            s1[:] = False
        elif overlap > 0 and s1.any():
            noise = _rng(c.seed, d, _SCENARIO_1).standard_normal(total)
            key = np.log(np.maximum(amount, 0.01)) + overlap * _OVERLAP_LOG_SD * noise
            n1 = int(s1.sum())
            s1[:] = False
            s1[np.argpartition(-key, n1 - 1)[:n1]] = True
        scenario = np.select([s1, s2, s3], [1, 2, 3], 0).astype(np.int8)
        reported = scenario > 0
        if c.label_noise > 0:
            reported ^= _rng(c.seed, d, _LABEL_NOISE).random(total) < c.label_noise

        # Stable sort by time of day through unique packed keys: the order (hence the ids) is
        # the same on every machine, and np.sort of keys is much faster than a stable argsort.
        keys = (tod.astype(np.uint64) << np.uint64(_INDEX_BITS)) | np.arange(total, dtype=np.uint64)
        order = (np.sort(keys) & np.uint64(2**_INDEX_BITS - 1)).astype(np.intp)
        day_us = ((self.start_date - _EPOCH).days + d) * DAY_US
        ts = tod[order] + day_us
        return pl.DataFrame(
            {
                "transaction_id": np.arange(total, dtype=np.int64) + d * MAX_TX_PER_DAY,
                "ts": ts.view("datetime64[us]"),
                "customer_id": cust[order],
                "terminal_id": term[order],
                "amount": amount[order],
                "is_fraud": reported[order].astype(np.int8),
                "fraud_scenario": scenario[order],
                "label_ts": (ts + self._delay_us).view("datetime64[us]"),
            },
            schema=SOURCE_COLUMNS,
        )
