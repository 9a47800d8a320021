"""The queue protocol: unit cases, a property test, and real processes killed mid-batch."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudpipe.config import QueueSettings
from fraudpipe.queue import SUFFIX, Queue, Topic, make_id, producer_id


def batch(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"x": list(range(start, start + n))})


def where(topic: Topic, msg_id: str) -> list[str]:
    """Every state a message id is found in (must be exactly one)."""
    found = []
    for state in ("pending", "claimed", "done", "dead"):
        for p in topic.dir(state).iterdir():
            if p.name.startswith(msg_id) and p.name.endswith(SUFFIX):
                found.append(state)
    return found


def test_publish_is_atomic_and_named_by_id(tmp_path: Path, qsettings: QueueSettings) -> None:
    t = Topic(tmp_path, "t", qsettings)
    path = t.publish("0000000000001-p-00000001", batch(3))
    assert path is not None and path.name == "0000000000001-p-00000001~0.parquet"
    assert list(t.dir("tmp").iterdir()) == []  # nothing left half-written
    assert pl.read_parquet(path)["x"].to_list() == [0, 1, 2]


def test_ids_are_time_ordered_and_unique() -> None:
    p = producer_id("gather")
    ids = [make_id(1000 + i // 3, p, i) for i in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == 10
    with pytest.raises(ValueError):
        make_id(1, "bad~name", 1)


def test_claim_is_exclusive_and_oldest_first(tmp_path: Path, qsettings: QueueSettings) -> None:
    t = Topic(tmp_path, "t", qsettings)
    for i in range(3):
        t.publish(make_id(i, "p", i), batch(1, i))
    a = t.claim("a")
    assert a is not None and a.id == make_id(0, "p", 0)
    assert where(t, a.id) == ["claimed"]
    claimed = {a.id}
    while (c := t.claim("b")) is not None:
        claimed.add(c.id)
    assert len(claimed) == 3 and t.claim("c") is None


def test_ack_then_republish_is_ignored(tmp_path: Path, qsettings: QueueSettings) -> None:
    t = Topic(tmp_path, "t", qsettings)
    t.publish("0000000000001-p-00000001", batch(2))
    c = t.claim("a")
    assert c is not None and t.ack(c)
    assert where(t, c.id) == ["done"]
    # A crashed producer re-publishing the same batch after it was consumed: no duplicate.
    assert t.publish(c.id, batch(2)) is None
    assert t.pending() == []


def test_release_retries_then_dead_letters_with_reason(
    tmp_path: Path, qsettings: QueueSettings
) -> None:
    t = Topic(tmp_path, "t", qsettings)
    t.publish("0000000000001-p-00000001", batch(2))
    outcomes = []
    for _ in range(qsettings.max_attempts):
        c = t.claim("a")
        assert c is not None
        outcomes.append(t.release(c, "boom"))
    assert outcomes == ["retry", "retry", "dead"]
    [dl] = t.dead_letters()
    assert dl.id == "0000000000001-p-00000001"
    assert "failed 3 time(s)" in dl.reason["reason"] and "boom" in dl.reason["reason"]
    t.requeue(dl.id)
    assert [m.attempt for m in t.pending()] == [0] and t.dead_letters() == []


def test_reaper_returns_expired_claims(tmp_path: Path, qsettings: QueueSettings) -> None:
    t = Topic(tmp_path, "t", qsettings)
    t.publish("0000000000001-p-00000001", batch(2))
    c = t.claim("crashed")
    assert c is not None
    assert t.reap() == 0  # lease still valid
    assert t.renew(c)
    assert t.reap(now=time.time() + qsettings.lease_s + 0.5) == 1
    [m] = t.pending()
    assert (m.attempt, m.lost) == (0, 1)  # a lost lease, not a failed attempt
    assert m.path.name == f"{m.id}~0-1.parquet"
    # The slow owner wakes up: its ack and renew fail (lease lost), nothing is duplicated.
    assert not t.ack(c) and not t.renew(c)
    assert where(t, c.id) == ["pending"]


def test_expired_claims_of_a_poison_batch_end_in_dead(
    tmp_path: Path, qsettings: QueueSettings
) -> None:
    t = Topic(tmp_path, "t", qsettings)
    t.publish("0000000000001-p-00000001", batch(2))
    for _ in range(qsettings.max_lost_leases):
        assert t.dead_letters() == []
        assert t.claim("killer") is not None
        t.reap(now=time.time() + qsettings.lease_s + 1)
    [dl] = t.dead_letters()
    assert dl.reason["lost_leases"] == qsettings.max_lost_leases
    assert f"lost {qsettings.max_lost_leases} lease(s)" in dl.reason["reason"]


def test_lost_leases_and_failures_are_bounded_apart(
    tmp_path: Path, qsettings: QueueSettings
) -> None:
    """Holders killed one after another say little about the batch: they cost no attempt, and
    a deferral (the volume was full) costs nothing at all."""
    t = Topic(tmp_path, "t", qsettings)
    t.publish("0000000000001-p-00000001", batch(2))
    for _ in range(qsettings.max_lost_leases - 1):
        assert t.claim("killed") is not None
        assert t.reap(now=time.time() + qsettings.lease_s + 1) == 1
    for _ in range(qsettings.max_attempts - 1):
        c = t.claim("failing")
        assert c is not None and t.release(c, "boom") == "retry"
    for _ in range(5):
        c = t.claim("disk full")
        assert c is not None and t.defer(c) == "retry"
    [m] = t.pending()
    assert (m.attempt, m.lost) == (qsettings.max_attempts - 1, qsettings.max_lost_leases - 1)
    assert t.dead_letters() == []
    c = t.claim("last")
    assert c is not None and t.release(c, "boom") == "dead"
    [dl] = t.dead_letters()
    assert dl.reason["attempts"] == qsettings.max_attempts


def test_files_that_are_no_message_go_to_dead_letters(
    tmp_path: Path, qsettings: QueueSettings
) -> None:
    """A file dropped into pending/ under a name that is no message id is moved to dead/ with
    a reason: nothing skips it forever, nothing chokes on it, and it is never requeued."""
    t = Topic(tmp_path, "t", qsettings)
    t.publish("0000000000001-p-00000001", batch(2))
    for name in ("abc~0.parquet", "12-p-1~0.parquet", "0000000000002-p-00000002~x.parquet"):
        (t.dir("pending") / name).write_bytes(b"x")
    (t.dir("pending") / ".hidden-write.tmp").write_bytes(b"x")  # someone's write in progress
    assert [m.id for m in t.pending()] == ["0000000000001-p-00000001"]
    assert t.quarantine() == 3
    assert sorted(p.name for p in t.dir("pending").iterdir()) == [
        ".hidden-write.tmp",
        "0000000000001-p-00000001~0.parquet",
    ]
    dead = t.dead_letters()
    assert [d.id for d in dead] == [
        "0000000000002-p-00000002~x.parquet",
        "12-p-1~0.parquet",
        "abc~0.parquet",
    ]
    assert all(d.foreign and "not a message" in d.reason["reason"] for d in dead)
    assert t.stats().dead == 3
    with pytest.raises(ValueError, match="cannot be requeued"):
        t.requeue("abc~0.parquet")
    t.purge("abc~0.parquet")
    assert len(t.dead_letters()) == 2


def test_retention_and_tmp_cleanup(tmp_path: Path) -> None:
    s = QueueSettings(retention_s=10, fsync=False)
    t = Topic(tmp_path, "t", s)
    t.publish("0000000000001-p-00000001", batch(1))
    c = t.claim("a")
    assert c is not None and t.ack(c)
    (t.dir("tmp") / "partial").write_bytes(b"x")
    assert t.expire_done() == 0
    assert t.expire_done(now=time.time() + 11) == 1
    assert t.clean_tmp(max_age_s=60, now=time.time() + 61) == 1
    assert list(t.dir("done").iterdir()) == [] and list(t.dir("tmp").iterdir()) == []


def test_backlog_bound(tmp_path: Path) -> None:
    t = Topic(tmp_path, "t", QueueSettings(max_backlog=2, fsync=False))
    t.publish(make_id(1, "p", 1), batch(1))
    assert not t.over_backlog()
    t.publish(make_id(2, "p", 2), batch(1))
    assert t.backlog(max_age_s=0) == 2 and t.over_backlog()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["publish", "claim", "ack", "release", "defer", "reap"]),
            st.integers(0, 5),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_every_message_is_in_exactly_one_state(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    t = Topic(tmp_path_factory.mktemp("q"), "t", QueueSettings(lease_s=1, fsync=False))
    published: set[str] = set()
    held = []
    clock = time.time()
    for op, k in ops:
        if op == "publish":
            mid = make_id(k, "p", k)
            t.publish(mid, batch(1, k))
            published.add(mid)
        elif op == "claim" and (c := t.claim(f"c{k}")) is not None:
            held.append(c)
        elif op in ("ack", "release", "defer") and held:
            c = held.pop(k % len(held))
            {"ack": t.ack, "release": lambda c: t.release(c, "x"), "defer": t.defer}[op](c)
        elif op == "reap":
            clock += 2
            t.reap(now=clock)
        for mid in published:
            assert len(where(t, mid)) == 1, (mid, where(t, mid))


CONSUMER = textwrap.dedent("""
    import random, sys, time
    from pathlib import Path
    from fraudpipe.config import QueueSettings
    from fraudpipe.queue import Topic, producer_id
    root, lease = Path(sys.argv[1]), float(sys.argv[2])
    s = QueueSettings(lease_s=lease, max_attempts=100, fsync=True)
    inp, out = Topic(root, "in", s), Topic(root, "out", s)
    me = producer_id("c")
    while True:
        inp.reap()
        c = inp.claim(me)
        if c is None:
            time.sleep(0.01)
            continue
        df = inp.read(c)
        time.sleep(random.random() * 0.02)  # a kill may land anywhere in here
        out.publish(c.id, df.with_columns(y=df["x"] * 2))
        time.sleep(random.random() * 0.01)
        inp.ack(c)
""")


def test_killed_consumers_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    s = QueueSettings(fsync=False)
    inp = Topic(tmp_path, "in", s)
    n_batches = 300
    for i in range(n_batches):
        inp.publish(make_id(i, "src", i), batch(10, i * 10))
    lease = "0.5"

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", CONSUMER, str(tmp_path), lease])

    procs = [spawn() for _ in range(4)]
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            st_ = inp.stats()
            if st_.pending == 0 and st_.claimed == 0:
                break
            time.sleep(rng.uniform(0.05, 0.3))
            if kills < 25:
                victim = rng.randrange(len(procs))
                os.kill(procs[victim].pid, signal.SIGKILL)
                procs[victim].wait()
                procs[victim] = spawn()
                kills += 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert kills >= 10
    out = Topic(tmp_path, "out", s)
    files = sorted(p.name for p in out.dir("pending").iterdir())
    assert len(files) == n_batches, "every batch published exactly once (by name)"
    ys = pl.concat([pl.read_parquet(p) for p in out.dir("pending").iterdir()])["x"]
    assert ys.sort().to_list() == list(range(n_batches * 10))
    assert inp.stats().claimed == 0 and inp.dead_letters() == []
    assert len(list(inp.dir("done").iterdir())) == n_batches


def test_queue_lists_topics(tmp_path: Path, qsettings: QueueSettings) -> None:
    q = Queue(tmp_path, qsettings)
    q.topic("b")
    q.topic("a")
    assert q.existing() == ["a", "b"]


def test_reading_a_message_that_is_gone_names_it(tmp_path: Path, qsettings: QueueSettings) -> None:
    """A claim reaped away mid-read is a lost lease (the worker tells it from a volume fault
    by the file named), so the FileNotFoundError must name the message's path."""
    t = Topic(tmp_path, "t", qsettings)
    t.publish("0000000000001-p-00000001", batch(2))
    c = t.claim("slow")
    assert c is not None
    c.path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        t.read(c)
    assert err.value.filename == str(c.path)
