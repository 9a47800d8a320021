from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fraudpipe.config import QueueSettings

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


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
