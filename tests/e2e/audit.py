"""Run inside the cluster (a pod of the release's image with its config and claim, read-only):
what the pipeline on the shared volume has done, as one JSON line on stdout.

`status`: live workers and topic counts. `audit`: wait until gather has generated its last
simulated day and every topic has drained, then compare the scored transaction ids with the
ids the simulator generates for those days (computed here, independently of gather).
Only fraudpipe and the standard library: this file is sent to the pod as `python -c`.
"""

import json
import sys
import time
from pathlib import Path

import polars as pl

from fraudpipe.config import load_settings
from fraudpipe.layout import RESULTS, TOPICS, Layout
from fraudpipe.queue import Queue
from fraudpipe.results import ResultsStore, read_all
from fraudpipe.simulate import Simulator
from fraudpipe.worker import read_status

mode, timeout_s = sys.argv[1], float(sys.argv[2])
settings = load_settings(Path("/etc/fraudpipe/config.yaml"))
layout = Layout(settings.data_dir)
queue = Queue(layout.queue, settings.queue)


def status() -> dict:
    return {
        "workers": [
            {k: w.get(k) for k in ("stage", "host", "batches", "rows", "finished")}
            for w in read_status(layout.status)
        ],
        "topics": {t: queue.topic(t).stats().as_dict() for t in TOPICS},
    }


def drained(now: dict) -> bool:
    gather_done = any(w["stage"] == "gather" and w["finished"] for w in now["workers"])
    busy = sum(s["pending"] + s["claimed"] for s in now["topics"].values())
    return gather_done and busy == 0


now = status()
if mode == "audit":
    deadline = time.monotonic() + timeout_s
    while not drained(now) and time.monotonic() < deadline:
        time.sleep(2)
        now = status()
    now["drained"] = drained(now)
    g = settings.gather
    sim = Simulator(g.simulator, g.label_delay_days)
    want = pl.concat([sim.day(d)["transaction_id"] for d in range(g.days or 0)])
    df = read_all(ResultsStore(layout.results), queue.topic(RESULTS))
    got = df["transaction_id"] if df is not None else pl.Series("transaction_id", [], pl.Int64)
    counts = got.value_counts()
    now["generated"] = want.len()
    now["scored_rows"] = got.len()
    now["duplicated"] = counts.filter(pl.col("count") > 1).height
    now["missing"] = want.filter(~want.is_in(got.implode())).len()
    now["unknown"] = got.filter(~got.is_in(want.implode())).len()
print(json.dumps(now))
