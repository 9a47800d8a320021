"""`fraudpipe run`: the whole pipeline as local processes over one folder.

Every stage replica is its own OS process running ``fraudpipe worker`` (what a pod runs), so the
queue protocol is exercised exactly as in a cluster. The supervisor restarts a crashed worker as
a Deployment would, shows a live one-screen summary, and stops cleanly: on ``--duration`` it
stops gather first and lets the rest drain; on Ctrl-C it stops everything gracefully.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import polars as pl
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from fraudpipe.config import STAGES, Settings
from fraudpipe.devices import DeviceUnavailable, require_device
from fraudpipe.layout import FEATURES, RAW, RESULTS, TOPICS, Layout
from fraudpipe.queue import Queue
from fraudpipe.registry import ModelRegistry
from fraudpipe.results import ResultsStore
from fraudpipe.worker import read_status

START_ORDER = ("train", "infer", "preprocess", "gather")  # consumers first
DASHBOARD = "dashboard"
# What `run --device=gpu` puts on the GPU: the stages whose kernels run there. train stays on the
# CPU (its GPU learner has not been measured faster at the pipeline's size: docs/gpu.md), gather
# and the dashboard are I/O bound.
GPU_STAGES = ("preprocess", "infer")
STOP_GRACE_S = 20.0
RESTART_BACKOFF_S = 1.0


def child_env() -> dict[str, str]:
    """The environment of a fraudpipe process started by another: JSON logs, and none of this
    shell's FRAUDPIPE_* variables (the configuration travels in flags and files; they are
    folded into it already, and must not override it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDPIPE_")}
    env["FRAUDPIPE_LOG__FORMAT"] = "json"
    return env


@dataclass
class Child:
    stage: str
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    restarts: int = 0


@dataclass
class Supervisor:
    settings: Settings
    replicas: dict[str, int]
    drain_timeout_s: float = 120.0
    console: Console = field(default_factory=Console)
    children: list[Child] = field(default_factory=list)
    # Stages whose dead workers are restarted; stopping empties it, gather first when draining.
    keep_alive: set[str] = field(default_factory=lambda: {*STAGES, DASHBOARD})
    dashboard: bool = True
    gpu_stages: frozenset[str] = frozenset()  # the stages run with --device=gpu

    def __post_init__(self) -> None:
        d = self.settings.dashboard
        self.token = d.token.get_secret_value() if d.token else secrets.token_urlsafe(18)
        self.dashboard_port = _free_port(d.host, d.port)
        self.layout = Layout(self.settings.data_dir)
        self.queue = Queue(self.layout.queue, self.settings.queue)
        self.registry = ModelRegistry(self.layout.models)
        self.run_dir = self.layout.root / "run"
        self.started = time.time()
        self._logs: dict[tuple[str, int], TextIO] = {}

    # -- processes ---------------------------------------------------------------------------

    def _config_file(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.yaml"
        doc = self.settings.model_dump(mode="json")
        doc["data_dir"] = str(Path(self.settings.data_dir).resolve())
        doc["metrics"]["port"] = 0  # many workers on one host: any free port each
        doc["dashboard"]["port"] = self.dashboard_port
        del doc["dashboard"]["token"]  # only the dashboard process gets it, by environment
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def _spawn(self, stage: str, index: int, restarts: int = 0) -> Child:
        env = child_env()
        if stage == DASHBOARD:
            env["FRAUDPIPE_DASHBOARD__TOKEN"] = self.token
        key = (stage, index)
        if key not in self._logs:
            (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
            self._logs[key] = open(self.run_dir / "logs" / f"{stage}-{index}.log", "a")  # noqa: SIM115
        cmd = [
            sys.executable,
            "-m",
            "fraudpipe",
            "worker",
            f"--stage={stage}",
            f"--device={'gpu' if stage in self.gpu_stages else 'cpu'}",
            "--config",
            str(self.config_path),
            f"--supervisor-pid={os.getpid()}",
        ]
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=self._logs[key],
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        return Child(stage, index, proc, time.monotonic(), restarts)

    def start(self) -> None:
        self.lock = RunLock(self.run_dir)
        for topic in TOPICS:  # what writers killed with a previous run left half-written
            self.queue.topic(topic).clean_tmp()
        self.config_path = self._config_file()
        for stage in START_ORDER:
            for i in range(self.replicas.get(stage, 1)):
                self.children.append(self._spawn(stage, i))
        if self.dashboard:
            self.children.append(self._spawn(DASHBOARD, 0))

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.settings.dashboard.host}:{self.dashboard_port}/#token={self.token}"

    def supervise(self) -> None:
        """Restart workers that died (as a Deployment would), with a short backoff."""
        for n, child in enumerate(self.children):
            rc = child.proc.poll()
            if rc is None or child.stage not in self.keep_alive:
                continue
            if time.monotonic() - child.started < RESTART_BACKOFF_S:
                continue
            if rc == 2:  # it refused to start: a restart would refuse again
                log = self.run_dir / "logs" / f"{child.stage}-{child.index}.log"
                raise RunError(f"the {child.stage} worker refused to start: {_refusal(log)}")
            self.children[n] = self._spawn(child.stage, child.index, child.restarts + 1)

    def signal_stage(self, stages: tuple[str, ...], sig: int = signal.SIGTERM) -> None:
        for child in self.children:
            if child.stage in stages and child.proc.poll() is None:
                child.proc.send_signal(sig)

    def wait_exit(self, stages: tuple[str, ...], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.stage not in stages:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    def stop(self, drain: bool) -> None:
        self.keep_alive.discard("gather")
        if drain:
            self.signal_stage(("gather",))
            self.wait_exit(("gather",), STOP_GRACE_S)
            self.wait_drained(self.drain_timeout_s)
        self.keep_alive.clear()
        self.signal_stage((*STAGES, DASHBOARD))
        self.wait_exit((*STAGES, DASHBOARD), STOP_GRACE_S)
        for fh in self._logs.values():
            fh.close()
        self.lock.release()

    # -- state -------------------------------------------------------------------------------

    def _empty(self, *topics: str) -> bool:
        """No batch pending or claimed in any of these topics."""
        return all(
            not (st.pending or st.claimed) for st in (self.queue.topic(t).stats() for t in topics)
        )

    def drained(self) -> bool:
        """Nothing left to process (features only count once a model can score them)."""
        return self._empty(RAW, FEATURES) if self.registry.current() else self._empty(RAW)

    def wait_drained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.drained():
            self.supervise()
            time.sleep(0.25)

    def workers(self) -> list[dict[str, Any]]:
        return read_status(self.layout.status)

    def stream_complete(self) -> bool:
        """A finite stream (gather.days, or a replay) was emitted and everything was scored."""
        gathers = [w for w in self.workers() if w["stage"] == "gather"]
        if not gathers or not all(w.get("finished") for w in gathers):
            return False
        return self._empty(RAW, FEATURES)

    def snapshot(self) -> dict[str, Any]:
        workers = self.workers()
        stages = {}
        for stage in START_ORDER:
            mine = [w for w in workers if w["stage"] == stage]
            stages[stage] = {
                "replicas": len(mine),
                "wanted": self.replicas.get(stage, 1),
                "rows_per_s": sum(w.get("rows_per_s", 0.0) for w in mine),
                "restarts": sum(c.restarts for c in self.children if c.stage == stage),
            }
        infer = [w for w in workers if w["stage"] == "infer" and w.get("latency_ms")]
        gather = [w for w in workers if w["stage"] == "gather"]
        return {
            "uptime_s": time.time() - self.started,
            "model": self.registry.current(),
            "stages": stages,
            "topics": {t: self.queue.topic(t).stats().as_dict() for t in TOPICS},
            "latency_ms": infer[0]["latency_ms"] if infer else None,
            "alerts": sum(w.get("alerts", 0) for w in workers if w["stage"] == "infer"),
            "sim_time": gather[0].get("sim_time") if gather else None,
        }

    # -- display -----------------------------------------------------------------------------

    def render(self, snap: dict[str, Any]) -> Group:
        head = (
            f"[bold]fraudpipe run[/] — {self.layout.root} — up {snap['uptime_s']:.0f}s — "
            f"model [cyan]{snap['model'] or 'none yet (features wait queued)'}[/] — "
            f"simulated time {snap['sim_time'] or '-'}"
        )
        st = Table(box=None, header_style="bold")
        for col in ("stage", "replicas", "rows/s", "restarts"):
            st.add_column(col, justify="left" if col == "stage" else "right")
        for name, s in snap["stages"].items():
            st.add_row(
                name,
                f"{s['replicas']}/{s['wanted']}",
                f"{s['rows_per_s']:,.0f}",
                str(s["restarts"]),
            )
        qt = Table(box=None, header_style="bold")
        for col in ("topic", "pending", "claimed", "dead"):
            qt.add_column(col, justify="left" if col == "topic" else "right")
        for name, t in snap["topics"].items():
            dead = f"[red]{t['dead']}[/]" if t["dead"] else "0"
            qt.add_row(name, str(t["pending"]), str(t["claimed"]), dead)
        lat = snap["latency_ms"]
        tail = (
            f"end-to-end latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms (recent batches)"
            if lat
            else "end-to-end latency: not measured yet (nothing scored)"
        ) + f" — alerts {snap['alerts']:,} — Ctrl-C stops"
        return Group(head, st, qt, tail)

    def final_summary(self) -> dict[str, Any]:
        results = ResultsStore(self.layout.results)
        paths = list(results.sources(self.queue.topic(RESULTS)).values())
        scored = alerts = 0
        p50 = p99 = None
        if paths:
            df = (
                pl.scan_parquet(paths, missing_columns="insert", extra_columns="ignore")
                .select(
                    pl.len().alias("n"),
                    pl.col("is_alert").sum().alias("alerts"),
                    pl.col("latency_ms").quantile(0.5).alias("p50"),
                    pl.col("latency_ms").quantile(0.99).alias("p99"),
                )
                .collect()
            )
            scored, alerts = int(df["n"][0]), int(df["alerts"][0])
            p50, p99 = df["p50"][0], df["p99"][0]
        ckpt = self.layout.gather_checkpoint / "checkpoint.json"
        generated = json.loads(ckpt.read_text()).get("rows", 0) if ckpt.exists() else 0
        return {
            "seconds": round(time.time() - self.started, 1),
            "generated": generated,
            "scored": scored,
            "unscored": max(0, generated - scored),
            "alerts": alerts,
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            "model": self.registry.current(),
            "dead_letters": {t: self.queue.topic(t).stats().dead for t in TOPICS},
            "restarts": sum(c.restarts for c in self.children),
        }


class RunError(Exception):
    """The run cannot go on (exit 2); the message says why, for the terminal."""


def _refusal(log: Path) -> str:
    """The reason a worker gave for exiting 2: its last `error:` line (cut short, with the
    log's path for the rest)."""
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").splitlines()
        said = [line for line in lines if line.startswith("error: ")]
        if said:
            why = said[-1].removeprefix("error: ")
            if len(why) > 2000:
                why = f"{why[:2000]}... ({len(why):,} characters)"
            return f"{why} (log: {log})"
    return f"see {log}"


class RunLock:
    """One `fraudpipe run` per data dir: an exclusive flock on run/supervisor.lock, released
    by the kernel when its holder exits, however it exits (so a killed run leaves none)."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "supervisor.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise RunError(
                f"another fraudpipe run (pid {holder}) is running on {run_dir.parent}: "
                "stop it first, or use another --data-dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, however it dies (Linux's
    PR_SET_PDEATHSIG; elsewhere the worker notices its parent changed, --supervisor-pid).
    prctl is looked up in the parent: between fork and exec nothing may take a lock."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _free_port(host: str, wanted: int) -> int:
    """`wanted` if it can be bound on host now, else any free port (two runs on one machine)."""
    for port in (wanted, 0):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise SystemExit(f"cannot bind the dashboard to {host}: no free port")


def run_pipeline(
    settings: Settings,
    replicas: dict[str, int],
    duration: float | None,
    drain_timeout_s: float,
    console: Console,
    dashboard: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """device gpu: the stages with a kernel on the GPU (GPU_STAGES) run there, once this
    machine is shown able to run them (RunError naming what is missing, otherwise)."""
    gpu = frozenset(GPU_STAGES if device == "gpu" else ())
    for stage in sorted(gpu):
        try:
            require_device(stage, "gpu")
        except DeviceUnavailable as exc:
            raise RunError(f"fraudpipe run --device=gpu: {exc}") from None
    sup = Supervisor(
        settings, replicas, drain_timeout_s, console, dashboard=dashboard, gpu_stages=gpu
    )
    interrupted = False

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    sup.start()  # RunError: another run holds the data dir
    console.print(
        f"fraudpipe: {sum(replicas.get(s, 1) for s in STAGES)} workers over "
        f"{sup.layout.root} (logs in {sup.run_dir / 'logs'})"
    )
    if dashboard:
        console.print(f"fraudpipe: dashboard {sup.dashboard_url}", soft_wrap=True)
    deadline = None if duration is None else time.monotonic() + duration
    live = (
        Live(sup.render(sup.snapshot()), console=console, refresh_per_second=2, transient=False)
        if console.is_terminal
        else None
    )
    last_line = 0.0
    try:
        if live:
            live.start()
        while deadline is None or time.monotonic() < deadline:
            sup.supervise()
            snap = sup.snapshot()
            if live:
                live.update(sup.render(snap))
            elif time.monotonic() - last_line >= 5:
                last_line = time.monotonic()
                print(json.dumps({"event": "run.progress", **snap}, default=str), flush=True)
            if sup.stream_complete():
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
    except RunError:
        interrupted = True  # stop now: nothing to drain towards
        raise
    finally:
        if live:
            live.stop()
        console.print("fraudpipe: stopping" + ("" if interrupted else " (draining)") + " ...")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sup.stop(drain=not interrupted)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    summary = sup.final_summary()
    summary["interrupted"] = interrupted
    return summary


def shortfall(summary: dict[str, Any]) -> str | None:
    """Why a finished run did not score everything it generated, or None when it did."""
    if not summary["unscored"]:
        return None
    dead = {t: n for t, n in summary["dead_letters"].items() if n}
    where = "; ".join(
        f"{n} dead letter(s) in {t} (fraudpipe queue ls {t})" for t, n in dead.items()
    )
    return (
        f"{summary['unscored']:,} of {summary['generated']:,} generated transactions were not "
        f"scored" + (f": {where}" if where else ": still queued (the drain timed out)")
    )
