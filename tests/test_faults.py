"""Faults of the volume and of the clock, with real processes on a real (small) filesystem."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from fraudpipe.config import QueueSettings
from fraudpipe.layout import FEATURES, RAW, TOPICS
from fraudpipe.queue import Topic, make_id
from tests.pipeline import queue_states, run_stage, small_config, wait_for


def batch() -> pl.DataFrame:
    return pl.DataFrame({"x": [1, 2]})


pytestmark = pytest.mark.slow


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB tmpfs of our own, to fill up for real."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs: {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(volume: Path) -> Path:
    """Write one file until the volume has no byte left; return it."""
    filler = volume / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * chunk)
    return filler


class Lines:
    """A child process's output, line by line, read in the background."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        self._out = proc.stdout
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._out:
            self.seen.put(line)

    def close(self) -> None:
        """After the process ended: the rest of its output, then the pipe closed."""
        self._reader.join(30)
        self._out.close()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = self.seen.get(timeout=0.5)
                if text in line:
                    return line
        raise AssertionError(f"no line with {text!r} within {timeout} s")


def _worker(stage: str, data: Path, cfg: Path) -> tuple[subprocess.Popen[str], Lines]:
    """One `fraudpipe worker` of `stage`, logging JSON, with its output read line by line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDPIPE_")}
    env["FRAUDPIPE_LOG__FORMAT"] = "json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fraudpipe", "worker", f"--stage={stage}", "--data-dir",
         str(data), "--config", str(cfg), "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return proc, Lines(proc)


def test_a_full_volume_holds_batches_back_and_loses_nothing(
    tmp_path: Path, small_volume: Path
) -> None:
    """ENOSPC is the volume's fault, not the batch's: the batch goes back untouched (no attempt
    counted, so nothing is dead-lettered however long it lasts), the worker waits instead of
    crash-looping, and once there is room again every batch goes through."""
    cfg, data = small_config(tmp_path, days=6, rate=8000), small_volume / "data"
    run_stage("gather", "--burst", data, cfg)
    raw = sorted((data / "queue" / RAW / "pending").iterdir())
    assert len(raw) > 5
    filler = fill(small_volume)
    proc, lines = _worker("preprocess", data, cfg)
    try:
        held = lines.wait_for('"batch.deferred"', 60)
        lines.wait_for("ENOSPC", 60)
        for _ in range(3):  # it keeps trying, slower each time, and does not die
            lines.wait_for('"stage.held_up"', 60)
        assert proc.poll() is None, held
        states = queue_states(data, cfg)
        assert states[RAW]["dead"] == 0 and states[FEATURES]["pending"] == 0
        held_back = [
            p.name for s in ("pending", "claimed") for p in (data / "queue" / RAW / s).iterdir()
        ]
        assert len(held_back) == len(raw)
        assert [n for n in held_back if n.split("~")[1].removesuffix(".parquet") != "0"] == []
        filler.unlink()
        wait_for(lambda: queue_states(data, cfg)[FEATURES]["pending"] == len(raw), 120)
        lines.wait_for('"stage.resumed"', 60)
    finally:
        proc.terminate()
        proc.wait(30)
        lines.close()
    assert proc.returncode == 0
    states = queue_states(data, cfg)
    assert states[RAW] == {**states[RAW], "pending": 0, "claimed": 0, "dead": 0}
    assert all(not any((data / "queue" / t / "tmp").iterdir()) for t in TOPICS)


def test_fill_really_fills(small_volume: Path) -> None:
    filler = fill(small_volume)
    with pytest.raises(OSError) as err:
        (small_volume / "more").write_bytes(b"x" * 4096)
    assert err.value.errno == errno.ENOSPC
    filler.unlink()


# -- signals -----------------------------------------------------------------------------------


def test_a_worker_stops_however_many_times_it_is_told(tmp_path: Path) -> None:
    """A worker whose supervisor dies gets SIGTERM once per thread of that supervisor (Linux
    re-parents it, and sends PR_SET_PDEATHSIG, as each thread exits). The handler took locks
    (threading.Event, logging): run nested, it waited on itself and the worker never stopped."""
    cfg = small_config(tmp_path)
    for attempt in range(3):
        proc, lines = _worker("preprocess", tmp_path / f"data{attempt}", cfg)
        try:
            lines.wait_for('"worker.started"', 60)
            for _ in range(2000):  # as fast as they go: many land inside the handler
                proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            lines.close()
        assert proc.returncode == 0
        lines.wait_for('"worker.stopped"', 5)


# -- clocks ------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fraudpipe.config import QueueSettings
    from fraudpipe.queue import Topic
    root, hold = Path(sys.argv[1]), float(sys.argv[2])
    t = Topic(root, "t", QueueSettings(lease_s=2, fsync=False))
    claim = t.claim("holder")
    assert claim is not None
    print("claimed", flush=True)
    end = time.monotonic() + hold
    while time.monotonic() < end:  # a live holder: renews every lease_s / 4
        assert t.renew(claim), "lease lost while renewing"
        time.sleep(0.5)
    print("acked" if t.ack(claim) else "lost", flush=True)
""")
REAPER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fraudpipe.config import QueueSettings
    from fraudpipe.queue import Topic
    root, until = Path(sys.argv[1]), sys.argv[2]
    t = Topic(root, "t", QueueSettings(lease_s=2, fsync=False))
    moved = 0
    while not (root / until).exists():
        moved += t.reap()
        if moved:
            print("reaped", flush=True)
            (root / "reaped").touch()
            break
        time.sleep(0.2)
""")


def _skewed(offset: str, script: str, *args: str) -> subprocess.Popen[str]:
    """A Python process whose clock runs `offset` off (libfaketime: time(), clock_gettime()
    and the times it stamps with utime are shifted; the volume's ctimes are not)."""
    if shutil.which("faketime") is None:
        pytest.skip("needs libfaketime: apt-get install faketime")
    return subprocess.Popen(
        ["faketime", "-f", offset, sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_a_node_whose_clock_runs_ahead_steals_no_live_lease(tmp_path: Path) -> None:
    """Leases are the volume's ctimes, judged on the volume's clock: a reaper five minutes
    ahead (lease 2 s) sees a renewed claim as fresh, and its holder acks it."""
    Topic(tmp_path, "t", QueueSettings(fsync=False)).publish(make_id(1, "p", 1), batch())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), "6"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
    reaper = _skewed("+300s", REAPER, str(tmp_path), "done")
    out, _ = holder.communicate(timeout=120)
    (tmp_path / "done").touch()
    reaped, _ = reaper.communicate(timeout=120)
    assert holder.returncode == 0 and out.strip() == "acked", out
    assert "reaped" not in reaped, reaped


def test_a_node_whose_clock_runs_behind_still_reaps_the_dead(tmp_path: Path) -> None:
    """A reaper five minutes behind must not wait five more minutes to return the claim of a
    holder that died: it reaps after about one lease (2 s) on the volume's clock."""
    t = Topic(tmp_path, "t", QueueSettings(lease_s=2, fsync=False))
    t.publish(make_id(1, "p", 1), batch())
    assert t.claim("dead") is not None  # and never renewed: its holder is gone
    reaper = _skewed("-300s", REAPER, str(tmp_path), "never")
    try:
        deadline = time.monotonic() + 120  # far below the skew: only a wrong clock misses it
        while not (tmp_path / "reaped").exists():
            assert time.monotonic() < deadline and reaper.poll() is None, "not reaped"
            time.sleep(0.2)
    finally:
        reaper.kill()
        reaper.communicate()
    [m] = t.pending()
    assert m.lost == 1
