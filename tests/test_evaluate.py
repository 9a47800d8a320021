"""evaluate.py and `fraudpipe simulate` / `fraudpipe evaluate`: the handbook's protocol."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from fraudpipe import evaluate
from fraudpipe.config import FeatureSettings
from fraudpipe.evaluate import (
    EvaluationError,
    Window,
    ap_at_chance,
    card_precision_at_k,
    ceiling,
    choose_window,
    fold_windows,
    known_compromised_mask,
    unrevealed_frauds,
)
from fraudpipe.features import compute_features
from fraudpipe.replay import HANDBOOK_COLUMNS

from .conftest import fraudpipe

D = dt.date


# -- card precision@k ------------------------------------------------------------------------


def test_card_precision_at_k_by_hand() -> None:
    rows = [  # (day, customer, is_fraud, score)
        # day 0: cards D 0.95 (genuine), A 0.9 (its max; fraud on its other row), B 0.8, C 0.7
        (0, 1, 0, 0.9),
        (0, 1, 1, 0.1),
        (0, 2, 0, 0.8),
        (0, 3, 1, 0.7),
        (0, 4, 0, 0.95),
        # day 1: A was found on day 0 and is gone; top 2 of the rest: C, B, both fraudulent
        (1, 1, 1, 0.99),
        (1, 2, 1, 0.5),
        (1, 3, 1, 0.6),
        (1, 4, 0, 0.1),
        # day 2: B gone; one card left, and the day still divides by k
        (2, 2, 1, 0.9),
        (2, 5, 0, 0.3),
        # day 3: a tie at 0.5: the lower customer id (6, genuine) comes first, then 7 (fraud)
        (3, 7, 1, 0.5),
        (3, 6, 0, 0.5),
        (3, 8, 1, 0.4),
    ]
    day, cust, y, score = (np.array(c) for c in zip(*rows, strict=True))
    mean, per_day = card_precision_at_k(day, cust, y, score, k=2)
    assert per_day == [0.5, 1.0, 0.0, 0.5]
    assert mean == 0.5
    # a top k that holds every card: each fraudulent card is counted on its first day only
    mean_all, per_day_all = card_precision_at_k(day, cust, y, score, k=100)
    assert per_day_all == [0.02, 0.01, 0.0, 0.02]  # A, C / B (A, C found) / none (B) / 7, 8
    assert mean_all == pytest.approx(0.0125)


# -- known compromised cards -------------------------------------------------------------------


def test_known_compromised_cards_leave_the_test_days() -> None:
    window = Window(D(2018, 7, 25))  # train 07-25..07-31, gap 08-01..08-07, test 08-08..08-14
    assert window.test_start == D(2018, 8, 8) and window.end == D(2018, 8, 15)
    T = dt.datetime
    rows = [  # (customer, ts, is_fraud, test row removed?)
        (1, T(2018, 7, 20, 12), 1, False),  # fraud before the training days: not counted
        (1, T(2018, 8, 8, 12), 0, False),
        (2, T(2018, 7, 26, 12), 1, False),  # training fraud, label 08-02: known from 08-03
        (2, T(2018, 7, 28, 12), 0, False),  # not a test row
        (2, T(2018, 8, 8, 12), 0, True),
        (3, T(2018, 8, 1, 10), 1, False),  # gap fraud, label 08-08 10:00: known from 08-09
        (3, T(2018, 8, 8, 23), 0, False),
        (3, T(2018, 8, 9, 1), 1, True),
        (4, T(2018, 8, 8, 9), 1, False),  # a test-day fraud: its label comes after the test
        (4, T(2018, 8, 14, 9), 1, False),
        (5, T(2018, 8, 10, 9), 0, False),
        (6, T(2018, 7, 31, 23, 59, 59), 1, False),  # label 08-07 23:59:59: known on 08-08
        (6, T(2018, 8, 8, 0, 0, 1), 0, True),
        (7, T(2018, 8, 1, 0, 0, 0), 1, False),  # label at 08-08 00:00: not *before* 08-08
        (7, T(2018, 8, 8, 12), 0, False),
        (7, T(2018, 8, 9, 0, 0, 0), 0, True),
        (8, T(2018, 8, 20, 12), 0, False),  # after the test days
    ]
    data = pl.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "ts": [r[1] for r in rows],
            "is_fraud": [r[2] for r in rows],
        },
        schema_overrides={"ts": pl.Datetime("us"), "is_fraud": pl.Int8},
    ).with_columns(label_ts=pl.col("ts") + dt.timedelta(days=7))
    removed = known_compromised_mask(data, window)
    assert removed.tolist() == [r[3] for r in rows]
    # the handbook's day rule: on test day T, frauds of days train_start .. T - 8 are known
    day = data["ts"].dt.date().to_list()
    handbook = []
    for k, (cust, *_rest) in enumerate(rows):
        known = {
            c
            for c, when, fraud, _ in rows
            if fraud and window.train_start <= when.date() <= day[k] - dt.timedelta(days=8)
        }
        handbook.append(window.test_start <= day[k] < window.end and cust in known)
    assert removed.tolist() == handbook


# -- the ceiling: frauds no arrived label can reveal --------------------------------------------


def test_unrevealed_frauds_by_hand() -> None:
    T = dt.datetime
    rows = [  # (id, terminal, ts, fraud_scenario, label delay in hours, unrevealed?)
        (1, 7, T(2018, 8, 1, 0), 2, 10, True),  # a compromise starts: no label yet
        (2, 7, T(2018, 8, 1, 9), 2, 10, True),  # 09:00 < 10:00, when id 1's label arrives
        (3, 7, T(2018, 8, 1, 10), 2, 10, False),  # id 1's label has arrived: revealed
        (4, 7, T(2018, 8, 2, 0), 0, 10, False),  # a genuine payment ends the run
        (5, 7, T(2018, 8, 2, 1), 2, 0, False),  # a new run: its own label arrives at once
        (6, 8, T(2018, 8, 2, 1), 1, 48, False),  # scenario 1 starts terminal 8's run ...
        (7, 8, T(2018, 8, 2, 2), 2, 48, True),
        (8, 8, T(2018, 8, 4, 1), 2, 48, False),  # ... and its label reveals the rest
        (9, 9, T(2018, 8, 2, 1), 3, 48, False),  # a stolen card's fraud: never counted,
        (10, 9, T(2018, 8, 2, 2), 2, 48, True),  # but it starts the run
    ]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))  # the row order of the data does not matter
    data = pl.DataFrame(
        {
            "transaction_id": [rows[k][0] for k in order],
            "terminal_id": [rows[k][1] for k in order],
            "ts": [rows[k][2] for k in order],
            "fraud_scenario": [rows[k][3] for k in order],
            "label_ts": [rows[k][2] + dt.timedelta(hours=rows[k][4]) for k in order],
        },
        schema_overrides={"ts": pl.Datetime("us"), "label_ts": pl.Datetime("us")},
    ).with_columns(
        pl.col("fraud_scenario").cast(pl.Int8),
        is_fraud=(pl.col("fraud_scenario") > 0).cast(pl.Int8),
    )
    assert unrevealed_frauds(data).tolist() == [rows[k][5] for k in order]


def test_ceiling_ranks_unrevealed_frauds_at_chance() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    unrevealed = np.array([0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.1, 0.5, 0.7, 0.6, 0.2, 0.05])
    bound = ceiling(y, scores, unrevealed)
    assert bound["roc_auc"] == 1 - 1 / 8  # one of 4 frauds at AUC 1/2
    assert bound["unrevealed_frauds"] == 1
    # spread: that one fraud's AUC over 4 genuine rows at random, var (1 + 4 + 1) / (12 * 4)
    assert bound["roc_auc_sd"] == pytest.approx(0.25 * (6 / 48) ** 0.5)
    # the model without it: 0.9, 0.8 above every genuine row, 0.1 above 1 of 4
    assert bound["model_roc_auc_on_revealed"] == pytest.approx((4 + 4 + 1) / 12)


# -- the window --------------------------------------------------------------------------------


def test_window_defaults_to_the_handbook_then_to_the_latest_that_fits() -> None:
    first, last = D(2018, 4, 1), D(2018, 9, 30)  # the simulator's 183 days
    assert choose_window(first, last) == Window(D(2018, 7, 25))
    assert choose_window(first, D(2018, 8, 14)) == Window(D(2018, 7, 25))  # just covers it
    # the handbook's window does not fit: the test ends on the data's last day
    assert choose_window(first, D(2018, 8, 13)).train_start == D(2018, 7, 24)
    assert choose_window(D(2018, 7, 26), last).end == D(2018, 10, 1)
    short = choose_window(first, D(2018, 5, 30), train_days=3, gap_days=2, test_days=4)
    assert short.as_dict()["train"] == ["2018-05-22", "2018-05-24"]
    assert short.as_dict()["test"] == ["2018-05-27", "2018-05-30"]
    with pytest.raises(EvaluationError, match=r"too few days .* needs 21 days"):
        choose_window(first, D(2018, 4, 20))
    with pytest.raises(EvaluationError, match="too few days"):
        choose_window(first, last, train_start=D(2018, 3, 30))
    with pytest.raises(EvaluationError, match="too few days"):
        choose_window(first, last, train_start=D(2018, 9, 20))


def test_the_model_fits_on_fit_days_to_the_training_weeks_end() -> None:
    first, last = D(2018, 4, 1), D(2018, 9, 30)
    two_weeks = choose_window(first, last, fit_days=14)
    assert two_weeks == Window(D(2018, 7, 25), fit_days=14)  # the protocol's weeks unchanged
    assert two_weeks.as_dict()["fit"] == ["2018-07-18", "2018-07-31"]
    assert two_weeks.as_dict()["fit_days"] == 14 and two_weeks.test_start == D(2018, 8, 8)
    assert Window(D(2018, 7, 25)).as_dict()["fit"] == ["2018-07-25", "2018-07-31"]
    assert Window(D(2018, 7, 25), fit_days=3).fit_start == D(2018, 7, 29)  # the week's last 3
    assert fold_windows(two_weeks, 2)[1].as_dict()["fit"] == ["2018-07-25", "2018-08-07"]
    # data from 07-20: the handbook's week fits, its fit days do not: the latest start that does
    assert choose_window(D(2018, 7, 20), last, fit_days=14).train_start == D(2018, 9, 10)
    with pytest.raises(EvaluationError, match=r"needs 28 days \(7 more fit days, then 7 train"):
        choose_window(D(2018, 7, 20), last, train_start=D(2018, 7, 25), fit_days=14)
    with pytest.raises(EvaluationError, match="fit days must be at least 1"):
        choose_window(first, last, fit_days=0)


# -- the commands, end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, transactions) of a small simulated dataset: 60 days from 2018-04-01."""
    root = tmp_path_factory.mktemp("evaluate")
    config = root / "small.yaml"
    config.write_text(
        yaml.safe_dump({"gather": {"simulator": {"n_customers": 400, "n_terminals": 800}}})
    )
    out = root / "tx.parquet"
    fraudpipe("simulate", "--days", "60", "--output", str(out), "--config", str(config), check=True)
    return config, out


def test_simulate_writes_our_columns_reproducibly(small: tuple[Path, Path], tmp_path: Path) -> None:
    config, first = small
    data = pl.read_parquet(first)
    assert data.columns == [
        "transaction_id",
        "ts",
        "customer_id",
        "terminal_id",
        "amount",
        "is_fraud",
        "fraud_scenario",
    ]
    assert data["ts"].dt.date().min() == D(2018, 4, 1)
    assert data["ts"].dt.date().max() == D(2018, 5, 30)
    assert 0 < data["is_fraud"].sum() < data.height
    again = tmp_path / "again.csv"
    fraudpipe(
        "simulate", "--days", "60", "--output", str(again), "--config", str(config), check=True
    )
    from_csv = pl.read_csv(again, try_parse_dates=True).cast(data.schema)  # type: ignore[arg-type]
    assert from_csv.equals(data)
    bad = fraudpipe("simulate", "--output", str(tmp_path / "tx.json"))
    assert bad.returncode == 2 and ".json" not in bad.stdout and "suffix" in bad.stderr


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_evaluate_end_to_end_in_handbook_columns(
    small: tuple[Path, Path], tmp_path: Path, suffix: str
) -> None:
    config, source = small
    handbook = pl.read_parquet(source).drop("fraud_scenario")
    handbook = handbook.rename({ours: theirs for ours, theirs in HANDBOOK_COLUMNS.items()})
    path = tmp_path / f"handbook{suffix}"
    if suffix == ".csv":
        handbook.write_csv(path)
    else:
        handbook.write_parquet(path)
    args = ("evaluate", "--input", str(path), "--config", str(config))

    proc = fraudpipe(*args, "--train-start", "2018-05-01", "--json", check=True)
    out = json.loads(proc.stdout)
    assert out["window"]["train"] == ["2018-05-01", "2018-05-07"]
    assert out["window"]["test"] == ["2018-05-15", "2018-05-21"]
    # the model fits on train.train_days (14) to the week's end, as the train stage does; the
    # handbook's week alone with --fit-days 7: the same test rows either way
    assert out["window"]["fit"] == ["2018-04-24", "2018-05-07"]
    week = fraudpipe(*args, "--train-start", "2018-05-01", "--fit-days", "7", "--json", check=True)
    week_only = json.loads(week.stdout)
    assert week_only["window"]["fit"] == week_only["window"]["train"]
    assert week_only["test"] == out["test"]
    assert 1.5 < out["train"]["n"] / week_only["train"]["n"] < 2.5
    m = out["metrics"]
    assert 0.5 < m["roc_auc"] <= 1 and 0 < m["average_precision"] <= 1
    assert 0 < m["card_precision_at_100"] <= 1 and len(m["card_precision_at_100_per_day"]) == 7
    assert out["test"]["removed_known_compromised"] > 0
    assert out["train"]["n_fraud"] > 0 and out["test"]["n_fraud"] > 0
    assert out["published"]["tuned XGBoost"]["average_precision"] == 0.687
    assert out["ceiling"] == {
        "roc_auc": None,
        "average_precision": None,
        "why": "the data carries no fraud_scenario (the simulator's truth)",
    }

    # default window: the latest that fits
    table = fraudpipe(*args, env={"COLUMNS": "200"}, check=True)
    assert "train 2018-05-10..2018-05-16" in table.stdout
    assert "fraudpipe fitted on 2018-05-03..2018-05-16" in " ".join(table.stdout.split())
    assert "test 2018-05-24..2018-05-30" in table.stdout
    for name in ("fraudpipe (LightGBM", "logistic regression", "0.871", "tuned XGBoost", "0.303"):
        assert name in table.stdout


def test_evaluate_gives_the_ceiling_on_simulator_truth(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    config, source = small
    args = ("evaluate", "--config", str(config), "--train-start", "2018-05-01")
    out = json.loads(fraudpipe(*args, "--input", str(source), "--json", check=True).stdout)
    bound, n_fraud = out["ceiling"], out["test"]["n_fraud"]
    assert 0 < bound["unrevealed_frauds"] < n_fraud
    assert bound["roc_auc"] == pytest.approx(1 - bound["unrevealed_frauds"] / (2 * n_fraud))
    assert 0 < bound["roc_auc_sd"] < 0.1
    assert 0.5 < bound["model_roc_auc_on_revealed"] <= 1
    table = fraudpipe(*args, "--input", str(source), env={"COLUMNS": "200"}, check=True).stdout
    assert "ceiling: unrevealed frauds at chance" in table
    assert f"{bound['unrevealed_frauds']} of {n_fraud} test frauds" in table
    assert f"{bound['roc_auc']:.3f} ± {bound['roc_auc_sd']:.3f}" in table

    noisy = tmp_path / "noisy.parquet"
    flipped = pl.col("transaction_id") % 97 == 0
    pl.read_parquet(source).with_columns(
        is_fraud=pl.when(flipped).then(1 - pl.col("is_fraud")).otherwise(pl.col("is_fraud"))
    ).write_parquet(noisy)
    out = json.loads(fraudpipe(*args, "--input", str(noisy), "--json", check=True).stdout)
    assert out["ceiling"] == {
        "roc_auc": None,
        "average_precision": None,
        "why": "fraud_scenario disagrees with is_fraud (noisy labels)",
    }
    table = fraudpipe(*args, "--input", str(noisy), env={"COLUMNS": "200"}, check=True).stdout
    assert "ceiling" not in table


def test_unrevealed_frauds_are_what_no_feature_can_see(small: tuple[Path, Path]) -> None:
    """On simulated data: against a row-by-row reference, and features of unrevealed frauds
    unchanged when every label of their compromise is dropped."""
    _, source = small
    data = evaluate.load(source, 7)
    mask = unrevealed_frauds(data)
    expected = np.zeros(data.height, dtype=bool)
    run_of: dict[int, list[int]] = {}  # row -> the rows of its run so far
    by_terminal = data.with_row_index("row").sort("terminal_id", "ts", "transaction_id")
    for _, group in by_terminal.group_by("terminal_id", maintain_order=True):
        run: list[int] = []
        for r in group.iter_rows(named=True):
            if r["is_fraud"] != 1:
                run = []
                continue
            run.append(r["row"])
            run_of[r["row"]] = list(run)
            arrived = [k for k in run if data["label_ts"][k] <= r["ts"]]
            expected[r["row"]] = r["fraud_scenario"] == 2 and not arrived
    assert mask.tolist() == expected.tolist()
    assert 10 < mask.sum() < (data["fraud_scenario"] == 2).sum()

    tx = data.select("transaction_id", "ts", "customer_id", "terminal_id", "amount").with_columns(
        created_at=pl.lit(0.0)
    )
    labels = data.select("transaction_id", "is_fraud", "label_ts")
    cfg = FeatureSettings()
    ids = data["transaction_id"]
    runs: dict[int, list[int]] = {}  # the first row of a run -> its unrevealed rows
    for row in np.flatnonzero(mask):
        runs.setdefault(run_of[int(row)][0], []).append(int(row))
    for rows in runs.values():
        query = ids.gather(rows)
        hidden = ids.gather(run_of[rows[-1]]).implode()
        seen = compute_features(tx, labels, cfg, query_ids=query)
        blind = labels.filter(~pl.col("transaction_id").is_in(hidden))
        assert seen.equals(compute_features(tx, blind, cfg, query_ids=query))


def test_evaluate_bad_input_exits_2_naming_the_problem(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    config, source = small
    missing = fraudpipe("evaluate", "--input", str(tmp_path / "nope.parquet"))
    assert missing.returncode == 2
    assert "nope.parquet" in missing.stderr and "no such file" in missing.stderr

    wrong = tmp_path / "wrong.csv"
    pl.read_parquet(source).rename({"terminal_id": "merchant"}).write_csv(wrong)
    proc = fraudpipe("evaluate", "--input", str(wrong))
    assert proc.returncode == 2
    assert "terminal_id" in proc.stderr and "TERMINAL_ID" in proc.stderr

    unlabeled = tmp_path / "unlabeled.parquet"
    pl.read_parquet(source).drop("is_fraud").write_parquet(unlabeled)
    proc = fraudpipe("evaluate", "--input", str(unlabeled))
    assert proc.returncode == 2 and "no fraud label column" in proc.stderr

    short = tmp_path / "short.parquet"
    pl.read_parquet(source).filter(pl.col("ts") < dt.datetime(2018, 4, 15)).write_parquet(short)
    proc = fraudpipe("evaluate", "--input", str(short), "--config", str(config))
    assert proc.returncode == 2
    assert "too few days for the protocol" in proc.stderr and "14 days" in proc.stderr
    for line in (proc.stderr, missing.stderr):
        assert "Traceback" not in line


# -- folds and the average precision ceiling ----------------------------------------------------


def test_folds_start_at_the_handbook_one_test_length_apart() -> None:
    first, last = D(2018, 4, 1), D(2018, 9, 30)  # the simulator's 183 days
    window = choose_window(first, last, folds=4)
    starts = [w.train_start for w in fold_windows(window, 4)]
    assert starts == [D(2018, 7, 25), D(2018, 8, 1), D(2018, 8, 8), D(2018, 8, 15)]
    assert fold_windows(window, 4)[-1].end == D(2018, 9, 5)
    # four folds need 42 days: the latest that fit end on the data's last day
    late = choose_window(first, D(2018, 9, 1), folds=4)
    assert fold_windows(late, 4)[-1].end == D(2018, 9, 2)
    with pytest.raises(EvaluationError, match=r"needs 42 days \(4 folds of 7 train"):
        choose_window(first, D(2018, 5, 1), folds=4)
    with pytest.raises(EvaluationError, match="folds must be at least 1"):
        choose_window(first, last, folds=0)


def test_ap_ceiling_is_the_mean_over_every_placement_at_chance() -> None:
    """Against every placement of 2 frauds at chance among 3 genuine rows, below 2 frauds
    ranked first, scored by the same average precision the metrics use."""
    from itertools import combinations

    from fraudpipe.model import average_precision

    first, at_chance, genuine = 2, 2, 3
    exact = []
    for places in combinations(range(at_chance + genuine), at_chance):
        below = np.zeros(at_chance + genuine, dtype=np.int8)
        below[list(places)] = 1
        y = np.concatenate([np.ones(first, np.int8), below])
        exact.append(average_precision(y, -np.arange(len(y), dtype=np.float64)))
    mean, sd = ap_at_chance(first, at_chance, genuine, draws=4000)
    assert mean == pytest.approx(np.mean(exact), abs=4 * np.std(exact) / 4000**0.5)
    assert sd == pytest.approx(np.std(exact), rel=0.1)
    assert ap_at_chance(5, 0, 100) == (1.0, 0.0)  # every fraud revealed: a perfect ranking


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory, small: tuple[Path, Path]) -> Path:
    """183 simulated days (the simulator's default span) of the small dataset's population."""
    config, _ = small
    out = tmp_path_factory.mktemp("year") / "tx.parquet"
    fraudpipe("simulate", "--output", str(out), "--config", str(config), check=True)
    return out


@pytest.mark.parametrize(
    ("columns", "suffix"),
    [("ours", ".parquet"), ("handbook", ".csv"), ("handbook", ".parquet")],
)
def test_evaluate_four_folds_gives_means_spreads_and_ceilings(
    small: tuple[Path, Path], year: Path, tmp_path: Path, columns: str, suffix: str
) -> None:
    config, _ = small
    path = year
    if columns == "handbook":  # TX_FRAUD_SCENARIO is the handbook's name for the truth
        names = {**HANDBOOK_COLUMNS, "fraud_scenario": "TX_FRAUD_SCENARIO"}
        data = pl.read_parquet(year).rename(names)
        path = tmp_path / f"handbook{suffix}"
        data.write_csv(path) if suffix == ".csv" else data.write_parquet(path)
    args = ("evaluate", "--input", str(path), "--config", str(config), "--folds", "4")
    out = json.loads(fraudpipe(*args, "--json", check=True).stdout)
    folds, summary = out["folds"], out["summary"]
    assert [f["window"]["train"][0] for f in folds] == [
        "2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15",
    ]  # fmt: skip
    for name in ("roc_auc", "average_precision", "card_precision_at_100"):
        values = [f["metrics"][name] for f in folds]
        assert summary[name]["mean"] == pytest.approx(np.mean(values))
        assert summary[name]["std"] == pytest.approx(np.std(values, ddof=1))
    for f in folds:
        bound = f["ceiling"]
        assert 0 < bound["unrevealed_frauds"] < f["test"]["n_fraud"]
        assert 0.5 < bound["roc_auc"] < 1 and 0 < bound["average_precision"] < 1
        assert bound["average_precision_sd"] > 0
    ceiling_ap = [f["ceiling"]["average_precision"] for f in folds]
    assert summary["ceiling_average_precision"]["mean"] == pytest.approx(np.mean(ceiling_ap))
    assert out["published"]["tuned XGBoost"]["average_precision"] == 0.687

    if columns == "ours":  # the table prints what the JSON holds (once: an evaluation is ~10 s)
        table = fraudpipe(*args, env={"COLUMNS": "220"}, check=True).stdout
        assert "handbook protocol, 4 folds" in table and "tuned XGBoost" in table
        ap = summary["average_precision"]
        assert f"{ap['mean']:.3f} ± {ap['std']:.3f}" in table
        assert "ceilings (simulator truth)" in table
