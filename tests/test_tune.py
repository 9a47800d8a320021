"""`--tune`: a small parameter search on the time-ordered validation split, then the refit.

Real simulated data, the real CLI, real LightGBM: each candidate is early-stopped on the last
``valid_days`` of the training rows (the same split as the untuned path), the one with the best
validation average precision is refitted on every row, and the manifest records every trial.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
import yaml

from fraudpipe.config import SimulatorSettings, TrainSettings, load_settings
from fraudpipe.features import feature_names
from fraudpipe.model import (
    TUNING_SPACE,
    CannotTune,
    TrainingStopped,
    average_precision,
    booster_params,
    train_booster,
    train_with_validation,
    tuning_candidates,
)
from fraudpipe.simulate import Simulator
from fraudpipe.training import split_holdout
from tests.conftest import fraudpipe

DAYS = 30
WINDOW = ("--train-start", "2018-04-01", "--train-end", "2018-05-01")  # all 30 days
TRIALS = 4


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated history, its features (`fraudpipe features`) and a config."""
    tmp = tmp_path_factory.mktemp("tune")
    sim = Simulator(SimulatorSettings(n_customers=300, n_terminals=600), label_delay_days=7.0)
    pl.concat([sim.day(d) for d in range(DAYS)]).drop("label_ts").write_parquet(tmp / "tx.parquet")
    config = {
        "gather": {"label_delay_days": 7.0},
        "train": {"threads": 1, "num_boost_round": 40, "min_data_in_leaf": 20, "valid_days": 3},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(config))
    cli(tmp, "features", "--input", str(tmp / "tx.parquet"), "--output", str(tmp / "f.parquet"))
    return tmp


def cli(work: Path, *args: str) -> str:
    """stdout of `fraudpipe ARGS --config CFG`, with room for wide tables; must succeed."""
    config = ("--config", str(work / "cfg.yaml"))
    return fraudpipe(*args, *config, env={"COLUMNS": "200"}, check=True).stdout


@pytest.fixture(scope="module")
def rows(work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, TrainSettings, list[str]]:
    """(X, y, day, cfg, feature names) of the training rows `fraudpipe train` learns from."""
    settings = load_settings(work / "cfg.yaml")
    names = feature_names(settings.features)
    data = pl.read_parquet(work / "f.parquet").filter(pl.col("is_fraud").is_not_null())
    train = split_holdout(data.sort("ts", "transaction_id"), settings.train.holdout_days).train
    X = np.ascontiguousarray(train.select(names).to_numpy(), dtype=np.float32)
    day = train["ts"].dt.epoch("d").to_numpy()
    return X, train["is_fraud"].to_numpy(), day, settings.train, names


def test_candidates_start_with_the_configured_params_and_follow_the_seed() -> None:
    cfg = TrainSettings(num_leaves=15, learning_rate=0.1)
    first, *others = tuning_candidates(cfg, 12)
    configured = booster_params(cfg)
    assert first == {name: configured[name] for name in TUNING_SPACE}
    assert first["num_leaves"] == 15 and first["learning_rate"] == 0.1
    assert len({json.dumps(c, sort_keys=True) for c in [first, *others]}) == 12  # distinct
    for candidate in others:
        assert all(candidate[name] in values for name, values in TUNING_SPACE.items())
    assert tuning_candidates(cfg, 12) == [first, *others]  # the same seed, the same sample
    assert tuning_candidates(cfg, 12, seed=7) != [first, *others]
    assert tuning_candidates(cfg, 1) == [first]
    for n in (0, 10_000):
        with pytest.raises(ValueError, match=f"not {n}"):
            tuning_candidates(cfg, n)


def test_search_refits_the_trial_with_the_best_validation_ap(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, TrainSettings, list[str]],
) -> None:
    X, y, day, cfg, names = rows
    seen: list[int] = []
    booster, info = train_with_validation(
        X, y, day, cfg, names, tune_trials=TRIALS, on_trial=lambda t, n: seen.append(len(t))
    )
    assert seen == list(range(1, TRIALS + 1))
    tuning = info["tuning"]
    trials = tuning["trials"]
    assert [t["params"] for t in trials] == tuning_candidates(cfg, TRIALS)
    aps = [t["valid_average_precision"] for t in trials]
    assert len(set(aps)) > 1, "the candidates should not all score alike"
    best = trials[int(np.argmax(aps))]  # argmax: the first of equals
    assert tuning["chosen"] == best["params"]
    assert info["best_iteration"] == best["best_iteration"]
    assert info["valid_average_precision"] == best["valid_average_precision"]

    # Every trial is what an early-stopped training on the last valid_days gives.
    is_valid = day >= np.unique(day)[-cfg.valid_days]
    assert info["valid_n"] == int(is_valid.sum())
    for trial in trials:
        alone = train_booster(
            X[~is_valid],
            y[~is_valid],
            cfg,
            names,
            tuned=trial["params"],
            valid=(X[is_valid], y[is_valid]),
        )
        assert alone.best_iteration == trial["best_iteration"]
        scores = alone.predict(X[is_valid], num_iteration=alone.best_iteration)
        ap = average_precision(y[is_valid], scores)
        assert trial["valid_average_precision"] == pytest.approx(ap, abs=1e-9)

    # The final booster is the chosen candidate's refit on every row, as the untuned path does.
    assert info["rounds"] == round(best["best_iteration"] * len(y) / int((~is_valid).sum()))
    refit = train_booster(
        X,
        y,
        cfg.model_copy(update={"num_boost_round": info["rounds"]}),
        names,
        tuned=best["params"],
    )
    assert booster.model_to_string() == refit.model_to_string()
    for name, value in best["params"].items():
        assert booster.params[name] == value

    # One trial is the configured parameters alone: the untuned model, and the same seed
    # gives the same search.
    untuned, plain = train_with_validation(X, y, day, cfg, names)
    one, single = train_with_validation(X, y, day, cfg, names, tune_trials=1)
    assert "tuning" not in plain and single["tuning"]["trials"][0] == trials[0]
    assert one.model_to_string() == untuned.model_to_string()
    again, repeated = train_with_validation(X, y, day, cfg, names, tune_trials=TRIALS)
    assert repeated == info and again.model_to_string() == booster.model_to_string()


def test_search_stops_on_request_and_needs_a_validation_split(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, TrainSettings, list[str]],
) -> None:
    X, y, day, cfg, names = rows
    trials: list[int] = []
    with pytest.raises(TrainingStopped):
        train_with_validation(
            X,
            y,
            day,
            cfg,
            names,
            tune_trials=TRIALS,
            should_stop=lambda: len(trials) == 2,
            on_trial=lambda t, n: trials.append(len(t)),
        )
    assert trials == [1, 2]  # stopped during the third trial
    no_split = cfg.model_copy(update={"valid_days": 0})
    with pytest.raises(CannotTune, match="valid_days is 0"):
        train_with_validation(X, y, day, no_split, names, tune_trials=TRIALS)


def test_train_tune_records_every_trial_in_the_manifest(work: Path) -> None:
    settings = load_settings(work / "cfg.yaml")
    out = cli(work, "train", "--features", str(work / "f.parquet"), *WINDOW, "--tune-trials",
              str(TRIALS), "--output", str(work / "model"))  # fmt: skip
    manifest = json.loads((work / "model" / "manifest.json").read_text())
    tuning = manifest["fit"]["tuning"]
    assert len(tuning["trials"]) == TRIALS
    aps = [t["valid_average_precision"] for t in tuning["trials"]]
    assert tuning["chosen"] == tuning["trials"][int(np.argmax(aps))]["params"]
    assert manifest["params"] == {
        **booster_params(settings.train, tuning["chosen"]),
        "num_boost_round": settings.train.num_boost_round,
    }
    booster = lgb.Booster(model_file=str(work / "model" / "model.txt"))
    assert booster.params["num_leaves"] == tuning["chosen"]["num_leaves"]
    assert booster.params["lambda_l2"] == tuning["chosen"]["lambda_l2"]
    assert booster.num_trees() == manifest["fit"]["rounds"] == manifest["num_trees"]
    # the table of trials: a header, and the chosen one marked
    assert "parameter search (--tune)" in out and "valid AP" in out
    assert f"{max(aps):.4f}" in out


def test_evaluate_tune_reports_the_search(work: Path) -> None:
    week = ("--train-start", "2018-04-05", "--fit-days", "7")  # 30 days: no room for 14 fit days
    args = ("evaluate", "--input", str(work / "tx.parquet"), *week)
    out = json.loads(cli(work, *args, "--tune", "--tune-trials", "3", "--json"))
    tuning = out["train"]["tuning"]
    assert len(tuning["trials"]) == 3
    aps = [t["valid_average_precision"] for t in tuning["trials"]]
    assert tuning["chosen"] == tuning["trials"][int(np.argmax(aps))]["params"]
    assert 0.5 < out["metrics"]["roc_auc"] <= 1


NO_SPLIT = {"FRAUDPIPE_TRAIN__VALID_DAYS": "0"}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("train", "--tune-trials", "0"), {}, "--tune-trials"),
        (("train", "--tune-trials", "-3"), {}, "--tune-trials"),
        (("evaluate", "--tune-trials", "0"), {}, "--tune-trials"),
        (("train", "--tune"), NO_SPLIT, "validation split: train.valid_days is 0"),
        (("evaluate", "--tune"), NO_SPLIT, "validation split: train.valid_days is 0"),
    ],
    ids=["train-0", "train-negative", "evaluate-0", "train-no-split", "evaluate-no-split"],
)
def test_bad_tune_input_exits_2_naming_it(
    work: Path, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    source = ["--input", str(work / "tx.parquet"), "--train-start", "2018-04-05", "--fit-days", "7"]
    if args[0] == "train":
        source = ["--features", str(work / "f.parquet"), *WINDOW, "--output", str(tmp_path / "m")]
    proc = fraudpipe(args[0], *source, *args[1:], "--config", str(work / "cfg.yaml"), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()
