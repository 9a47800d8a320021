"""Helpers for tests that run the real pipeline: configs, expected ids, result checks."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from fraudpipe.config import load_settings
from fraudpipe.eventlog import EventLog
from fraudpipe.layout import RESULTS, TOPICS, Layout
from fraudpipe.queue import Queue
from fraudpipe.results import ResultsStore, read_all
from fraudpipe.simulate import Simulator
from tests.conftest import fraudpipe

# A first model as soon as a small world has labels, trained on one thread, quickly.
FAST_TRAINING = {
    "min_labeled_rows": 3000,
    "min_frauds": 20,
    "interval_s": 30,
    "threads": 1,
    "num_boost_round": 60,
}


def small_config(
    tmp_path: Path,
    days: int = 20,
    rate: float = 40000,
    lease_s: float = 4,
    **extra: dict[str, object],
) -> Path:
    """A pipeline that streams `days` simulated days fast and trains its first model early."""
    doc: dict[str, dict[str, object]] = {
        "gather": {
            "rate": rate,
            "days": days,
            "batch_interval_s": 0.25,
            "simulator": {"n_customers": 2000, "n_terminals": 4000},
        },
        "train": dict(FAST_TRAINING),
        "queue": {"lease_s": lease_s, "results_hold_s": 1, "fsync": False},
    }
    for section, values in extra.items():
        doc.setdefault(section, {}).update(values)
    path = tmp_path / "fraudpipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def expected_ids(config: Path) -> pl.Series:
    """Every transaction id the simulator generates for the configured days, independently."""
    s = load_settings(config)
    sim = Simulator(s.gather.simulator, s.gather.label_delay_days)
    assert s.gather.days is not None
    return pl.concat([sim.day(d)["transaction_id"] for d in range(s.gather.days)])


def scored(data_dir: Path, config: Path) -> pl.DataFrame:
    s = load_settings(config, {"data_dir": data_dir})
    layout = Layout(data_dir)
    topic = Queue(layout.queue, s.queue).topic(RESULTS)
    df = read_all(ResultsStore(layout.results), topic)
    assert df is not None, "no results at all"
    return df


def assert_exactly_once(data_dir: Path, config: Path) -> pl.DataFrame:
    df = scored(data_dir, config)
    want = expected_ids(config)
    dup = df.group_by("transaction_id").len().filter(pl.col("len") > 1)
    assert dup.height == 0, f"{dup.height} transactions scored more than once"
    missing = set(want.to_list()) - set(df["transaction_id"].to_list())
    extra = set(df["transaction_id"].to_list()) - set(want.to_list())
    assert not missing, f"{len(missing)} generated transactions never scored"
    assert not extra, f"{len(extra)} scored ids were never generated"
    return df


def queue_states(data_dir: Path, config: Path) -> dict[str, dict[str, int]]:
    s = load_settings(config, {"data_dir": data_dir})
    q = Queue(Layout(data_dir).queue, s.queue)
    return {t: q.topic(t).stats().as_dict() for t in TOPICS}


def run_stage(name: str, mode: str, data: Path, cfg: Path) -> None:
    """`fraudpipe worker --stage=NAME MODE` (--once or --burst) as a real process; must succeed."""
    fraudpipe(
        "worker",
        f"--stage={name}",
        mode,
        "--data-dir",
        str(data),
        "--config",
        str(cfg),
        "--port",
        "0",
        check=True,
    )


def log_arrived_labels(
    log: EventLog,
    name: str,
    ids: np.ndarray,
    fraud: np.ndarray,
    ts: list[dt.datetime],
    delay: dt.timedelta,
    horizon: dt.datetime,
) -> pl.DataFrame:
    """Write to the event log the labels of these transactions that arrived (ts + delay) by
    horizon, as gather does; return them."""
    labels = pl.DataFrame(
        {
            "transaction_id": ids,
            "is_fraud": fraud.astype(np.int8),
            "label_ts": [t + delay for t in ts],
            "fraud_scenario": fraud.astype(np.int8),
        },
        schema_overrides={"label_ts": pl.Datetime("us")},
    ).filter(pl.col("label_ts") <= horizon)
    if labels.height:
        log.write("labels", name, labels, labels["label_ts"].min().date())
    return labels


def wait_for(predicate: Callable[[], object], timeout: float) -> None:
    """Wait until predicate() holds (a condition, never a fixed time), or fail after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def end(proc: subprocess.Popen[str]) -> None:
    """Kill proc if it still runs, reap it and close its pipe: nothing left to the GC (whose
    ResourceWarnings would fail whatever test happens to run then)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False
