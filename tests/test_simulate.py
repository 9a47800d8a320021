"""The simulator: deterministic per day, the handbook's rules, and its three fraud scenarios."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudpipe import simulate
from fraudpipe.config import SimulatorSettings
from fraudpipe.simulate import MAX_TX_PER_DAY, SOURCE_COLUMNS, Simulator

SMALL: dict[str, Any] = {"n_customers": 500, "n_terminals": 1000}


def small(**kw: Any) -> Simulator:
    return Simulator(SimulatorSettings(**{**SMALL, **kw}), label_delay_days=7.0)


@pytest.fixture(scope="module")
def handbook() -> Simulator:
    """The handbook's configuration (5000 customers, 10000 terminals)."""
    return Simulator(SimulatorSettings(), label_delay_days=7.0)


@pytest.fixture(scope="module")
def handbook_days(handbook: Simulator) -> list[pl.DataFrame]:
    return [handbook.day(d) for d in range(30)]


def check_invariants(sim: Simulator, d: int, df: pl.DataFrame) -> None:
    """Everything a day must satisfy, each fraud scenario checked against its definition."""
    c = sim.cfg
    assert df.schema == pl.Schema(SOURCE_COLUMNS)
    assert df.equals(df.sort("ts", "transaction_id"))
    ids = df["transaction_id"].to_numpy()
    np.testing.assert_array_equal(ids, d * MAX_TX_PER_DAY + np.arange(len(df)))
    day_start = dt.datetime.combine(c.start_date, dt.time()) + dt.timedelta(days=d)
    outside = (pl.col("ts") < day_start) | (pl.col("ts") >= day_start + dt.timedelta(days=1))
    assert df.filter(outside).is_empty()

    cust = df["customer_id"].to_numpy()
    term = df["terminal_id"].to_numpy()
    amount = df["amount"].to_numpy()
    scenario = df["fraud_scenario"].to_numpy()
    assert (amount >= 0).all()
    np.testing.assert_allclose(np.round(amount, 2), amount, rtol=0, atol=1e-9)
    dist = np.hypot(*(sim.customer_xy[cust] - sim.terminal_xy[term]).T)
    assert (dist < c.radius).all()
    np.testing.assert_array_equal(df["is_fraud"].to_numpy(), (scenario > 0).astype(np.int8))

    s1 = amount > c.large_amount_threshold
    s2 = np.isin(term, sim.compromised_terminals(d))
    at_risk = np.isin(cust, sim.compromised_customers(d))
    assert (scenario[s1] == 1).all()
    assert (scenario[~s1 & s2] == 2).all()
    assert (scenario[~s1 & ~s2] != 2).all() and (scenario[~s1 & ~s2 & ~at_risk] == 0).all()
    assert at_risk[scenario == 3].all()


def test_schema_and_invariants_on_the_handbook_config(
    handbook: Simulator, handbook_days: list[pl.DataFrame]
) -> None:
    assert handbook.start_date == dt.date(2018, 4, 1)
    for d, df in enumerate(handbook_days):
        check_invariants(handbook, d, df)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(-(2**40), 2**40),
    d=st.integers(0, 400),
    fraction=st.sampled_from([0.0, 1 / 3, 1.0]),
)
def test_invariants_hold_for_any_seed_and_day(seed: int, d: int, fraction: float) -> None:
    sim = small(seed=seed, compromised_customers_per_day=10, compromised_customer_fraction=fraction)
    check_invariants(sim, d, sim.day(d))


def test_a_day_depends_only_on_the_config_and_its_number() -> None:
    first = small().day(5)
    sim = small()
    for d in range(11):
        sim.day(d)
    assert sim.day(5).equals(first)
    backwards = small()
    for d in range(10, 4, -1):
        backwards.day(d)
    assert backwards.day(5).equals(first)
    assert first.to_arrow() == sim.day(5).to_arrow()
    assert not small(seed=43).day(5).equals(first)
    assert not sim.day(6).equals(first)


def test_compromised_sets_are_the_union_of_each_days_picks() -> None:
    sim = small(compromised_terminals_per_day=2, terminal_compromise_days=5)
    assert len(sim.compromised_terminals(0)) == 2
    for k in range(1, 30):
        new = set(sim.compromised_terminals(k)) - set(sim.compromised_terminals(k - 1))
        assert len(new) <= 2
        for j in range(5):
            assert new <= set(sim.compromised_terminals(k + j))
        assert len(sim.compromised_terminals(k)) <= 2 * min(k + 1, 5)
    assert len(small(compromised_customers_per_day=0).compromised_customers(9)) == 0


def test_compromised_customers_pay_factor_times_more_on_fraud() -> None:
    """Fraction 1 vs 0 changes nothing but scenario-3 amounts (x factor) and labels."""
    kw: dict[str, Any] = {"compromised_customers_per_day": 10}
    always = small(compromised_customer_fraction=1.0, **kw)
    never = small(compromised_customer_fraction=0.0, **kw)
    for d in (0, 7, 20):
        a, n = always.day(d), never.day(d)
        assert (n["fraud_scenario"] != 3).all()
        assert a.drop("amount", "is_fraud", "fraud_scenario").equals(
            n.drop("amount", "is_fraud", "fraud_scenario")
        )
        hit = np.isin(a["customer_id"].to_numpy(), always.compromised_customers(d))
        assert hit.any()
        assert (a["is_fraud"].to_numpy()[hit] == 1).all()
        np.testing.assert_allclose(
            a["amount"].to_numpy()[hit], np.round(n["amount"].to_numpy()[hit] * 5, 2)
        )
        np.testing.assert_array_equal(a["amount"].to_numpy()[~hit], n["amount"].to_numpy()[~hit])


def test_a_third_of_compromised_customers_payments_are_fraud() -> None:
    sim = small(compromised_customers_per_day=10, compromised_terminals_per_day=0)
    hits = total = 0
    for d in range(14, 34):
        df = sim.day(d).filter(pl.col("customer_id").is_in(sim.compromised_customers(d).tolist()))
        total += len(df)
        hits += int((df["fraud_scenario"] == 3).sum()) + int((df["amount"] > 220).sum())
    assert total > 1000
    assert 0.27 < hits / total < 0.40


def test_rows_per_day_match_the_customer_profiles(handbook: Simulator) -> None:
    reachable = np.diff(handbook.terminal_indptr) > 0
    expected = handbook.mean_nb_tx_per_day[reachable].sum()
    assert 9000 < expected < 11000
    counts = np.array([len(handbook.day(d)) for d in range(30)])
    assert (np.abs(counts - expected) < 5 * np.sqrt(expected)).all()
    assert abs(counts.mean() - expected) < 5 * np.sqrt(expected / 30)


def test_customers_without_a_terminal_in_reach_make_no_payments() -> None:
    sim = small(n_terminals=30, radius=3.0)
    lonely = np.flatnonzero(np.diff(sim.terminal_indptr) == 0)
    assert len(lonely) > 100
    paying = np.concatenate([sim.day(d)["customer_id"].to_numpy() for d in range(5)])
    assert not np.isin(paying, lonely).any()
    for c in (0, 1, 2):
        avail = sim.available_terminals(c)
        dist = np.hypot(*(sim.terminal_xy - sim.customer_xy[c]).T)
        np.testing.assert_array_equal(avail, np.flatnonzero(dist < 3.0))


def test_fraud_rate_is_plausible(handbook_days: list[pl.DataFrame]) -> None:
    df = pl.concat(handbook_days)
    rate = df["is_fraud"].mean()
    assert isinstance(rate, float)
    assert 0.003 < rate < 0.015
    assert df["transaction_id"].is_unique().all()
    assert set(df["fraud_scenario"].unique().to_list()) == {0, 1, 2, 3}


@pytest.mark.parametrize("delay_days", [7.0, 0.5, 0.0])
def test_label_ts_is_ts_plus_the_delay(delay_days: float) -> None:
    sim = Simulator(SimulatorSettings(**SMALL), label_delay_days=delay_days)
    df = sim.day(3)
    assert ((df["label_ts"] - df["ts"]) == dt.timedelta(days=delay_days)).all()


def test_refuses_a_negative_day() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        small().day(-1)


def test_refuses_a_day_with_more_rows_than_ids_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate, "MAX_TX_PER_DAY", 10)
    with pytest.raises(ValueError, match="n_customers"):
        small().day(0)


# -- difficulty knobs ------------------------------------------------------------------------

# sha256 over the columns of days 0, 1, 13 and 29 of the SMALL config, as the handbook's
# simulator (before the difficulty knobs existed) generated them.
SMALL_STREAM_SHA256 = "2f5bbdd0386dcafb73365edad222c5075cb95da6a7648e721ff381adadf8b5b6"


def stream_digest(sim: Simulator, days: tuple[int, ...] = (0, 1, 13, 29)) -> str:
    h = hashlib.sha256()
    for d in days:
        df = sim.day(d)
        for column in df.columns:
            h.update(df[column].to_numpy().tobytes())
    return h.hexdigest()


def amount_auc(df: pl.DataFrame) -> float:
    """ROC AUC of the amount alone as a score for the amount-driven frauds (scenarios 1, 3)."""
    rows = df.filter(pl.col("fraud_scenario") != 2)
    y = (rows["fraud_scenario"] > 0).to_numpy()
    ranks = rows["amount"].rank().to_numpy()
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_default_knobs_keep_the_handbook_stream_bit_for_bit() -> None:
    assert stream_digest(small()) == SMALL_STREAM_SHA256
    explicit = small(scenarios=[1, 2, 3], amount_overlap=0.0, label_noise=0.0)
    assert stream_digest(explicit) == SMALL_STREAM_SHA256


def test_knobbed_days_depend_only_on_the_config_and_their_number() -> None:
    kw: dict[str, Any] = {"amount_overlap": 0.7, "label_noise": 0.05, "scenarios": [1, 3]}
    first = small(**kw).day(5)
    sim = small(**kw)
    for d in (9, 2, 7):
        sim.day(d)
    assert sim.day(5).equals(first)
    assert not small(**{**kw, "seed": 7}).day(5).equals(first)


def test_label_noise_flips_that_share_of_the_reported_labels() -> None:
    clean, noisy = small(), small(label_noise=0.1)
    days = []
    for d in range(10):
        c, n = clean.day(d), noisy.day(d)
        # Only the reported label changes; the truth stays in fraud_scenario.
        assert n.drop("is_fraud").equals(c.drop("is_fraud"))
        days.append(n)
    n = pl.concat(days)
    flips = n["is_fraud"] != (n["fraud_scenario"] > 0).cast(pl.Int8)
    assert n.height > 5000
    assert abs(flips.mean() - 0.1) < 0.015  # type: ignore[operator]
    # Both ways: genuine reported as fraud, and fraud reported as genuine.
    assert ((n["is_fraud"] == 1) & flips).sum() > 300
    assert ((n["is_fraud"] == 0) & flips).any()
    assert noisy.day(3).equals(small(label_noise=0.1).day(3))
    everything = small(label_noise=1.0).day(3)
    assert (everything["is_fraud"] == (everything["fraud_scenario"] == 0).cast(pl.Int8)).all()


def test_scenarios_that_are_off_make_no_fraud() -> None:
    kw: dict[str, Any] = {"compromised_customers_per_day": 10}
    full = [small(**kw).day(d) for d in range(14, 24)]
    uncompromised = pl.concat(
        [small(compromised_customers_per_day=0).day(d) for d in range(14, 24)]
    )
    assert {1, 2, 3} <= set(pl.concat(full)["fraud_scenario"].unique().to_list())
    for on in ([1, 2], [1, 3], [2, 3], [2], []):
        sim = small(scenarios=on, **kw)
        days = pl.concat([sim.day(d) for d in range(14, 24)])
        seen = set(days["fraud_scenario"].unique().to_list()) - {0}
        assert seen <= set(on), (on, seen)
        assert (days["is_fraud"] == (days["fraud_scenario"] > 0).cast(pl.Int8)).all()
        if 3 not in on:  # no amount is multiplied: amounts as in a stream without compromise
            assert len(sim.compromised_customers(20)) == 0
            assert days["amount"].equals(uncompromised["amount"])
        if 2 not in on:
            assert len(sim.compromised_terminals(20)) == 0
    assert pl.concat([small(scenarios=[]).day(d) for d in range(5)])["is_fraud"].sum() == 0


def test_amount_overlap_makes_fraud_amounts_look_genuine() -> None:
    kw: dict[str, Any] = {"compromised_customers_per_day": 10}
    days = range(14, 34)
    streams = {
        o: pl.concat([small(amount_overlap=o, **kw).day(d) for d in days]) for o in (0.0, 0.5, 1.0)
    }
    aucs = {o: amount_auc(df) for o, df in streams.items()}
    assert aucs[0.0] > 0.9  # the handbook: large amounts give fraud away
    assert aucs[0.0] > aucs[0.5] > aucs[1.0]
    assert aucs[1.0] < 0.7
    base = streams[0.0]
    for o, df in streams.items():
        # Same transactions; scenario 1 makes as many frauds as there are large amounts.
        assert df.drop("amount", "is_fraud", "fraud_scenario").equals(
            base.drop("amount", "is_fraud", "fraud_scenario")
        )
        assert abs(int(df["is_fraud"].sum()) - int(base["is_fraud"].sum())) < 0.2 * int(
            base["is_fraud"].sum()
        ), o
    # Scenario 1's boundary is soft: frauds below the threshold, genuine payments above it.
    soft = streams[1.0]
    assert (soft.filter(pl.col("fraud_scenario") == 1)["amount"] <= 220).any()
    assert (soft.filter(pl.col("fraud_scenario") == 0)["amount"] > 220).any()
    # overlap 1: scenario 3's factor is 1, amounts as if the card were not compromised.
    never = pl.concat([small(compromised_customer_fraction=0.0, **kw).day(d) for d in days])
    assert soft["amount"].equals(never["amount"])
