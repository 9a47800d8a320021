"""The fault soak: a replay with a known id set, faults at random, then an independent audit.

    python -m tests.soak [--seconds 60] [--mounts 1|2] [--seed 1] [--workdir DIR] [--keep]

(``make soak``; ``make soak SOAK_S=1800`` for a long one). It writes a replay file, starts the
pipeline over a volume of its own and, for ``--seconds``, injects at random:

- SIGKILL and SIGTERM of any worker, claim holders first (caught mid-publish, mid-ack);
- SIGSTOP pauses past the lease, and one long stall of every preprocess worker (gather runs
  on meanwhile, past what the old pruning kept);
- SIGKILL of the ``fraudpipe run`` supervisor, which is then run again on the same data dir
  (one mount), its workers required to die with it;
- a full volume (the volume is a tmpfs of its own, filled to the last byte for a while);
- a corrupt model promotion (``models/current`` pointed at a version whose ONNX is cut short),
  put right after a while;
- poison: batches nobody can process, dropped into the topics.

With ``--mounts 2`` the volume is exported over sshfs twice (tests/netfs.py) and the workers
run as pods would, half of them on each mount; the harness restarts those that die.

Then it stops the faults, lets the stream finish and audits it (tests/audit.py): every id of
the replay file in the results exactly once with the offline features and scores, dead letters
exactly the poison it dropped, no claim and no tmp debris left, no worker outliving its
supervisor. It prints one JSON document and exits 1 when anything is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from fraudpipe.config import load_settings
from fraudpipe.layout import FEATURES, RAW, RESULTS, TOPICS, Layout
from fraudpipe.queue import Queue, make_id
from fraudpipe.registry import ModelRegistry
from fraudpipe.worker import read_status
from tests import netfs
from tests.audit import audit, disk_usage, offline_features
from tests.pipeline import FAST_TRAINING, alive

WORLD = {"n_customers": 2000, "n_terminals": 4000}  # about 4,000 transactions a simulated day
CYCLE_S = 60.0
# Where in each cycle each rarer fault strikes (a full volume lasts up to 20 s and a corrupt
# model up to 25 s, each until it has bit; a stall 20 s, an outage of node a 30 s).
FAULT_AT = {"disk": 0.15, "model": 0.25, "stall": 0.4, "supervisor": 0.75, "outage": 0.75}
TX_PER_DAY = 4000


@dataclass
class Plan:
    seconds: float = 60.0
    mounts: int = 1
    seed: int = 1
    rate: float = 4000.0  # one simulated day a second, in one batch a second
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="soak-")))

    @property
    def lease_s(self) -> float:
        # over sshfs, attributes may be 2 s stale and times have 1 s resolution
        return 4.0 if self.mounts == 1 else 10.0

    @property
    def volume_mb(self) -> int:
        # a simulated day takes about 1.3 MB here (log, feature store, results): twice that
        return max(768, int(self.days * 2.6) + 300)

    @property
    def days(self) -> int:
        # the stream outlasts the faults, then ends on its own
        return int(self.seconds * self.rate / TX_PER_DAY * 1.1) + 30

    @property
    def drain_s(self) -> float:
        """How long the stream may take to end once the faults stop: the whole of it again."""
        return max(600.0, 2 * self.days * TX_PER_DAY / self.rate)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDPIPE_")}
    env["FRAUDPIPE_LOG__FORMAT"] = "json"
    return env


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fraudpipe", *args], env=_env(), check=True,
                   capture_output=True, timeout=600)  # fmt: skip


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# -- fleets: the pipeline's processes, as `fraudpipe run` or as pods on two nodes ------------


class RunFleet:
    """`fraudpipe run` over one data dir: it restarts its own workers."""

    def __init__(self, plan: Plan, data: Path, config: Path, logs: Path) -> None:
        self.plan, self.data, self.config, self.logs = plan, data, config, logs
        self.worker_logs = data / "run" / "logs"  # fraudpipe run keeps them there
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.orphans: list[str] = []
        self.seen: set[int] = set()

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"run-{self.starts}.log", "wb")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fraudpipe", "run", "--data-dir", str(self.data),
             "--config", str(self.config), "--no-dashboard", "--drain-timeout", "600",
             "--replicas", "preprocess=2", "--replicas", "infer=2"],
            env=_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()

    def workers(self) -> list[dict[str, Any]]:
        live = [w for w in read_status(self.data / "status") if alive(int(w["pid"]))]
        self.seen |= {int(w["pid"]) for w in live}
        return live

    def supervise(self) -> None:
        """A supervisor that ended too early (it must not, but say so) is started again."""
        if self.proc is not None and self.proc.poll() is not None and not self.done():
            self.start()

    def kill_supervisor(self) -> bool:
        """SIGKILL `fraudpipe run`; its workers must die with it. Then run it again."""
        assert self.proc is not None
        children = [int(w["pid"]) for w in self.workers()]
        self.proc.kill()
        self.proc.wait()
        deadline = time.monotonic() + 30
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in children if alive(p)]
        if left:  # a broken promise: record it, then clear the way for the next run
            self.orphans += [f"pid {p} outlived its supervisor" for p in left]
            for p in left:
                _signal(p, signal.SIGKILL)
        self.start()
        return True

    def batches_by_node(self) -> dict[str, int]:
        return {}  # one node

    def done(self) -> bool:
        """The run ends by itself once the finite stream is complete and scored."""
        return (
            self.proc is not None
            and self.proc.poll() is not None
            and self.proc.returncode in (0, 1)
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class _Pod:
    stage: str
    node: int
    proc: subprocess.Popen[bytes] | None = None
    died_at: float | None = None


class PodFleet:
    """Workers as a cluster runs them: each a `fraudpipe worker` on one node's mount, started
    again (after a second, as a kubelet would) when it dies."""

    # gather on node b: while node a is out the stream goes on, and node b must carry it
    LAYOUT = (("gather", 1), ("train", 0), ("preprocess", 0), ("preprocess", 1),
              ("infer", 0), ("infer", 1))  # fmt: skip

    def __init__(self, plan: Plan, nodes: list[Path], truth: Path, config: Path, logs: Path):
        self.plan, self.nodes, self.truth, self.config, self.logs = plan, nodes, truth, config, logs
        self.worker_logs = logs
        self.pods = [_Pod(stage, node) for stage, node in self.LAYOUT]
        self.orphans: list[str] = []
        self.seen: set[int] = set()
        self.stopping = False
        self._batches: dict[tuple[str, str], int] = {}

    def _spawn(self, pod: _Pod) -> None:
        log = open(self.logs / f"{pod.stage}-{pod.node}.log", "ab")  # noqa: SIM115
        pod.proc = subprocess.Popen(
            [sys.executable, "-m", "fraudpipe", "worker", f"--stage={pod.stage}",
             "--data-dir", str(self.nodes[pod.node] / "data"), "--config", str(self.config),
             "--port", "0"],
            env=_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        self.seen.add(pod.proc.pid)
        pod.died_at = None

    def start(self) -> None:
        for pod in self.pods:
            self._spawn(pod)

    def workers(self) -> list[dict[str, Any]]:
        mine = {p.proc.pid: p for p in self.pods if p.proc is not None and p.proc.poll() is None}
        live = [w for w in read_status(self.truth / "status") if int(w["pid"]) in mine]
        for w in live:  # each worker's own count of batches, at its highest
            pod = mine[int(w["pid"])]
            key = (f"{pod.stage} on node {'ab'[pod.node]}", w["worker"])
            self._batches[key] = max(self._batches.get(key, 0), int(w.get("batches", 0)))
        return live

    def batches_by_node(self) -> dict[str, int]:
        """Batches handled by the workers of each stage on each node (as last seen)."""
        out: Counter[str] = Counter()
        for (where, _), n in self._batches.items():
            out[where] += n
        return dict(sorted(out.items()))

    def supervise(self) -> None:
        for pod in self.pods:
            if self.stopping or pod.proc is None or pod.proc.poll() is None:
                continue
            if pod.died_at is None:
                pod.died_at = time.monotonic()
            elif time.monotonic() - pod.died_at >= 1.0:
                self._spawn(pod)

    def done(self) -> bool:
        gathers = [w for w in read_status(self.truth / "status") if w["stage"] == "gather"]
        if not gathers or not gathers[0].get("finished"):
            return False
        settings = load_settings(self.config, {"data_dir": self.truth})
        q = Queue(Layout(self.truth).queue, settings.queue)
        return all(
            not (st.pending or st.claimed)
            for st in (q.topic(t).stats() for t in TOPICS if t != RESULTS)
        )

    def stop(self) -> None:
        self.stopping = True
        for pod in self.pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        for pod in self.pods:
            if pod.proc is not None:
                try:
                    pod.proc.wait(90)
                except subprocess.TimeoutExpired:
                    pod.proc.kill()
                    pod.proc.wait()


Fleet = RunFleet | PodFleet


# -- the faults --------------------------------------------------------------------------------


def _top_up(filler: Path) -> None:
    """Grow filler until its volume has not a byte left."""
    with open(filler, "ab", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)


HELD_UP, REFUSED = "stage.held_up", "model.refused"  # what shows a fault has bitten


@dataclass
class _Hold:
    """A fault in force: it lasts until `least`, then on until the workers' logs show it bit
    (`event` logged more than the `before` times it had been), and ends at `most` regardless."""

    event: str
    least: float
    most: float
    before: int

    def over(self, now: float, bit: Counter[str]) -> bool:
        return now >= self.most or (now >= self.least and bit[self.event] > self.before)


class _Tail:
    """The workers' log lines since the last look (every *.log under one folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.at: dict[Path, int] = {}

    def new(self) -> Counter[str]:
        """How many new whole lines hold each event that shows a fault bit."""
        found: Counter[str] = Counter()
        for path in self.folder.glob("*.log"):
            with contextlib.suppress(OSError), open(path, "rb") as fh:
                fh.seek(self.at.get(path, 0))
                new = fh.read()
                whole = new.rfind(b"\n") + 1
                self.at[path] = self.at.get(path, 0) + whole
                for event in (HELD_UP, REFUSED):
                    found[event] += new[:whole].count(f'"{event}"'.encode())
        return found


class Chaos:
    def __init__(self, plan: Plan, fleet: Fleet, truth: Path, volume: Path | None) -> None:
        self.plan, self.fleet, self.truth, self.volume = plan, fleet, truth, volume
        self.rng = random.Random(plan.seed)
        self.counts: Counter[str] = Counter()
        self.paused: dict[int, float] = {}  # pid -> when to resume
        self.tail = _Tail(fleet.worker_logs)
        self.bit: Counter[str] = Counter()
        self.filler: tuple[Path, _Hold] | None = None
        self.corrupt: tuple[str, str, _Hold] | None = None  # (bad version, good version, hold)
        self.held_trains: list[int] = []  # stopped while a corrupt model stands
        self.poison: dict[str, set[str]] = {}
        self.outage_until = 0.0
        self.last: dict[str, float] = {}
        self.fired: dict[str, int] = {}  # fault kind -> the last cycle it fired in
        self.log: list[str] = []
        self.started = time.monotonic()

    def _turn(self, kind: str, cycle: float, offset: float) -> bool:
        """Whether fault `kind` is due: once per cycle, from its offset in the cycle on."""
        if offset < FAULT_AT[kind] * CYCLE_S or self.fired.get(kind, -1) >= cycle:
            return False
        self.fired[kind] = int(cycle)
        return True

    def _due(self, kind: str, every_s: float) -> bool:
        now = time.monotonic()
        if now - self.last.get(kind, self.started) < every_s:
            return False
        self.last[kind] = now
        return True

    def _holders(self) -> set[str]:
        return {
            p.name.split("~")[2].removesuffix(".parquet")
            for t in TOPICS
            for p in (self.truth / "queue" / t / "claimed").glob("*~*~*")
        }

    def holding(self) -> bool:
        """Whether a fault that lasts until it bites (a full volume, a corrupt model) is on."""
        return self.filler is not None or self.corrupt is not None

    def tend(self) -> float:
        """The end of the faults whose time is up; the time it looked."""
        now = time.monotonic()
        for pid, until in list(self.paused.items()):
            if now >= until:
                _signal(pid, signal.SIGCONT)
                del self.paused[pid]
        self.bit += self.tail.new()
        if self.filler is not None:
            path, hold = self.filler
            if hold.over(now, self.bit):
                path.unlink(missing_ok=True)
                self.filler = None
            else:
                _top_up(path)  # what retention freed meanwhile is taken again
        if self.corrupt is not None and self.corrupt[2].over(now, self.bit):
            self._heal_model()
        return now

    def step(self) -> None:
        """One fault now and then, and the end of those whose time is up."""
        now = self.tend()
        elapsed = now - self.started
        if not self.poison and elapsed > 5:
            self._inject_poison()
        # The rarer faults, once in every CYCLE_S seconds, each at its offset in the cycle
        # (so that they do not overlap, and a short soak sees each of them once).
        cycle, offset = divmod(elapsed, CYCLE_S)
        # (the volume fills only once the poison is in: it is dropped in by hand, not retried)
        if self.poison and self._turn("disk", cycle, offset) and self.volume is not None:
            self._fill_volume()
        if self._turn("stall", cycle, offset):
            self._stall_preprocess()
        if self._turn("supervisor", cycle, offset) and isinstance(self.fleet, RunFleet):
            # a stopped worker cannot die with its parent: let them go first
            for pid in list(self.paused):
                _signal(pid, signal.SIGCONT)
                del self.paused[pid]
            self.counts["supervisor SIGKILL"] += self.fleet.kill_supervisor()
            return
        if self._turn("outage", cycle, offset) and isinstance(self.fleet, PodFleet):
            self._node_outage()
        if self._turn("model", cycle, offset) and not self._corrupt_model():
            self.fired["model"] -= 1  # no model yet: again at the next step
        live = [w for w in self.fleet.workers() if int(w["pid"]) not in self.paused]
        if not live or now < self.outage_until:
            # While node a is out, node b's few workers carry everything: faults aimed at them
            # alone (three times as often each) would keep them restarting, not working.
            return
        first = [w for w in live if f"SIGKILL {w['stage']}" not in self.counts]
        if first and elapsed > 5:  # every stage SIGKILLed once early on, whatever chance does
            w = first[0]
            self.counts[f"SIGKILL {w['stage']}"] += _signal(int(w["pid"]), signal.SIGKILL)
            return
        busy = [w for w in live if w["worker"] in self._holders()]
        victim = self.rng.choice(busy if busy and self.rng.random() < 0.6 else live)
        pid, stage = int(victim["pid"]), victim["stage"]
        what = self.rng.choices(["kill", "term", "pause"], weights=[5, 2, 2])[0]
        if what == "kill" and _signal(pid, signal.SIGKILL):
            self.counts[f"SIGKILL {stage}" + (" mid-batch" if victim in busy else "")] += 1
        elif what == "term" and _signal(pid, signal.SIGTERM):
            self.counts[f"SIGTERM {stage}"] += 1
        elif what == "pause" and _signal(pid, signal.SIGSTOP):
            self.paused[pid] = now + self.rng.uniform(1.5, 3.0) * self.plan.lease_s
            self.counts[f"SIGSTOP {stage} past its lease"] += 1

    def _stall_preprocess(self) -> None:
        """Every preprocess worker stopped for a long while: gather streams on."""
        until = time.monotonic() + 20.0
        for w in self.fleet.workers():
            if w["stage"] == "preprocess" and _signal(int(w["pid"]), signal.SIGSTOP):
                self.paused[int(w["pid"])] = until
        self.counts["stall of every preprocess"] += 1

    def _node_outage(self) -> None:
        """Node a stops (every worker on it, for longer than node b's listings lag): node b
        must take its batches over, from listings that show them late."""
        assert isinstance(self.fleet, PodFleet)
        until = self.outage_until = time.monotonic() + 30.0
        for pod in self.fleet.pods:  # node b's workers all up, to take node a's work over
            if pod.node == 1 and pod.proc is not None and self.paused.pop(pod.proc.pid, None):
                _signal(pod.proc.pid, signal.SIGCONT)
        for pod in self.fleet.pods:
            if pod.node == 0 and pod.proc is not None and _signal(pod.proc.pid, signal.SIGSTOP):
                self.paused[pod.proc.pid] = until
        self.counts["outage of node a (all its workers stopped)"] += 1

    def _fill_volume(self) -> None:
        assert self.volume is not None
        filler = self.volume / "filler"
        _top_up(filler)
        # full for 6 to 12 s, and on until a worker has been held up by it (a gather stopped
        # and nothing else to write would leave it unfelt), 20 s at most (before the outage)
        now = time.monotonic()
        hold = _Hold(HELD_UP, now + self.rng.uniform(6, 12), now + 20, self.bit[HELD_UP])
        self.filler = (filler, hold)
        self.counts["volume full (ENOSPC)"] += 1

    def _corrupt_model(self) -> bool:
        """models/current pointed at a copy of the champion whose ONNX is cut in half (False
        when there is no champion yet)."""
        registry = ModelRegistry(self.truth / "models")
        good = registry.current()
        if good is None or self.filler is not None:
            return False
        from fraudpipe.registry import new_name

        bad = new_name()
        tmp = registry.root / f".{bad}.tmp"
        shutil.copytree(registry.root / good, tmp)
        onnx = tmp / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
        manifest = json.loads((tmp / "manifest.json").read_text())
        (tmp / "manifest.json").write_text(json.dumps({**manifest, "version": bad}))
        os.rename(tmp, registry.root / bad)
        link = registry.root / f".current.{bad}"
        os.symlink(bad, link)
        os.replace(link, registry.root / "current")
        # on until an infer has refused it (a link seen through a mount's cache changes late),
        # train stopped meanwhile: a new model promoted could hide it before any infer looked
        now = time.monotonic()
        hold = _Hold(REFUSED, now + self.rng.uniform(6, 10), now + 25, self.bit[REFUSED])
        self.corrupt = (bad, good, hold)
        for w in self.fleet.workers():
            if w["stage"] == "train" and _signal(int(w["pid"]), signal.SIGSTOP):
                self.paused[int(w["pid"])] = now + 25
                self.held_trains.append(int(w["pid"]))
        self.counts["corrupt model promoted"] += 1
        self.log.append(f"{time.time():.1f} corrupt model {bad} (good {good})")
        return True

    def _heal_model(self) -> None:
        assert self.corrupt is not None
        bad, good, _ = self.corrupt
        for pid in self.held_trains:  # train goes on (stopped, its status is stale: by pid)
            if self.paused.pop(pid, None):
                _signal(pid, signal.SIGCONT)
        self.held_trains.clear()
        registry = ModelRegistry(self.truth / "models")
        self.log.append(f"{time.time():.1f} healing: current is {registry.current()}")
        if registry.current() == bad:
            registry.promote(good, "soak: the corrupt promotion put right")
        shutil.rmtree(registry.root / bad, ignore_errors=True)
        self.corrupt = None

    def _inject_poison(self) -> None:
        """Batches no retry can help, one of each kind; each must end in dead letters."""
        q = self.truth / "queue"
        raw = sorted((self.truth / "state" / "log" / "transactions").glob("*/*.parquet"))
        pending = {t: q / t / "pending" for t in TOPICS}
        if not raw or not all(d.is_dir() for d in pending.values()):
            return  # nothing logged yet, or a topic its workers have not made yet: later
        real = pl.read_parquet(raw[0])
        ids = {n: make_id(1, "poison", n) for n in range(1, 6)}
        (pending[RAW] / f"{ids[1]}~0.parquet").write_bytes(b"PAR1 not parquet at all")
        pl.DataFrame({"what": ["no transactions"]}).write_parquet(
            pending[RAW] / f"{ids[2]}~0.parquet"
        )
        real.write_parquet(pending[RAW] / f"{ids[3]}~0.parquet")  # sent again under a new id
        real.with_columns(pl.lit(float("inf")).alias("amount")).write_parquet(
            pending[RAW] / f"{ids[4]}~0.parquet"
        )
        (pending[FEATURES] / f"{ids[5]}~0.parquet").write_bytes(b"garbage")
        (pending[RESULTS] / "dropped-by-hand.parquet").write_bytes(b"garbage")
        self.poison = {
            RAW: {ids[1], ids[2], ids[3], ids[4]},
            FEATURES: {ids[5]},
            RESULTS: {"dropped-by-hand.parquet"},
        }
        self.counts["poison batches"] += 6

    def heal(self) -> None:
        """The end of every fault still in force."""
        for pid in list(self.paused):
            _signal(pid, signal.SIGCONT)
        self.paused.clear()
        if self.filler is not None:
            self.filler[0].unlink(missing_ok=True)
            self.filler = None
        if self.corrupt is not None:
            self._heal_model()


# -- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _volume(plan: Plan) -> Iterator[Path | None]:
    """A tmpfs of its own (so that it can be filled), or None where mounting is refused."""
    mnt = plan.workdir / "vol"
    mnt.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={plan.volume_mb}m", "tmpfs", str(mnt)],
        capture_output=True,
    )
    try:
        yield mnt if made.returncode == 0 else None
    finally:
        if made.returncode == 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _config(plan: Plan, replay: Path) -> Path:
    doc = {
        "gather": {
            "source": "replay",
            "replay": {"path": str(replay)},
            "rate": plan.rate,
            "batch_interval_s": 1.0,
        },
        "features": {"store_retention_days": 100_000},  # the audit reads every row
        "train": dict(FAST_TRAINING),
        "queue": {"lease_s": plan.lease_s, "results_hold_s": 1, "fsync": False},
    }
    path = plan.workdir / "soak.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _events(logs: list[Path]) -> dict[str, int]:
    """How often the workers logged what the faults should make them log."""
    counts: Counter[str] = Counter()
    for path in logs:
        with contextlib.suppress(OSError), open(path, errors="replace") as fh:
            for line in fh:
                with contextlib.suppress(ValueError, AttributeError):
                    event = json.loads(line).get("event", "")
                    if event and not event.startswith(("worker.", "train.progress")):
                        counts[event] += 1
    return dict(sorted(counts.items()))


def run_soak(plan: Plan) -> dict[str, Any]:
    work = plan.workdir
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    replay = work / "replay.parquet"
    world = work / "world.yaml"
    world.write_text(yaml.safe_dump({"gather": {"simulator": WORLD}}))
    _cli("simulate", "--days", str(plan.days), "--output", str(replay), "--config", str(world))
    config = _config(plan, replay)
    started = time.monotonic()
    with _volume(plan) as volume, contextlib.ExitStack() as stack:
        root = volume if volume is not None else work / "vol"
        fleet: Fleet
        if plan.mounts == 2:
            export = root / "export"
            export.mkdir()
            mounts = stack.enter_context(netfs.two_mounts(work / "net", export))
            truth = export / "data"
            truth.mkdir()
            fleet = PodFleet(plan, list(mounts.mounts), truth, config, logs)
        else:
            truth = root / "data"
            fleet = RunFleet(plan, truth, config, logs)
        fleet.start()
        chaos = Chaos(plan, fleet, truth, volume)
        peak = 0
        try:
            while time.monotonic() - started < plan.seconds and not fleet.done():
                chaos.step()
                fleet.supervise()
                time.sleep(chaos.rng.uniform(0.3, 1.2))
                if chaos._due("disk sample", 5):
                    peak = max(peak, disk_usage(truth))
            # A fault struck late in the run is left its time to bite (it ends by its bound):
            # cut short, a corrupt model no mount has seen yet would be refused by nobody.
            while chaos.holding() and not fleet.done():
                chaos.tend()
                fleet.supervise()
                time.sleep(0.5)
            chaos.heal()
            deadline = time.monotonic() + plan.drain_s
            while not fleet.done() and time.monotonic() < deadline:
                fleet.supervise()
                fleet.workers()
                time.sleep(1)
                if chaos._due("disk sample", 5):
                    peak = max(peak, disk_usage(truth))
            finished = fleet.done()
        finally:
            chaos.heal()
            fleet.stop()
        if (truth / "run" / "logs").is_dir():  # kept past the volume (for the curious)
            shutil.copytree(truth / "run" / "logs", logs / "workers", dirs_exist_ok=True)
        events = _events(list(logs.rglob("*.log")))
        settings = load_settings(config, {"data_dir": truth})
        report = audit(settings, offline_features(replay, config, work / "offline.parquet"))
        problems = report.problems(chaos.poison)
        if not finished:
            problems.append("the stream did not finish within the time allowed")
        problems += fleet.orphans
        left = [p for p in fleet.seen if alive(p)]
        problems += [f"worker pid {p} still running after the fleet stopped" for p in left]
        for p in left:
            _signal(p, signal.SIGKILL)
    return {
        "mounts": plan.mounts,
        "seed": plan.seed,
        "seconds_of_faults": plan.seconds,
        "seconds_in_all": round(time.monotonic() - started, 1),
        "replay": {"days": plan.days, "rows": report.fed},
        "faults": dict(sorted(chaos.counts.items())),
        "logged": events,
        "batches_by_node": fleet.batches_by_node(),
        "audit": report.summary(),
        "dead_letters": {t: dict(v) for t, v in report.dead.items()},
        "peak_disk_mb": round(peak / 2**20, 1),
        "volume": "tmpfs" if volume is not None else "a plain folder (no ENOSPC faults)",
        "workdir": str(work),
        "problems": problems,
        "chaos_log": chaos.log,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of faults")
    parser.add_argument("--mounts", type=int, choices=(1, 2), default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    plan = Plan(seconds=args.seconds, mounts=args.mounts, seed=args.seed)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=False)
        plan.workdir = args.workdir
    result = run_soak(plan)
    print(json.dumps(result, indent=2))
    if not args.keep and not result["problems"]:
        shutil.rmtree(plan.workdir, ignore_errors=True)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
