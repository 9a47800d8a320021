"""``fraudpipe bench --stage e2e``: the whole pipeline, as ``fraudpipe run`` runs it, under load.

A warm-up run makes the history and the first model (``--days`` of the stream at a high rate,
ended by itself once all is scored). Each phase then runs ``fraudpipe run`` at one offered rate
on a copy of that warm data dir, with ``train=0`` (the model stays as warmed: a fit would take a
core for seconds in a 12 s phase; its cost is the train figure), and is stopped at once after
it. What a phase reports comes from the files, not from the pipeline's counters:

- end-to-end latency (``scored_at - created_at`` of each result row) of the rows created in the
  phase's window (after ``SETTLE_S`` of start-up), p50 and p99;
- scored rows/s: result rows scored in the window over its length;
- the backlogs (pending and claimed batches of the raw and features topics), sampled;
- CPU seconds of the workers (``/proc``) over the window, per million rows scored;
- flat: at least 95 % of the offered rows created in the window were scored before the stop
  (gather held back by backpressure, or rows left queued, fall short), no backlog grew
  between the first half of the window and the second by more than two batches, and none
  stood above four batches in the second half (a backlog left from start-up that the
  pipeline never works off is a rate it does not keep up with).

The latency phases are 10k and 50k tx/s; a short search (doubling, then halving the interval
geometrically) looks for the highest flat rate. Each phase runs once (the bench's 5 minutes).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fraudpipe.layout import FEATURES, RAW, RESULTS, Layout

LATENCY_RATES = (10_000, 50_000)
SEARCH_STEPS = 3
SEARCH_CAP = 1_000_000  # no 2-core machine comes near; the search doubles up to it at most
WARM_RATE = 200_000
WARM_DAYS = 40  # the first model's labeled days, and most of the features' lookback
SETTLE_S = 4.0  # start-up left out of each phase's window
TAIL_S = 3.0  # after the window: time for its last rows to be scored before the stop
FLAT_SHARE = 0.95
GROWTH_BATCHES = 2
SHORT_BATCHES = 4


BACKLOGS = {RAW: "raw", FEATURES: "features"}  # the topics sampled, by their name here


class BenchError(RuntimeError):
    """The pipeline could not be run for the bench (the message says where its log is)."""


def _run_cmd(data: Path, rate: float, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fraudpipe", "run", "--data-dir", str(data),
            "--rate", str(rate), "--no-dashboard", *extra]  # fmt: skip


def warm_up(work: Path) -> Path:
    """A data dir with WARM_DAYS of history scored and a current model."""
    from fraudpipe.registry import ModelRegistry
    from fraudpipe.runner import child_env

    data, log = work / "warm", work / "warm.log"
    with open(log, "wb") as out:
        done = subprocess.run(
            _run_cmd(data, WARM_RATE, "--days", str(WARM_DAYS), "--drain-timeout", "300"),
            env=child_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            timeout=600,
        )  # fmt: skip
    if done.returncode != 0 or ModelRegistry(data / "models").current() is None:
        raise BenchError(f"the warm-up run failed (exit {done.returncode}): see {log}")
    return data


def _cpu_s(pid: int) -> float | None:
    """utime + stime of a live process, in seconds (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class _Phase:
    """One run at one offered rate: its samples while it runs."""

    rate: float
    data: Path
    pids: list[int] = field(default_factory=list)
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (t, backlogs)
    cpu_at: dict[str, dict[int, float]] = field(default_factory=dict)
    rss_mb: float = 0.0

    def workers(self) -> list[int]:
        from fraudpipe.worker import read_status

        return [int(w["pid"]) for w in read_status(self.data / "status")]

    def sample(self, queue: Any) -> None:
        """The pending and claimed batches of each topic in BACKLOGS, now."""
        backlog = {}
        for topic, name in BACKLOGS.items():
            st = queue.topic(topic).stats()
            backlog[name] = st.pending + st.claimed
        self.samples.append((time.time(), backlog))

    def cpu(self, mark: str) -> None:
        self.cpu_at[mark] = {p: c for p in self.pids if (c := _cpu_s(p)) is not None}


def _published(queue: Any) -> int:
    st = queue.topic(RAW).stats()
    return st.pending + st.claimed + st.done + st.dead


def run_phase(
    warm: Path, work: Path, rate: float, seconds: float, device: str = "cpu"
) -> dict[str, Any]:
    """fraudpipe run --device at `rate` for SETTLE_S + `seconds` + TAIL_S, then its figures."""
    from fraudpipe.config import load_settings
    from fraudpipe.queue import Queue
    from fraudpipe.runner import child_env

    data = work / f"rate-{int(rate)}"
    shutil.copytree(warm, data, symlinks=True)
    shutil.rmtree(data / "status", ignore_errors=True)  # the warm-up's workers are gone
    settings = load_settings(None, {"data_dir": data})
    queue = Queue(Layout(data).queue, settings.queue)
    phase = _Phase(rate, data)
    before = _published(queue)
    log = work / f"rate-{int(rate)}.log"
    spawned = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _run_cmd(data, rate, "--replicas", "train=0", "--device", device),
            env=child_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # start-up under load: a generous bound
        while _published(queue) == before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the run at {rate:,.0f} tx/s published nothing: see {log}")
            time.sleep(0.05)
        t0 = time.time()
        window = (t0 + SETTLE_S, t0 + SETTLE_S + seconds)
        marks = {"start": window[0], "end": window[1]}
        while time.time() < window[1] + TAIL_S:
            phase.sample(queue)
            for mark, at in list(marks.items()):
                if time.time() >= at:
                    if mark == "start":  # every worker has written its status by now
                        phase.pids = [proc.pid, *phase.workers()]
                    phase.cpu(mark)
                    del marks[mark]
            time.sleep(0.25)
        phase.rss_mb = sum(_peak_rss_mb(p) for p in phase.pids)
    finally:
        proc.send_signal(signal.SIGINT)  # stops at once: nothing to drain towards
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    doc = _figures(phase, queue, spawned, window, seconds)
    shutil.rmtree(data, ignore_errors=True)
    return doc


def _figures(
    phase: _Phase, queue: Any, spawned: float, window: tuple[float, float], seconds: float
) -> dict[str, Any]:
    from fraudpipe.results import ResultsStore

    paths = list(ResultsStore(Layout(phase.data).results).sources(queue.topic(RESULTS)).values())
    rows = (
        pl.scan_parquet(paths, missing_columns="insert", extra_columns="ignore")
        .select("created_at", "scored_at", "latency_ms")
        .filter(pl.col("created_at") >= spawned)
        .collect()
        if paths
        else pl.DataFrame(
            schema=dict.fromkeys(("created_at", "scored_at", "latency_ms"), pl.Float64)
        )
    )
    a, b = window
    created = rows.filter(pl.col("created_at").is_between(a, b, closed="left"))
    scored = rows.filter(pl.col("scored_at").is_between(a, b, closed="left")).height
    latency = None
    if created.height:
        p50, p99 = np.percentile(created["latency_ms"].to_numpy(), [50, 99])
        latency = {"p50": round(float(p50), 1), "p99": round(float(p99), 1)}
    start, end = phase.cpu_at.get("start", {}), phase.cpu_at.get("end", {})
    cpu = sum(end[p] - start[p] for p in end if p in start)
    inside = [s for s in phase.samples if a <= s[0] < b]
    half = len(inside) // 2
    most: dict[str, int] = {}
    growth: dict[str, int | None] = {}
    steady = half > 0
    for name in BACKLOGS.values():
        most[name] = max((s[1][name] for s in inside), default=0)
        growth[name] = None
        if half:
            standing = max(s[1][name] for s in inside[half:])
            growth[name] = grew = standing - max(s[1][name] for s in inside[:half])
            steady = steady and grew <= GROWTH_BATCHES and standing <= SHORT_BATCHES
    share = created.height / (phase.rate * seconds)
    return {
        "offered_per_s": phase.rate,
        "created_and_scored_share": round(share, 4),
        "scored_per_s": round(scored / seconds, 1),
        "latency_ms": latency,
        "backlog_batches": most,
        "backlog_growth_batches": growth,
        "cpu_s_per_million_rows": round(cpu / scored * 1e6, 3) if scored else None,
        "peak_rss_mb": round(phase.rss_mb, 1),
        "flat": share >= FLAT_SHARE and steady,
    }


def next_rate(tried: dict[float, dict[str, Any]]) -> float | None:
    """The next rate to try: double the highest flat one until one is not, then the geometric
    middle of the interval, rounded to 5k (None: nothing left to learn)."""
    flat = [r for r, p in tried.items() if p["flat"]]
    lo = max(flat, default=None)
    above = [r for r in tried if lo is None or r > lo]
    hi = min(above, default=None)
    if lo is None:
        return None  # not flat at the lowest latency rate: the search has no floor
    if hi is None:
        nxt = lo * 2
        return nxt if nxt <= SEARCH_CAP else None
    nxt = round(math.sqrt(lo * hi) / 5000) * 5000
    return nxt if lo < nxt < hi and nxt not in tried else None


def bench_e2e(
    seconds: float, search_steps: int | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """The latency phases, then `search_steps` of the search (None: SEARCH_STEPS); the highest
    flat phase as the figure. device: as `fraudpipe run --device` (the warm-up is on the CPU)."""
    print("bench: e2e warm-up (history and a first model)...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="fraudpipe-bench-e2e-") as tmp:
        work = Path(tmp)
        warm = warm_up(work)
        tried: dict[float, dict[str, Any]] = {}

        def phase(rate: float) -> None:
            tried[rate] = run_phase(warm, work, rate, seconds, device)
            p = tried[rate]
            print(
                f"bench: e2e {rate:,.0f} tx/s: scored {p['scored_per_s']:,.0f}/s, latency "
                f"{p['latency_ms']}, {'flat' if p['flat'] else 'not flat'}",
                file=sys.stderr, flush=True,
            )  # fmt: skip

        for rate in LATENCY_RATES:
            phase(rate)
        for _ in range(SEARCH_STEPS if search_steps is None else search_steps):
            nxt = next_rate(tried)
            if nxt is None:
                break
            phase(nxt)
    phases = [tried[r] for r in sorted(tried)]
    best = max((p for p in phases if p["flat"]), key=lambda p: p["offered_per_s"], default=None)
    figure = None
    if best is not None:
        figure = {
            "rows": int(best["scored_per_s"] * seconds),
            "runs": 1,
            "rows_per_s": best["scored_per_s"],
            "cpu_s_per_million_rows": best["cpu_s_per_million_rows"],
            "wall_s": seconds,
            "batch_latency_ms": best["latency_ms"],  # per row, end to end
            "peak_rss_mb": best["peak_rss_mb"],
        }
    return {
        "fraudpipe": figure,
        "highest_flat_rate": best["offered_per_s"] if best else None,
        "latency_at": {
            str(r): {"latency_ms": tried[r]["latency_ms"], "flat": tried[r]["flat"]}
            for r in LATENCY_RATES
        },
        "phases": phases,
        "phase_s": seconds,
        "replicas": "one worker per stage, train=0 (the warm-up's model)",
    }


def ceiling(stages: dict[str, Any], cpus: int) -> dict[str, Any] | None:
    """The rate the stages' own CPU cost allows on `cpus` cores, as the e2e's baseline: every
    row is simulated, preprocessed, scored (reasons on its share of alerts) and goes through
    the queue three times (raw, features, results). None without those figures in the run."""
    need = ("gather", "preprocess", "infer", "queue")
    if not all(stages.get(s, {}).get("fraudpipe") for s in need):
        return None
    infer = stages["infer"]
    reasons = infer["reasons"]
    cost = {
        "gather": stages["gather"]["fraudpipe"]["cpu_s_per_million_rows"],
        "preprocess": stages["preprocess"]["fraudpipe"]["cpu_s_per_million_rows"],
        "infer": infer["fraudpipe"]["cpu_s_per_million_rows"]
        / max(1e-9, 1 - (reasons.get("share_of_infer") or 0)),
        "queue (3 hops)": 3 * stages["queue"]["fraudpipe"]["cpu_s_per_million_rows"],
    }
    per_million = sum(cost.values())
    return {
        "what": f"the rate the stages' own CPU cost allows on {cpus} cores "
        "(cores x 1e6 / the sum of their CPU s per million rows)",
        "rows_per_s": round(cpus * 1e6 / per_million, 1),
        "cpu_s_per_million_rows": round(per_million, 3),
        "cost_by_stage": {k: round(v, 3) for k, v in cost.items()},
    }


def plot(doc: dict[str, Any], path: Path) -> None:
    """Scored rate and latency against offered rate, from the e2e phases (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError("--plot needs matplotlib: pip install 'fraudpipe[bench]'") from exc
    e2e = doc["stages"]["e2e"]
    phases = e2e["phases"]
    offered = [p["offered_per_s"] / 1000 for p in phases]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    top = max(offered) * 1.1
    left.plot([0, top], [0, top], ls=":", c="grey", label="offered")
    for flat, marker in ((True, "o"), (False, "x")):
        pts = [(o, p["scored_per_s"] / 1000) for o, p in zip(offered, phases, strict=True)
               if p["flat"] is flat]  # fmt: skip
        if pts:
            left.scatter(*zip(*pts, strict=True), marker=marker,
                         label="flat backlogs" if flat else "not flat")  # fmt: skip
    left.set(xlabel="offered (k tx/s)", ylabel="scored (k tx/s)", title="throughput")
    left.legend()
    with_latency = [(o, p) for o, p in zip(offered, phases, strict=True) if p["latency_ms"]]
    for q in ("p50", "p99"):
        right.plot([o for o, _ in with_latency], [p["latency_ms"][q] / 1000 for _, p in
                   with_latency], marker="o", label=q)  # fmt: skip
    right.axhline(1.0, ls=":", c="grey")
    right.set(xlabel="offered (k tx/s)", ylabel="end-to-end latency (s)", yscale="log",
              title="latency (rows created in each window)")  # fmt: skip
    right.legend()
    m = doc["machine"]
    fig.suptitle(f"fraudpipe run, {m['cpus']} CPUs ({m['cpu_model']}), {doc['at'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
