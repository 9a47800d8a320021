"""`fraudpipe check` (what `helm test` runs) against a real pipeline, live and then stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fraudpipe.config import load_settings
from fraudpipe.layout import RAW
from fraudpipe.runner import Supervisor
from fraudpipe.worker import read_status
from tests.conftest import fraudpipe
from tests.pipeline import run_stage, small_config

pytestmark = pytest.mark.slow


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")
    }


def test_check_passes_on_live_flow_and_fails_on_old_results(tmp_path: Path) -> None:
    cfg, data = small_config(tmp_path, days=20, rate=5000), tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDPIPE_")}
    run = subprocess.Popen(
        [sys.executable, "-m", "fraudpipe", "run", "--data-dir", str(data), "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        live = fraudpipe(
            "check",
            "--data-dir",
            str(data),
            "--config",
            str(cfg),
            "--timeout",
            "120",
            "--json",
            timeout=180,
        )
        assert live.returncode == 0, live.stdout + live.stderr
        report = json.loads(live.stdout)
        assert report["ok"] and report["rows"] > 0 and report["model_version"]
        assert report["problems"] == []
        assert run.wait(timeout=300) == 0  # the finite stream ends once all is scored
    finally:
        run.kill()
        run.wait()

    # Everything was scored, but nothing is flowing now: old results must not pass.
    before = _tree(data)
    stale = fraudpipe("check", "--data-dir", str(data), "--config", str(cfg), "--timeout", "3")
    assert stale.returncode == 1
    assert "no end-to-end flow within 3s" in stale.stderr
    for stage in ("gather", "preprocess", "train", "infer"):
        assert f"no live {stage} worker" in stale.stderr
    assert "no model promoted yet" not in stale.stderr
    assert _tree(data) == before, "check wrote to the data dir (helm test mounts it read-only)"


def test_check_names_the_backlog_and_survives_any_status_file(tmp_path: Path) -> None:
    """Every stage alive, yet nothing new scored: check must say where the work waits, and
    no status file, however malformed, may crash it (or `fraudpipe run`)."""
    cfg, data = small_config(tmp_path, days=4), tmp_path / "data"
    run_stage("gather", "--burst", data, cfg)
    raw = len(list((data / "queue" / RAW / "pending").iterdir()))
    status = data / "status"
    now = time.time()
    for stage in ("gather", "preprocess", "train", "infer"):
        doc = {"worker": f"{stage}.x", "stage": stage, "pid": 1, "heartbeat_at": now + 60}
        (status / f"{stage}.json").write_text(json.dumps(doc))
    for i, junk in enumerate(
        [
            "[]",
            '{"stage": 1}',
            '{"stage": "infer", "heartbeat_at": "x"}',
            '{"worker": "w", "stage": "infer", "pid": 2}',
            "not json",
            "7",
        ]
    ):
        (status / f"junk-{i}.json").write_text(junk)  # fmt: skip
    settings = load_settings(cfg, {"data_dir": data})
    assert sorted(w["stage"] for w in read_status(status)) == [
        "gather", "infer", "preprocess", "train"
    ]  # fmt: skip
    snap = Supervisor(settings, {}).snapshot()  # what `fraudpipe run` shows every half second
    assert snap["stages"]["infer"]["replicas"] == 1
    stuck = fraudpipe("check", "--data-dir", str(data), "--config", str(cfg), "--timeout", "2")
    assert stuck.returncode == 1
    assert f"raw-transactions: {raw} of at most 64 batches pending" in stuck.stderr
    assert "preprocess is behind" in stuck.stderr and "the oldest waiting" in stuck.stderr
    assert "every stage is alive, yet nothing new was scored" not in stuck.stderr
