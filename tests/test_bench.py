"""`fraudpipe bench --json`: the document's shape, never its speed."""

from __future__ import annotations

import json
from typing import Any

from fraudpipe.bench import SCHEMA_VERSION, STAGES
from tests.conftest import fraudpipe

FIGURE = {
    "rows": int,
    "runs": int,
    "rows_per_s": float,
    "cpu_s_per_million_rows": float,
    "wall_s": float,
    "peak_rss_mb": float,
}


def assert_figure(fig: dict[str, Any], where: str) -> None:
    for key, kind in FIGURE.items():
        assert isinstance(fig.get(key), kind | int), (where, key, fig.get(key))
        assert fig[key] > 0, (where, key)
    latency = fig["batch_latency_ms"]
    if latency is not None:
        assert 0 < latency["p50"] <= latency["p99"], where


def test_bench_json_has_every_figure_beside_its_baseline() -> None:
    proc = fraudpipe("bench", "--rows", "20000", "--runs", "1", "--json", timeout=600, check=True)
    doc = json.loads(proc.stdout)
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["machine"]["cpus"] >= 1 and doc["settings"]["device"] == "cpu"
    assert set(doc["stages"]) == set(STAGES)
    for name, stage in doc["stages"].items():
        assert_figure(stage["fraudpipe"], name)
        assert_figure(stage["baseline"], f"{name} baseline")
        assert isinstance(stage["baseline"]["what"], str)
        assert stage["ratio_to_baseline"] > 0
    for name in ("gather", "preprocess", "infer", "queue"):  # work that comes in batches
        assert doc["stages"][name]["fraudpipe"]["batch_latency_ms"] is not None, name
    infer = doc["stages"]["infer"]
    assert_figure(infer["onnx"], "infer onnx")
    reasons = infer["reasons"]
    assert 0 < reasons["alert_rate"] < 1 and 0 < reasons["share_of_infer"] < 1
    assert reasons["per_alert_us"] > 0 and reasons["treeshap_per_alert_us"] > 0
    assert doc["stages"]["queue"]["overhead"] is not None
    assert doc["stages"]["train"]["compile_s"] > 0
    assert "bench: infer" in proc.stderr  # progress on stderr, the document alone on stdout


def test_bench_refuses_what_it_cannot_run() -> None:
    wrong = fraudpipe("bench", "--stage", "nope")
    assert wrong.returncode == 2 and "--stage must be one of" in wrong.stderr
    gpu = fraudpipe("bench", "--stage", "infer", "--device", "gpu")
    assert gpu.returncode == 2 and "--device=gpu" in gpu.stderr
