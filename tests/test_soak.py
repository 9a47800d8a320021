"""The short fault soak (tests/soak.py) on one volume and on two network mounts of it.

`make soak SOAK_S=1800` runs a long one; these are what CI runs on every change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import netfs
from tests.soak import Plan, run_soak

pytestmark = pytest.mark.slow


def soak(tmp_path: Path, mounts: int) -> dict[str, object]:
    result = run_soak(Plan(seconds=60, mounts=mounts, seed=1, workdir=tmp_path / "soak"))
    assert result["problems"] == [], json.dumps(result, indent=2)
    logged = result["logged"]
    assert isinstance(logged, dict)
    # the faults happened and bit: without these the audit would prove little
    faults = result["faults"]
    assert isinstance(faults, dict)
    for stage in ("gather", "preprocess", "train", "infer"):
        assert faults.get(f"SIGKILL {stage}", 0) >= 1, faults
    assert faults.get("poison batches") == 6 and faults.get("stall of every preprocess") == 1
    if result["volume"] == "tmpfs":
        assert logged.get("stage.held_up", 0) >= 1, logged  # the full volume was felt
    if faults.get("corrupt model promoted"):
        assert logged.get("model.refused", 0) >= 1, logged  # and the bad model refused
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount the soak's tmpfs")
def test_soak_on_one_volume(tmp_path: Path) -> None:
    result = soak(tmp_path, mounts=1)
    assert result["faults"]["supervisor SIGKILL"] >= 1  # type: ignore[index]


@pytest.mark.skipif(netfs.missing() is not None, reason=f"two mounts: {netfs.missing()}")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for sshd and the mounts")
def test_soak_on_two_mounts_of_one_export(tmp_path: Path) -> None:
    result = soak(tmp_path, mounts=2)
    nodes = result["batches_by_node"]
    assert isinstance(nodes, dict)
    # Both nodes handled batches through their own mount; and while node a was out, node b
    # (gather's node: the stream went on) took over every stage that had run on both. Which
    # node wins a batch otherwise is the listings' business: the one that wrote it sees it first.
    for node in "ab":
        assert sum(n for where, n in nodes.items() if where.endswith(f"node {node}")) > 0, nodes
    for stage in ("preprocess", "infer"):
        assert nodes.get(f"{stage} on node b", 0) > 0, nodes
