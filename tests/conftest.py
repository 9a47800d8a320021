from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fraudpipe.config import QueueSettings
from fraudpipe.devices import gpu_problems

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
# Tests of the GPU half: marked gpu, and skipped without a CUDA GPU, naming what is missing.
_CUDA = gpu_problems("cuda")
ON_GPU = [
    pytest.mark.gpu,
    pytest.mark.skipif(bool(_CUDA), reason="needs a CUDA GPU: " + "".join(_CUDA[:1]).split(";")[0]),
]


@pytest.fixture
def qsettings() -> QueueSettings:
    return QueueSettings(
        lease_s=1.0, max_attempts=3, max_backlog=1000, retention_s=3600, fsync=False
    )


def fraudpipe(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process (as a user would)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDPIPE_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "fraudpipe", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"fraudpipe {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def post_json(url: str, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
    """POST JSON (with a bearer token if given) to a dashboard control: status and answer."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
