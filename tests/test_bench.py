"""`fraudpipe bench --json`: the document's shape, never its speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fraudpipe.bench import SCHEMA_VERSION, STAGES
from fraudpipe.bench_e2e import LATENCY_RATES, next_rate
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


def test_bench_json_has_every_figure_beside_its_baseline(tmp_path: Path) -> None:
    plot = tmp_path / "e2e.png"
    # e2e: the two latency phases and one search step, of 3 s each (the shape, not the speed)
    proc = fraudpipe("bench", "--rows", "20000", "--runs", "1", "--json", "--e2e-seconds", "3",
                     "--e2e-search", "1", "--plot", str(plot), timeout=900, check=True)  # fmt: skip
    doc = json.loads(proc.stdout)
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["machine"]["cpus"] >= 1 and doc["settings"]["device"] == "cpu"
    assert set(doc["stages"]) == set(STAGES)
    e2e = doc["stages"].pop("e2e")
    assert_e2e(e2e)
    assert plot.read_bytes().startswith(b"\x89PNG")
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


def assert_e2e(e2e: dict[str, Any]) -> None:
    """Every phase measured from the files; the best flat one as the figure, beside the
    ceiling the other stages' CPU cost allows."""
    phases = e2e["phases"]
    offered = [p["offered_per_s"] for p in phases]
    assert offered == sorted(offered) and set(LATENCY_RATES) <= set(offered)
    for p in phases:
        assert p["scored_per_s"] >= 0 and p["created_and_scored_share"] >= 0
        assert isinstance(p["flat"], bool) and set(p["backlog_batches"]) == {"raw", "features"}
        assert p["latency_ms"] is None or 0 < p["latency_ms"]["p50"] <= p["latency_ms"]["p99"]
    assert set(e2e["latency_at"]) == {str(r) for r in LATENCY_RATES}
    flat = [p["offered_per_s"] for p in phases if p["flat"]]
    assert e2e["highest_flat_rate"] == max(flat, default=None)
    if flat:
        assert_figure(e2e["fraudpipe"], "e2e")
        assert e2e["ratio_to_baseline"] > 0
    base = e2e["baseline"]
    assert base["rows_per_s"] > 0 and isinstance(base["what"], str)
    assert set(base["cost_by_stage"]) == {"gather", "preprocess", "infer", "queue (3 hops)"}


def test_the_e2e_search_doubles_then_narrows() -> None:
    def tried(*flat: tuple[int, bool]) -> dict[float, dict[str, Any]]:
        return {float(r): {"flat": f} for r, f in flat}

    assert next_rate(tried((10_000, True), (50_000, True))) == 100_000
    assert next_rate(tried((10_000, True), (50_000, True), (100_000, False))) == 70_000
    assert next_rate(tried((10_000, True), (50_000, False))) == 20_000
    assert next_rate(tried((10_000, False), (50_000, False))) is None  # no floor to search from
    assert next_rate(tried((10_000, True), (15_000, False))) is None  # nothing between, rounded


def test_bench_refuses_what_it_cannot_run() -> None:
    wrong = fraudpipe("bench", "--stage", "nope")
    assert wrong.returncode == 2 and "--stage must be one of" in wrong.stderr
    gpu = fraudpipe("bench", "--stage", "infer", "--device", "gpu")
    assert gpu.returncode == 2 and "--device=gpu" in gpu.stderr
    lone = fraudpipe("bench", "--stage", "queue", "--plot", "x.png")
    assert lone.returncode == 2 and "--plot draws the e2e phases" in lone.stderr
