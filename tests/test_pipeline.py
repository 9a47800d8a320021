"""The whole pipeline as real processes (`fraudpipe run`): replicas, bad input, SIGKILL chaos."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from fraudpipe.config import load_settings
from fraudpipe.layout import FEATURES, RAW, TOPICS, Layout
from fraudpipe.queue import Queue
from fraudpipe.worker import read_status
from tests.audit import audit, offline_features
from tests.conftest import fraudpipe
from tests.pipeline import (
    alive,
    assert_exactly_once,
    end,
    queue_states,
    run_stage,
    small_config,
    wait_for,
)

pytestmark = pytest.mark.slow


def start_run(data: Path, cfg: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDPIPE_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fraudpipe",
            "run",
            "--data-dir",
            str(data),
            "--config",
            str(cfg),
            "--replicas",
            "preprocess=2",
            "--replicas",
            "infer=2",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, object]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    start = out.rindex("\n{\n")  # the final summary is the last JSON document
    summary, _ = json.JSONDecoder().raw_decode(out[start:].lstrip())
    return summary  # type: ignore[no-any-return]


def test_replicas_score_every_transaction_exactly_once(tmp_path: Path) -> None:
    cfg, data = small_config(tmp_path, days=24, rate=20000), tmp_path / "data"
    proc = start_run(data, cfg, "--duration", "240")
    try:
        wait_for(lambda: len(read_status(data / "status")) == 6, 60)
        stages = sorted(w["stage"] for w in read_status(data / "status"))
        assert stages == ["gather", "infer", "infer", "preprocess", "preprocess", "train"]
        # Operators' worst case: garbage dropped into live topics. It must not stop the flow.
        (data / "queue" / RAW / "pending" / "0000000000001-junk-00000001~0.parquet").write_bytes(
            b"\x00" * 100
        )
        pl.DataFrame({"what": ["not features"]}).write_parquet(
            data / "queue" / FEATURES / "pending" / "0000000000002-junk-00000002~0.parquet"
        )
        summary = finish(proc, 300)
    finally:
        end(proc)
    df = assert_exactly_once(data, cfg)
    assert summary["generated"] == summary["scored"] == df.height
    assert summary["model"] is not None and summary["alerts"] > 0
    states = queue_states(data, cfg)
    assert states[RAW]["dead"] == 1 and states[FEATURES]["dead"] == 1
    assert all(states[t]["claimed"] == 0 for t in TOPICS)
    # Both replicas of each scaled stage really worked.
    logs = data / "run" / "logs"
    for name in ("preprocess-0", "preprocess-1", "infer-0", "infer-1"):
        assert '"batch.done"' in (logs / f"{name}.log").read_text() or _worked(logs / f"{name}.log")


def _worked(log: Path) -> bool:
    """A worker's stop line reports the batches it handled."""
    for line in log.read_text().splitlines():
        if '"worker.stopped"' in line and json.loads(line).get("batches", 0) > 0:
            return True
    return False


def holders(data: Path) -> set[str]:
    """Workers holding a claim right now (the consumer is part of a claimed file's name)."""
    return {
        p.stem.split("~")[2]
        for t in TOPICS
        for p in (data / "queue" / t / "claimed").glob("*")
        if p.stem.count("~") == 2
    }


def test_sigkilled_workers_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """SIGKILL of every stage, mostly caught mid-batch, at the queue's defaults: a killed holder
    costs its batch a lost lease, not an attempt, so nothing goes to dead letters. The kills
    go on until their quota is met (not for a fixed time: a loaded machine is slower)."""
    cfg = small_config(tmp_path, days=120, rate=8000, lease_s=2)
    data = tmp_path / "data"
    proc = start_run(data, cfg, "--duration", "600")
    rng = random.Random(11)
    killed: dict[str, int] = {}
    mid_batch = 0

    def quota_met() -> bool:
        return len(killed) == 4 and sum(killed.values()) >= 12 and mid_batch >= 5

    try:
        wait_for(lambda: len(read_status(data / "status")) == 6, 60)
        deadline = time.monotonic() + 300
        while not quota_met() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(rng.uniform(0.2, 0.8))
            live = [w for w in read_status(data / "status") if alive(int(w["pid"]))]
            if not live:
                continue
            # Kill a worker caught mid-batch (holding a claim) whenever there is one: that is
            # what must not lose or duplicate anything; but once a stage falls 3 kills behind
            # (gather never holds a claim), it is that stage's turn.
            busy = [w for w in live if w["worker"] in holders(data)]
            counts = {w["stage"]: killed.get(w["stage"], 0) for w in live}
            least = min(counts.values())
            if busy and least > max(counts.values()) - 3:
                todo = busy
            else:
                todo = [w for w in live if counts[w["stage"]] == least]
            victim = rng.choice(todo)
            try:
                os.kill(int(victim["pid"]), signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed[victim["stage"]] = killed.get(victim["stage"], 0) + 1
            mid_batch += victim in busy
        assert quota_met(), (killed, mid_batch)

        def all_back() -> bool:  # every killed worker was started again
            live = [w for w in read_status(data / "status") if alive(int(w["pid"]))]
            return len(live) == 6

        wait_for(all_back, 120)
        summary = finish(proc, 600)
    finally:
        end(proc)
    assert int(summary["restarts"]) >= sum(killed.values())  # type: ignore[call-overload]
    assert_exactly_once(data, cfg)
    states = queue_states(data, cfg)
    assert all(states[t]["claimed"] == 0 for t in TOPICS), states
    assert all(states[t]["dead"] == 0 for t in TOPICS), states


def test_a_stalled_preprocess_finds_its_whole_history(tmp_path: Path) -> None:
    """preprocess needs 37 simulated days of history behind the batch it is at. Stall it
    (SIGSTOP) while gather streams on, far past where its own position would have pruned the
    log, then let it go: every feature row must equal the offline features of the whole file,
    every score a fresh scoring of those, every transaction exactly once."""
    replay = tmp_path / "tx.parquet"
    world = tmp_path / "world.yaml"
    world.write_text(
        yaml.safe_dump({"gather": {"simulator": {"n_customers": 2000, "n_terminals": 4000}}})
    )
    fraudpipe(
        "simulate", "--days", "120", "--output", str(replay), "--config", str(world), check=True
    )
    cfg = small_config(
        tmp_path,
        rate=40000,
        gather={"source": "replay", "replay": {"path": str(replay)}, "days": None},
        features={"store_retention_days": 1000},
    )
    data = tmp_path / "data"
    proc = start_run(data, cfg, "--no-dashboard")
    stalled: list[dict[str, object]] = []
    try:

        def preprocessing() -> list[dict[str, object]]:
            return [w for w in read_status(data / "status") if w["stage"] == "preprocess"]

        wait_for(lambda: len(preprocessing()) == 2, 120)
        stalled = preprocessing()
        for w in stalled:
            os.kill(int(w["pid"]), signal.SIGSTOP)  # at most a few batches in
        stopped_at = time.time()

        def gather_done_and_pruned() -> bool:
            g = [w for w in read_status(data / "status") if w["stage"] == "gather"]
            # finished, and a housekeeping pass (a retention line drawn) since
            return bool(g) and g[0]["finished"] and g[0]["heartbeat_at"] > stopped_at + 5

        wait_for(gather_done_and_pruned, 240)
        ahead = json.loads((data / "state" / "gather" / "checkpoint.json").read_text())
        settings = load_settings(cfg, {"data_dir": data})
        oldest = Queue(Layout(data).queue, settings.queue).topic(RAW).oldest_ms()
        assert oldest is not None
        behind = dt.datetime.fromisoformat(ahead["label_watermark"]) - dt.datetime.fromtimestamp(
            oldest / 1000, dt.UTC
        ).replace(tzinfo=None)
        # past gather's own retention of 60 days: pruning by its position would have cut the
        # history the stalled batches need
        assert behind > dt.timedelta(days=60), (behind, ahead)
        for w in stalled:
            os.kill(int(w["pid"]), signal.SIGCONT)
        summary = finish(proc, 400)
    finally:
        for w in stalled:  # (read_status leaves them out: their heartbeats are stale)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(w["pid"]), signal.SIGCONT)  # type: ignore[call-overload]
        end(proc)
    report = audit(settings, offline_features(replay, cfg, tmp_path / "offline.parquet"))
    assert report.problems() == [], report.summary()
    assert report.features_checked == report.fed == summary["scored"]


def test_workers_die_with_their_supervisor_and_one_run_holds_a_data_dir(tmp_path: Path) -> None:
    """SIGKILL of `fraudpipe run` left every worker running forever, and a second run on the
    same data dir then ran two gathers at once."""
    cfg, data = small_config(tmp_path, days=60, rate=2000), tmp_path / "data"
    first = start_run(data, cfg, "--no-dashboard")
    try:
        wait_for(lambda: len(read_status(data / "status")) == 6, 60)
        pids = [int(w["pid"]) for w in read_status(data / "status")]
        second = start_run(data, cfg, "--no-dashboard")
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 2, out
        assert f"another fraudpipe run (pid {first.pid}) is running on" in out
        first.kill()
        first.wait()

        def gone() -> bool:
            return not any(alive(p) for p in pids)

        wait_for(gone, 60)
        third = start_run(data, cfg, "--no-dashboard")  # the lock went with the killed run
        wait_for(lambda: len(read_status(data / "status")) >= 6, 60)
        third.send_signal(signal.SIGINT)
        summary = finish(third, 120)
        assert summary["interrupted"] is True
    finally:
        end(first)


def test_a_run_that_did_not_score_everything_says_so_and_fails(tmp_path: Path) -> None:
    """`fraudpipe run` exited 0 with scored < generated. Here one generated batch is damaged
    (its event-log entry deleted, so preprocess must refuse it): the run ends with exit 1 and
    says where the rest is. What killed writers left in tmp/ is cleaned when a run starts."""
    cfg, data = small_config(tmp_path, days=16), tmp_path / "data"
    run_stage("gather", "--burst", data, cfg)
    # the newest batch: no later batch's history runs through it
    victim = sorted((data / "queue" / RAW / "pending").iterdir())[-1]
    batch_id = victim.name.split("~")[0]
    lost = pl.read_parquet(victim).height
    next((data / "state" / "log" / "transactions").glob(f"*/{batch_id}.parquet")).unlink()
    tmp = data / "queue" / RAW / "tmp"
    host = socket.gethostname().split(".")[0]
    dead_writer = tmp / f".x~0.parquet.{host}.999999999.ab12cd34.tmp"
    live_writer = tmp / f".y~0.parquet.{host}.{os.getpid()}.ab12cd34.tmp"
    dead_writer.write_bytes(b"half a file")
    live_writer.write_bytes(b"being written")
    proc = start_run(data, cfg, "--no-dashboard")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 1, out[-3000:]
    generated = json.loads((data / "state" / "gather" / "checkpoint.json").read_text())["rows"]
    assert (
        f"error: {lost:,} of {generated:,} generated transactions were not scored: 1 dead "
        "letter(s) in raw-transactions (fraudpipe queue ls raw-transactions)"
    ) in out
    assert not dead_writer.exists() and live_writer.exists()


def test_a_bad_replay_file_stops_the_run_with_the_reason_on_screen(tmp_path: Path) -> None:
    bad = tmp_path / "tx.csv"
    pl.DataFrame({"ts": ["2024-01-01 00:00:00"], "customer_id": [1], "terminal_id": [2]}).write_csv(
        bad
    )
    cfg = small_config(tmp_path, gather={"source": "replay", "replay": {"path": str(bad)}})
    proc = start_run(tmp_path / "data", cfg, "--no-dashboard")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "error: the gather worker refused to start: gather.replay: replay file" in out
    assert "no column for amount" in out
