"""Features: exact against a naive per-row reference, streaming == offline, no label leakage."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from fractions import Fraction
from typing import Any

import array_api_strict
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from fraudpipe import kernel
from fraudpipe.config import FeatureSettings
from fraudpipe.devices import Device
from fraudpipe.features import compute_features, feature_names, lookback
from fraudpipe.schema import LABELS, MAX_AMOUNT, TRANSACTIONS, BadBatch
from tests.conftest import ON_GPU

START = dt.datetime(2018, 4, 1)
SMALL = FeatureSettings(windows_days=[1, 2], terminal_delay_days=1)
HANDBOOK = FeatureSettings(extended=False)  # the handbook's 15 features only
CONFIGS = [
    FeatureSettings(),
    SMALL,
    FeatureSettings(windows_days=[3, 1], terminal_delay_days=0),
    HANDBOOK,
]
IDS = ["default", "small", "nodelay", "handbook"]
# The one kernel, under numpy, under the strict namespace, which refuses any call outside the
# array API standard, and under cupy on the GPU (where there is one): all give the reference's
# bits.
NAMESPACES = [
    pytest.param(None, id="numpy"),
    pytest.param(array_api_strict, id="strict"),
    pytest.param(lambda: Device("gpu").xp, id="cupy", marks=ON_GPU),
]


def namespace(param: Any) -> Any:
    return param() if callable(param) else param


@pytest.fixture(scope="module", params=NAMESPACES)
def xp(request: pytest.FixtureRequest) -> Any:
    return namespace(request.param)


# -- data ------------------------------------------------------------------------------------


def make_tx(
    ts: list[dt.datetime], ids: list[int], cust: list[int], term: list[int], cents: list[int]
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "transaction_id": ids,
            "ts": ts,
            "customer_id": cust,
            "terminal_id": term,
            "amount": [c / 100 for c in cents],
            "created_at": [0.0] * len(ids),
        },
        schema=TRANSACTIONS,
    )


def make_labels(rows: list[tuple[int, int, dt.datetime]]) -> pl.DataFrame:
    ids, fraud, when = zip(*rows, strict=True) if rows else ((), (), ())
    return pl.DataFrame(
        {"transaction_id": list(ids), "is_fraud": list(fraud), "label_ts": list(when)},
        schema=LABELS,
    )


def random_data(
    seed: int, n: int, days: int, *, grid_h: int = 6
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """n rows on a coarse time grid (many ties and window-boundary hits), ids in random order,
    labels with random delays (some zero), duplicate labels and labels of unknown ids."""
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, days * 24 // grid_h, n)
    ts = [START + dt.timedelta(hours=int(s) * grid_h) for s in slots]
    ids = [int(i) for i in rng.permutation(n) * 3 + 5]
    tx = make_tx(
        ts,
        ids,
        [int(c) for c in rng.integers(0, 6, n)],
        [int(c) for c in rng.integers(0, 5, n)],
        [int(c) for c in rng.integers(1, 60_000, n)],
    )
    labels = []
    for i, t in zip(ids, ts, strict=True):
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
            delay = dt.timedelta(hours=int(rng.integers(0, 10 * 24 // grid_h)) * grid_h)
            labels.append((i, int(rng.random() < 0.4), t + delay))
    labels += [(10**9 + k, 1, START + dt.timedelta(days=k)) for k in range(3)]
    return tx, make_labels(labels)


# -- the naive reference ---------------------------------------------------------------------


def naive(tx: pl.DataFrame, labels: pl.DataFrame, cfg: FeatureSettings) -> pl.DataFrame:
    """The definitions, row by row, in plain Python."""
    rows = tx.to_dicts()
    fraud_at = defaultdict(list)
    for lab in labels.to_dicts():
        if lab["is_fraud"] == 1:
            fraud_at[lab["transaction_id"]].append(lab["label_ts"])
    day, delay = dt.timedelta(days=1), dt.timedelta(days=cfg.terminal_delay_days)
    out = []
    for r in rows:
        t, me = r["ts"], (r["ts"], r["transaction_id"])
        f = dict(r)
        f["is_weekend"] = 1.0 if t.weekday() in (5, 6) else 0.0
        f["is_night"] = 1.0 if t.hour <= 6 else 0.0
        for w in cfg.windows_days:
            mine = [
                j
                for j in rows
                if j["customer_id"] == r["customer_id"]
                and t - w * day < j["ts"] <= t
                and (j["ts"], j["transaction_id"]) <= me
            ]
            cents = sum(round(j["amount"] * 100) for j in mine)
            f[f"customer_nb_tx_{w}d"] = float(len(mine))
            f[f"customer_avg_amount_{w}d"] = float(Fraction(cents, 100 * len(mine)))
            earlier = [round(j["amount"] * 100) for j in mine if j is not r]
            f[f"customer_amount_ratio_{w}d"] = (
                float(Fraction(round(r["amount"] * 100) * len(earlier), sum(earlier)))
                if earlier and sum(earlier)
                else -1.0
            )
            if w == max(cfg.windows_days):  # settled: old enough for labels; recent: the rest
                settled = [
                    round(j["amount"] * 100)
                    for j in mine
                    if j["ts"] <= t - delay and (j["ts"], j["transaction_id"]) < me
                ]
                recent = [
                    round(j["amount"] * 100)
                    for j in mine
                    if j["ts"] > t - delay or (j["ts"], j["transaction_id"]) == me
                ]
                usable = bool(settled) and sum(settled) != 0
                f["customer_amount_ratio_settled"] = (
                    float(Fraction(round(r["amount"] * 100) * len(settled), sum(settled)))
                    if usable
                    else -1.0
                )
                f["customer_recent_avg_ratio"] = (
                    float(Fraction(sum(recent) * len(settled), sum(settled) * len(recent)))
                    if usable
                    else -1.0
                )
        for w in cfg.windows_days:
            seen = [
                j
                for j in rows
                if j["terminal_id"] == r["terminal_id"]
                and t - delay - w * day < j["ts"] <= t - delay
            ]
            bad = [j for j in seen if any(lt <= t for lt in fraud_at[j["transaction_id"]])]
            f[f"terminal_nb_tx_{w}d"] = float(len(seen))
            f[f"terminal_risk_{w}d"] = len(bad) / len(seen) if seen else 0.0
            if w == max(cfg.windows_days):  # the extended terminal features: longest window
                first = min((j["ts"] for j in bad), default=None)
                last = max((j["ts"] for j in bad), default=None)
                latest = max((j["ts"] for j in seen), default=None)
                f["terminal_first_fraud_days"] = -1.0 if first is None else (t - first) / day
                f["terminal_last_fraud_days"] = -1.0 if last is None else (t - last) / day
                f["terminal_last_tx_days"] = (
                    float(cfg.terminal_delay_days + w) if latest is None else (t - latest) / day
                )
                since = [j for j in seen if first is not None and j["ts"] >= first]
                f["terminal_risk_since_first_fraud"] = len(bad) / len(since) if bad else -1.0
                f["terminal_last_tx_fraud"] = 1.0 if bad and last == latest else 0.0
                f["terminal_fraud_avg_amount"] = (
                    float(Fraction(sum(round(j["amount"] * 100) for j in bad), 100 * len(bad)))
                    if bad
                    else -1.0
                )
        out.append(f)
    names = [n for n in feature_names(cfg) if n not in TRANSACTIONS]
    schema = {**TRANSACTIONS, **{n: pl.Float64 for n in names}}
    return pl.DataFrame([{k: f[k] for k in schema} for f in out], schema=schema)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("seed", [1, 2])
def test_matches_naive_reference(cfg: FeatureSettings, seed: int, xp: Any) -> None:
    tx, labels = random_data(seed, 300, 45 if cfg == CONFIGS[0] else 8)
    assert_frame_equal(compute_features(tx, labels, cfg, xp=xp), naive(tx, labels, cfg))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    windows=st.lists(st.integers(1, 4), min_size=1, max_size=3, unique=True),
    delay=st.integers(0, 3),
)
def test_matches_naive_reference_property(
    xp: Any, data: st.DataObject, windows: list[int], delay: int
) -> None:
    cfg = FeatureSettings(windows_days=windows, terminal_delay_days=delay)
    rows = data.draw(
        st.lists(
            st.tuples(
                st.integers(0, 40), st.integers(0, 2), st.integers(0, 2), st.integers(0, 9999)
            ),
            min_size=1,
            max_size=40,
        )
    )
    ids = data.draw(st.permutations(range(len(rows))))
    spread = data.draw(st.sampled_from([1, 3 * 10**18]))  # huge keys: dense key codes
    ts = [START + dt.timedelta(hours=6 * s) for s, *_ in rows]
    cust = [(r[1] - 1) * spread for r in rows]
    term = [(r[2] - 1) * spread for r in rows]
    tx = make_tx(ts, list(ids), cust, term, [r[3] for r in rows])
    picks = data.draw(
        st.lists(st.tuples(st.integers(0, len(rows) - 1), st.integers(0, 1), st.integers(0, 30)))
    )
    labels = make_labels([(ids[k], f, ts[k] + dt.timedelta(hours=6 * d)) for k, f, d in picks])
    assert_frame_equal(compute_features(tx, labels, cfg, xp=xp), naive(tx, labels, cfg))


@pytest.mark.parametrize("spread", [1, 10**18])
def test_keys_without_history(spread: int, xp: Any) -> None:
    """Terminals below, above and between those in a row's window count nothing."""
    cfg = FeatureSettings(windows_days=[1, 2], terminal_delay_days=1)
    far = 4 * 10**18  # codes for far-off keys must not overflow
    ts = [START + dt.timedelta(hours=h) for h in (0, 1, 30, 31, 32, 33, 34, 35)]
    term = [k * spread for k in (5, 7, 5, 1, 9, 6)] + [far, -far]
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    tx = make_tx(ts, ids, [0, 0, 1, 1, 2, 2, 3, 3], term, [100, 250, 300, 5, 7, 9, 1, 2])
    labels = make_labels([(1, 1, ts[0]), (2, 1, ts[4])])
    out = compute_features(tx, labels, cfg, xp=xp)
    assert out["terminal_nb_tx_2d"].to_list() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert out["terminal_risk_2d"].to_list() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert_frame_equal(out, naive(tx, labels, cfg))


def test_key_overflow_falls_back_to_time_ranks(monkeypatch: pytest.MonkeyPatch, xp: Any) -> None:
    tx, labels = random_data(3, 200, 40)
    cfg = FeatureSettings()
    wide = compute_features(tx, labels, cfg, xp=xp)
    monkeypatch.setattr(kernel, "_KEY_LIMIT", 10)
    ranked = compute_features(tx, labels, cfg, xp=xp)
    assert_frame_equal(ranked, wide)
    assert_frame_equal(ranked, naive(tx, labels, cfg))


# -- the offline API -------------------------------------------------------------------------


def test_names_and_lookback() -> None:
    cfg = FeatureSettings()
    assert feature_names(cfg) == [
        "amount",
        "is_weekend",
        "is_night",
        "customer_nb_tx_1d",
        "customer_avg_amount_1d",
        "customer_nb_tx_7d",
        "customer_avg_amount_7d",
        "customer_nb_tx_30d",
        "customer_avg_amount_30d",
        "terminal_nb_tx_1d",
        "terminal_risk_1d",
        "terminal_nb_tx_7d",
        "terminal_risk_7d",
        "terminal_nb_tx_30d",
        "terminal_risk_30d",
        "customer_amount_ratio_1d",
        "customer_amount_ratio_7d",
        "customer_amount_ratio_30d",
        "customer_amount_ratio_settled",
        "customer_recent_avg_ratio",
        "terminal_first_fraud_days",
        "terminal_last_fraud_days",
        "terminal_last_tx_days",
        "terminal_risk_since_first_fraud",
        "terminal_last_tx_fraud",
        "terminal_fraud_avg_amount",
    ]
    assert feature_names(HANDBOOK) == feature_names(cfg)[:15]  # the handbook's 15
    assert lookback(cfg) == dt.timedelta(days=37)
    with pytest.raises(ValueError, match="distinct"):
        feature_names(FeatureSettings(windows_days=[7, 7]))


def test_output_columns_and_query_order() -> None:
    tx, labels = random_data(4, 120, 10)
    cfg = SMALL
    full = compute_features(tx, labels.with_columns(fraud_scenario=pl.lit(2, pl.Int8)), cfg)
    assert full.columns[: len(TRANSACTIONS)] == list(TRANSACTIONS)
    assert set(feature_names(cfg)) <= set(full.columns)
    assert all(full.schema[n] == pl.Float64 for n in feature_names(cfg))
    query = tx["transaction_id"].sample(30, seed=1, shuffle=True)
    some = compute_features(tx, labels, cfg, query_ids=query)
    assert some["transaction_id"].to_list() == query.to_list()
    by_id = full.join(query.to_frame(), on="transaction_id", how="semi")
    assert_frame_equal(some.sort("transaction_id"), by_id.sort("transaction_id"))
    assert compute_features(tx, labels, cfg, query_ids=query.head(0)).is_empty()
    with pytest.raises(ValueError, match="not in tx"):
        compute_features(tx, labels, cfg, query_ids=pl.Series([-1]))
    with pytest.raises(ValueError, match="unique"):
        compute_features(pl.concat([tx, tx.head(1)]), labels, cfg)
    with pytest.raises(ValueError, match="null"):
        compute_features(tx.with_columns(customer_id=pl.lit(None, pl.Int64)), labels, cfg)
    with pytest.raises(ValueError, match="amount must be a number"):
        compute_features(tx.with_columns(amount=float("nan")), labels, cfg)


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(-0.01, "-0.01"), (float("inf"), "inf"), (float("nan"), "nan"), (1e300, r"1e\+300")],
)
def test_amounts_outside_the_exact_range_are_refused(amount: float, shown: str) -> None:
    """An amount summed in integer cents must fit them: a negative, non-finite or huge one is
    refused by name (a batch holding it goes to dead letters), never turned into garbage."""
    t0 = START + dt.timedelta(days=3)
    tx = make_tx([t0, t0], [1, 2], [1, 1], [1, 1], [500, 700])
    tx = tx.with_columns(amount=pl.Series([5.0, amount]))
    with pytest.raises(
        BadBatch,
        match=f"amount must be a number from 0 to 1e\\+09; 1 row.* "
        f"transaction 2 with amount {shown}",
    ):
        compute_features(tx, make_labels([]), SMALL)
    ok = tx.with_columns(amount=pl.Series([0.0, MAX_AMOUNT]))
    assert compute_features(ok, make_labels([]), SMALL)["customer_avg_amount_1d"][1] == (
        MAX_AMOUNT / 2
    )


def test_weekend_and_night_flags(xp: Any) -> None:
    ts = [
        dt.datetime(2018, 4, 6, 23, 59, 59),  # Friday night
        dt.datetime(2018, 4, 7, 0, 0),  # Saturday
        dt.datetime(2018, 4, 7, 6, 59, 59, 999999),
        dt.datetime(2018, 4, 7, 7, 0),
        dt.datetime(2018, 4, 8, 12, 0),  # Sunday
        dt.datetime(2018, 4, 9, 0, 0),  # Monday
        dt.datetime(2018, 4, 10, 6, 0),  # Tuesday
    ]
    n = len(ts)
    tx = make_tx(ts, list(range(n)), [0] * n, [0] * n, [100] * n)
    out = compute_features(tx, make_labels([]), FeatureSettings(), xp=xp)
    assert out["is_weekend"].to_list() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert out["is_night"].to_list() == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


# -- no label leakage ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_future_labels_change_nothing(seed: int) -> None:
    tx, labels = random_data(seed, 400, 20)
    cfg = FeatureSettings(windows_days=[1, 3], terminal_delay_days=2)
    rng = random.Random(seed)
    cut = START + dt.timedelta(hours=6 * rng.randrange(20, 60))
    query = tx.filter(pl.col("ts") <= cut)["transaction_id"]
    base = compute_features(tx, labels, cfg, query_ids=query)
    past = labels.filter(pl.col("label_ts") <= cut)
    future = labels.filter(pl.col("label_ts") > cut)
    shuffled = future.with_columns(
        pl.col("is_fraud").shuffle(seed=seed), pl.col("label_ts").shuffle(seed=seed + 1)
    )
    flipped = future.with_columns(is_fraud=(1 - pl.col("is_fraud")).cast(pl.Int8))
    all_fraud = tx.select(
        "transaction_id",
        is_fraud=pl.lit(1, pl.Int8),
        label_ts=pl.lit(cut) + dt.timedelta(microseconds=1),
    )
    for changed in (
        past,
        pl.concat([past, shuffled]),
        pl.concat([past, flipped]),
        pl.concat([past, future.sample(fraction=0.5, seed=seed), all_fraud]),
    ):
        assert_frame_equal(compute_features(tx, changed, cfg, query_ids=query), base)
    # per row, too: each row only sees labels that arrived by its own time
    everything = compute_features(tx, labels, cfg)
    assert_frame_equal(
        everything.join(query.to_frame(), on="transaction_id", how="semi").sort("transaction_id"),
        base.sort("transaction_id"),
    )


def test_arrived_label_changes_terminal_risk() -> None:
    cfg = FeatureSettings(windows_days=[1], terminal_delay_days=7)
    t0 = dt.datetime(2018, 4, 2, 12, 0)
    later = t0 + dt.timedelta(days=7, hours=12)  # t0 lies in later's delayed 1-day window
    tx = make_tx([t0, later], [1, 2], [1, 2], [9, 9], [1000, 2000])
    none = compute_features(tx, make_labels([]), cfg)
    assert none["terminal_nb_tx_1d"].to_list() == [0.0, 1.0]
    assert none["terminal_risk_1d"].to_list() == [0.0, 0.0]
    arrived = compute_features(tx, make_labels([(1, 1, later)]), cfg)
    assert arrived["terminal_risk_1d"].to_list() == [0.0, 1.0]
    not_yet = make_labels([(1, 1, later + dt.timedelta(microseconds=1))])
    assert_frame_equal(compute_features(tx, not_yet, cfg), none)
    legit = make_labels([(1, 0, t0)])
    assert_frame_equal(compute_features(tx, legit, cfg), none)


# -- data for the streaming tests (test_history) ----------------------------------------------


def simulate(seed: int, days: int, per_day: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Time-ordered transactions (ids in time order, minute resolution: some ties) and labels."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    ts = np.sort(rng.integers(0, days * 1440, n))
    tx = make_tx(
        [START + dt.timedelta(minutes=int(m)) for m in ts],
        list(range(1, n + 1)),
        [int(c) for c in rng.integers(0, 30, n)],
        [int(c) for c in rng.integers(0, 12, n)],
        [int(c) for c in rng.integers(1, 30_000, n)],
    )
    delay = pl.Series([dt.timedelta(minutes=int(m)) for m in rng.integers(0, 4 * 1440, n)])
    labels = tx.select(
        "transaction_id",
        is_fraud=pl.Series(rng.random(n) < 0.15).cast(pl.Int8),
        label_ts=pl.col("ts") + delay,
        fraud_scenario=pl.lit(1, pl.Int8),
    )
    return tx, labels


@pytest.mark.parametrize("other", NAMESPACES[1:])
def test_the_kernel_gives_the_same_bits_in_every_namespace(other: Any) -> None:
    """The simulator's own data (frauds of all three scenarios, labels arriving late), every
    feature of every row: the strict namespace and cupy compute numpy's bits."""
    from fraudpipe.config import SimulatorSettings
    from fraudpipe.simulate import Simulator

    sim = Simulator(SimulatorSettings(n_customers=400, n_terminals=800), label_delay_days=7.0)
    df = pl.concat([sim.day(d) for d in range(60)])
    labels = df.select("transaction_id", "is_fraud", "label_ts", "fraud_scenario")
    tx = df.with_columns(created_at=pl.lit(None, pl.Float64)).select(list(TRANSACTIONS))
    cfg = FeatureSettings()
    on_numpy = compute_features(tx, labels, cfg)
    assert on_numpy["terminal_first_fraud_days"].max() > 0  # frauds were known and counted
    assert_frame_equal(compute_features(tx, labels, cfg, xp=namespace(other)), on_numpy)
