"""Replay of a user's Parquet/CSV: column discovery, conversion, day slicing, clear errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fraudpipe.config import ReplaySettings, SimulatorSettings
from fraudpipe.replay import HANDBOOK_COLUMNS, ReplayError, ReplaySource
from fraudpipe.simulate import SOURCE_COLUMNS, Simulator

DAYS = 6


@pytest.fixture(scope="module")
def simulated() -> pl.DataFrame:
    sim = Simulator(SimulatorSettings(n_customers=300, n_terminals=600), label_delay_days=7.0)
    return pl.concat([sim.day(d) for d in range(DAYS)])


def replay(path: Path, columns: dict[str, str] | None = None, delay: float = 7.0) -> ReplaySource:
    cfg = ReplaySettings(path=path, columns=columns or {})
    return ReplaySource(cfg, label_delay_days=delay)


def all_days(src: ReplaySource) -> list[pl.DataFrame]:
    days: list[pl.DataFrame] = []
    while (df := src.day(len(days))) is not None:
        days.append(df)
    return days


def write(tmp_path: Path, name: str, df: pl.DataFrame) -> Path:
    path = tmp_path / name
    if path.suffix == ".csv":
        df.write_csv(path)
    else:
        df.write_parquet(path)
    return path


def test_handbook_named_csv_round_trips(tmp_path: Path, simulated: pl.DataFrame) -> None:
    shuffled = simulated.sample(fraction=1.0, shuffle=True, seed=3)
    handbook = shuffled.select(
        pl.col(ours).alias(theirs) for ours, theirs in HANDBOOK_COLUMNS.items()
    ).with_columns(pl.col("TX_DATETIME").dt.strftime("%Y-%m-%d %H:%M:%S%.6f"))
    src = replay(write(tmp_path, "tx.csv", handbook))
    assert src.start_date == dt.date(2018, 4, 1)
    assert src.n_days == DAYS
    days = all_days(src)
    assert len(days) == DAYS
    for d, df in enumerate(days):
        assert df.schema == pl.Schema(SOURCE_COLUMNS)
        assert (df["ts"].dt.date() == dt.date(2018, 4, 1) + dt.timedelta(days=d)).all()
    expected = simulated.with_columns(pl.lit(0, dtype=pl.Int8).alias("fraud_scenario"))
    assert pl.concat(days).equals(expected)
    assert src.day(DAYS) is None and src.day(DAYS + 100) is None


@pytest.mark.parametrize("name", ["tx.parquet", "tx.csv"])
def test_the_simulators_own_file_keeps_its_truth(
    tmp_path: Path, simulated: pl.DataFrame, name: str
) -> None:
    """fraud_scenario, the simulator's truth, comes back as written (the evaluation's ceiling
    needs it); label_ts is the replay's own delay."""
    src = replay(write(tmp_path, name, simulated.drop("label_ts")))
    assert pl.concat(all_days(src)).equals(simulated)
    assert set(simulated["fraud_scenario"].unique().to_list()) == {0, 1, 2, 3}


def test_parquet_with_a_custom_mapping_and_no_ids(tmp_path: Path, simulated: pl.DataFrame) -> None:
    theirs = simulated.sample(fraction=1.0, shuffle=True, seed=4).select(
        pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Paris").alias("when"),
        pl.col("customer_id").cast(pl.Int32).alias("card"),
        pl.col("terminal_id").alias("merchant"),
        pl.col("amount").cast(pl.Float32).cast(pl.Float64).alias("value"),
        pl.col("is_fraud").cast(pl.Boolean).alias("label"),
        pl.col("amount").alias("TX_AMOUNT"),  # a mapping wins over the handbook's name
    )
    path = write(tmp_path, "tx.pq", theirs)
    mapped = {"ts": "when", "customer_id": "card", "terminal_id": "merchant", "amount": "value"}
    src = replay(path, mapped)
    src_is_fraud = replay(path, {**mapped, "is_fraud": "label"}, delay=1.5)
    got = pl.concat(all_days(src))
    assert got.schema == pl.Schema(SOURCE_COLUMNS)
    assert got["transaction_id"].to_list() == list(range(len(simulated)))
    assert got["ts"].equals(simulated["ts"])
    assert got["customer_id"].equals(simulated["customer_id"])
    assert got["amount"].equals(simulated["amount"].cast(pl.Float32).cast(pl.Float64))
    assert got["is_fraud"].is_null().all() and got["label_ts"].is_null().all()
    labelled = pl.concat(all_days(src_is_fraud))
    assert labelled["is_fraud"].equals(simulated["is_fraud"])
    assert ((labelled["label_ts"] - labelled["ts"]) == dt.timedelta(days=1.5)).all()


def test_ties_in_ts_keep_file_order_for_generated_ids(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {
            "ts": ["2024-01-02 10:00:00", "2024-01-01 09:00:00", "2024-01-02 10:00:00"],
            "customer_id": [7, 8, 9],
            "terminal_id": [1, 1, 1],
            "amount": ["1.5", "2", "3.25"],
        }
    )
    src = replay(write(tmp_path, "tx.csv", df))
    got = pl.concat(all_days(src))
    assert got["transaction_id"].to_list() == [0, 1, 2]
    assert got["customer_id"].to_list() == [8, 7, 9]
    assert got["amount"].to_list() == [2.0, 1.5, 3.25]


def test_epoch_seconds_iso_strings_and_empty_days(tmp_path: Path) -> None:
    epoch = dt.datetime(2024, 3, 1, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    df = pl.DataFrame(
        {
            "transaction_id": [10, 11, 12],
            "ts": [epoch, epoch + 1.25, epoch + 4 * 86400],
            "customer_id": [1, 2, 3],
            "terminal_id": [4, 5, 6],
            "amount": [1.0, 2.0, 3.0],
            "is_fraud": [0, 1, None],
        }
    )
    src = replay(write(tmp_path, "tx.parquet", df))
    assert src.start_date == dt.date(2024, 3, 1)
    sizes = [len(d) for d in all_days(src)]
    assert sizes == [1, 1, 0, 0, 1]
    day1 = src.day(1)
    assert day1 is not None
    assert day1["ts"].item() == dt.datetime(2024, 3, 2, 0, 0, 0, 250000)
    assert day1["is_fraud"].item() == 1
    last = src.day(4)
    assert last is not None and last["label_ts"].item() is None

    iso = df.with_columns(
        pl.Series(
            "ts", ["2024-03-01T23:59:59Z", "2024-03-02T01:00:00.25+01:00", "2024-03-05T12:00:00Z"]
        )
    )
    src = replay(write(tmp_path, "iso.csv", iso))
    day1 = src.day(1)
    assert day1 is not None and day1["ts"].item() == dt.datetime(2024, 3, 2, 0, 0, 0, 250000)


def test_our_names_win_over_the_handbooks(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {
            "ts": ["2024-01-01 00:00:00"],
            "customer_id": [1],
            "terminal_id": [2],
            "amount": [5.0],
            "TX_AMOUNT": [99.0],
        }
    )
    day0 = replay(write(tmp_path, "tx.parquet", df)).day(0)
    assert day0 is not None and day0["amount"].item() == 5.0


BASE: dict[str, Any] = {
    "transaction_id": [1, 2],
    "ts": ["2024-01-01 00:00:00", "2024-01-01 01:00:00"],
    "customer_id": [1, 2],
    "terminal_id": [3, 4],
    "amount": [1.0, 2.0],
    "is_fraud": [0, 1],
}


@pytest.mark.parametrize(
    ("change", "columns", "match"),
    [
        ({"amount": None}, {}, r"no column for amount .*'TX_AMOUNT'.*columns are \["),
        ({}, {"ts": "time"}, r"maps ts to 'time', which the file does not have"),
        ({}, {"amount_usd": "amount"}, r"unknown column\(s\) \['amount_usd'\]"),
        ({"ts": ["2024-01-01 00:00:00", "soon"]}, {}, r"'ts' \(ts\) must hold date-times.*'soon'"),
        ({"ts": ["yesterday", "soon"]}, {}, r"'ts' \(ts\) must hold date-times"),
        ({"amount": ["1.0", "two"]}, {}, r"'amount' \(amount\) must hold numbers.*'two'"),
        ({"amount": [1.0, float("nan")]}, {}, r"'amount' \(amount\) must hold numbers"),
        ({"customer_id": [1.0, 2.5]}, {}, r"'customer_id' \(customer_id\) must hold integers"),
        ({"customer_id": ["C1", "C2"]}, {}, r"must hold integers.*'C1'"),
        ({"terminal_id": [3, None]}, {}, r"'terminal_id' \(terminal_id\) must hold a value"),
        ({"is_fraud": [0, 2]}, {}, r"'is_fraud' \(is_fraud\) must hold 0 or 1.*2"),
        ({"fraud_scenario": [0, 4]}, {}, r"'fraud_scenario' .*must hold 0, 1, 2 or 3.*4"),
        ({"fraud_scenario": [0, "two"]}, {}, r"'fraud_scenario' .*must hold integers.*'two'"),
        ({"transaction_id": [5, 5]}, {}, r"must hold unique ids"),
        ({"ts": [dt.time(1), dt.time(2)]}, {}, r"must hold date-times.*its type is Time"),
        (
            {"ts": ["2024-01-01 00:00:00", "9999-12-31 00:00:00"]},
            {},
            r"'ts' \(ts\) must hold times from 1970-01-01 to before 2200-01-01 \(a placeholder"
            r".*1 row\(s\) do not, the first at row 2 with '9999-12-31 00:00:00'",
        ),
        ({"ts": ["1900-01-01", "2024-01-01"]}, {}, r"must hold times from 1970.*at row 1 with"),
        (
            {"amount": [float("inf"), 2.0]},
            {},
            r"must hold amounts from 0 to 1e\+09.*row 1 with inf",
        ),
        ({"amount": [1.0, -5.0]}, {}, r"must hold amounts from 0 to 1e\+09.*row 2 with -5.0"),
        ({"amount": [1e300, 2.0]}, {}, r"must hold amounts from 0 to 1e\+09.*row 1 with 1e\+300"),
        (
            {"customer_id": ["C" * 10_000_000, "C2"]},
            {},
            r"must hold integers; 2 row\(s\) do not, the first at row 1 with 'CCC+\.\.\. "
            r"\(10,000,002 characters\)$",
        ),
    ],
)
def test_bad_files_are_refused_with_the_column_named(
    tmp_path: Path, change: dict[str, Any], columns: dict[str, str], match: str
) -> None:
    data = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    path = write(tmp_path, "bad.parquet", pl.DataFrame(data, strict=False))
    with pytest.raises(ReplayError, match=match) as err:
        replay(path, columns)
    assert str(path) in str(err.value)


def test_bad_files_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match=r"unsupported suffix '\.json'"):
        replay(tmp_path / "tx.json")
    with pytest.raises(ReplayError, match="no such file"):
        replay(tmp_path / "missing.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ReplayError, match="cannot be read"):
        replay(tmp_path / "junk.parquet")
    (tmp_path / "empty.csv").write_text("ts,customer_id,terminal_id,amount\n")
    with pytest.raises(ReplayError, match="holds no rows"):
        replay(tmp_path / "empty.csv")
    with pytest.raises(ReplayError, match=r"replay\.path is not set"):
        ReplaySource(ReplaySettings(), label_delay_days=7.0)
    src = replay(write(tmp_path, "ok.csv", pl.DataFrame(BASE)))
    with pytest.raises(ValueError, match=">= 0"):
        src.day(-1)
