"""`fraudpipe check` (what `helm test` runs) against a real pipeline, live and then stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fraudpipe
from tests.pipeline import small_config

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
