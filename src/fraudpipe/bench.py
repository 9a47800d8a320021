"""``fraudpipe bench``: each stage's hot path on data it makes, beside a baseline run alike.

Every figure is the median of ``runs`` runs, measured in this process on this machine, next to
a baseline measured in the same run on the same rows, so that the ratio means something on a
noisy machine even when the absolute figures do not. Per figure: rows/s, CPU seconds per
million rows (all threads of this process), batch latency p50/p99 where the work comes in
batches, and the process's peak RSS after it (a high-water mark: it only grows).

- gather: the simulator's days, then their Parquet encoding as gather writes batches
  (baseline: the encoding alone: what any source costs);
- preprocess: the features of each batch over its history, as preprocess computes them
  (baseline: the handbook's 15 features in pandas, groupby + time-based rolling windows,
  written here from its description, over the same rows);
- infer: each scorer (scoring.py) against LightGBM's own predict on the same model and rows,
  and the reason codes of the alerts beside the scoring they add to (TreeSHAP beside them);
- train: a fit of the default forest as train makes it, then its ONNX export and compilation
  (baseline: lightgbm.train alone, same parameters);
- queue: publish, claim, read, ack of batch files (baseline: write, fsync, rename, read,
  rename of the same bytes by hand);
- e2e: ``fraudpipe run`` at offered rates (bench_e2e.py; baseline: the rate the other stages'
  CPU cost per row allows on this machine's cores, when they were measured in the same run).

Progress goes to stderr; :func:`run` returns one JSON-able document (``SCHEMA_VERSION``).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

SCHEMA_VERSION = 1
STAGES = ("gather", "preprocess", "infer", "train", "queue", "e2e")
BATCH_ROWS = 50_000
DAYS = 45  # the features' lookback (37 days) and a week of batches after it
TRAIN_ROWS = 200_000  # train's figure: at most this many rows (a fit is the dearest figure)
PANDAS_ROWS = 200_000  # the pandas baseline runs at ~3k rows/s: a run of it is the dearest


@dataclass
class Figure:
    """One measured thing: per run its wall and CPU seconds, per batch its latency."""

    rows: int
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    batch_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        wall, cpu = statistics.median(self.wall_s), statistics.median(self.cpu_s)
        doc: dict[str, Any] = {
            "rows": self.rows,
            "runs": len(self.wall_s),
            "rows_per_s": round(self.rows / wall, 1) if wall > 0 else None,
            "cpu_s_per_million_rows": round(cpu / self.rows * 1e6, 3),
            "wall_s": round(wall, 4),
            "batch_latency_ms": None,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }
        if self.batch_s:
            p50, p99 = np.percentile(np.asarray(self.batch_s) * 1000, [50, 99])
            doc["batch_latency_ms"] = {"p50": round(float(p50), 2), "p99": round(float(p99), 2)}
        return doc


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(
    rows: int, runs: int, work: Callable[[Callable[[float], None]], object]
) -> dict[str, Any]:
    """Run work(batch_done) `runs` times; work calls batch_done(seconds) after each batch."""
    fig = Figure(rows)
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        work(fig.batch_s.append)
        fig.wall_s.append(time.perf_counter() - wall)
        fig.cpu_s.append(time.process_time() - cpu)
    fig.peak_rss_mb = _peak_rss_mb()
    return fig.as_dict()


def _beside(ours: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """How many times the baseline's rows/s ours is (> 1: faster)."""
    a, b = ours.get("rows_per_s"), baseline.get("rows_per_s")
    return round(a / b, 2) if a and b else None


def beside_the_cpu(gpu: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    """A GPU figure's CPU counterpart (the same work on one core of this machine), and two
    ratios: to that core, and to every core of the machine (the core's rows per CPU-second
    times the cores: replicas scale so, the queue permitting)."""
    cores = os.cpu_count() or 1
    per_cpu_s = 1e6 / cpu["cpu_s_per_million_rows"] if cpu["cpu_s_per_million_rows"] else None
    ours = gpu.get("rows_per_s")
    return {
        "cpu": cpu,
        "ratio_to_cpu": _beside(gpu, cpu),
        "ratio_to_all_cores": round(ours / (per_cpu_s * cores), 2) if ours and per_cpu_s else None,
        "cores": cores,
    }


@contextmanager
def _step(what: str) -> Iterator[None]:
    print(f"bench: {what}...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"bench: {what}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def _settings(overrides: dict[str, Any] | None = None) -> Any:
    """The defaults (and overrides): what a user who configures nothing runs."""
    from fraudpipe.config import load_settings

    with tempfile.TemporaryDirectory(prefix="fraudpipe-bench-") as tmp:
        return load_settings(None, {"data_dir": tmp, **(overrides or {})})


# -- data ----------------------------------------------------------------------------------


@dataclass
class Data:
    """Simulated transactions with labels, their features, and the batches of the last days."""

    tx: pl.DataFrame  # TRANSACTIONS columns, in time order
    frauds: pl.DataFrame  # transaction_id, label_ts of fraud labels
    labels: pl.DataFrame
    days: int


def make_data(rows: int) -> Data:
    """About `rows` transactions over the features' lookback and a week more (45 days): the
    simulator's population scaled to that, its behaviour as configured."""
    from fraudpipe.schema import TRANSACTIONS
    from fraudpipe.simulate import Simulator

    sim_cfg = _settings().gather.simulator
    per_day = max(1, Simulator(sim_cfg, label_delay_days=7.0).day(0).height)
    scale = rows / (DAYS * per_day)
    scaled = sim_cfg.model_copy(
        update={
            "n_customers": max(200, int(sim_cfg.n_customers * scale)),
            "n_terminals": max(400, int(sim_cfg.n_terminals * scale)),
        }
    )
    sim = Simulator(scaled, label_delay_days=7.0)
    df = pl.concat([sim.day(d) for d in range(DAYS)])
    tx = df.with_columns(created_at=pl.lit(None, pl.Float64)).select(list(TRANSACTIONS))
    labels = df.select("transaction_id", "is_fraud", "label_ts", "fraud_scenario")
    frauds = labels.filter(pl.col("is_fraud") == 1).select("transaction_id", "label_ts")
    return Data(tx=tx, frauds=frauds, labels=labels, days=DAYS)


# -- the stages ----------------------------------------------------------------------------


def bench_gather(rows: int, runs: int) -> dict[str, Any]:
    from fraudpipe.simulate import Simulator

    sim = Simulator(_settings().gather.simulator, label_delay_days=7.0)
    per_day = max(1, sim.day(0).height)
    days = max(1, rows // per_day)
    n = sum(sim.day(d).height for d in range(days))
    made = [sim.day(d) for d in range(days)]

    def simulate(done: Callable[[float], None]) -> None:
        for d in range(days):
            t = time.perf_counter()
            for batch in sim.day(d).iter_slices(BATCH_ROWS):
                batch.write_parquet(io.BytesIO(), compression="lz4", statistics=False)
            done(time.perf_counter() - t)

    def encode_only(done: Callable[[float], None]) -> None:
        for day in made:
            for batch in day.iter_slices(BATCH_ROWS):
                batch.write_parquet(io.BytesIO(), compression="lz4", statistics=False)

    ours = measure(n, runs, simulate)
    baseline = measure(n, runs, encode_only)
    return {
        "fraudpipe": ours,
        "baseline": {"what": "Parquet encoding of the same batches alone", **baseline},
        "ratio_to_baseline": _beside(ours, baseline),
        "note": "simulated days (one per batch latency), encoded as gather's batches",
    }


def bench_preprocess(data: Data, runs: int, device: str, pandas_rows: int) -> dict[str, Any]:
    from fraudpipe.devices import device as make_device
    from fraudpipe.features import compute_rows, lookback, valid_transactions

    cfg = _settings().features
    xp = make_device(device).xp
    tx = valid_transactions(data.tx, "bench")
    ts = tx["ts"]
    first = ts.max() - dt.timedelta(days=7)  # type: ignore[operator]
    batches = []
    start = int(ts.search_sorted(first))
    for lo in range(start, tx.height, BATCH_ROWS):
        hi = min(lo + BATCH_ROWS, tx.height)
        since = ts[lo] - lookback(cfg)
        h0 = int(ts.search_sorted(since))
        batches.append((tx.slice(h0, hi - h0), np.arange(lo - h0, hi - h0)))
    n = sum(len(rows) for _, rows in batches)

    def streaming(on: Any) -> Callable[[Callable[[float], None]], None]:
        def work(done: Callable[[float], None]) -> None:
            for history, rows in batches:
                t = time.perf_counter()
                compute_rows(history, data.frauds, cfg, rows, on)
                done(time.perf_counter() - t)

        return work

    ours = measure(n, runs, streaming(xp))
    doc: dict[str, Any] = {
        "fraudpipe": ours,
        "note": f"the last 7 days in batches of {BATCH_ROWS}, each over its "
        f"{lookback(cfg).days}-day history (every feature, extended ones included)",
    }
    if device == "gpu":
        doc.update(beside_the_cpu(ours, measure(n, runs, streaming(make_device("cpu").xp))))
    try:
        import pandas  # noqa: F401
    except ImportError:
        doc["baseline"] = {"what": "pandas is not installed: pip install 'fraudpipe[bench]'"}
        doc["ratio_to_baseline"] = None
        return doc
    # A smaller world of the same density (rows per customer and terminal): pandas' cost is
    # per group as much as per row, so the first rows of the big world would cost it as much.
    small = data if pandas_rows >= data.tx.height else make_data(pandas_rows)
    sample = small.tx.join(
        small.labels.select("transaction_id", "is_fraud"), on="transaction_id", how="left"
    )
    handbook = _settings({"features": {"extended": False}}).features
    ours_same = measure(
        sample.height,
        runs,
        lambda done: _offline(sample.drop("is_fraud"), small.labels, handbook, xp),
    )
    base = measure(sample.height, 1, lambda done: handbook_pandas(sample))
    doc["fraudpipe_on_baseline_rows"] = ours_same
    doc["baseline"] = {
        "what": "the handbook's 15 features in pandas (groupby + rolling), one run, over "
        "a smaller world of the same density",
        **base,
    }
    doc["ratio_to_baseline"] = _beside(ours_same, base)
    return doc


def _offline(tx: pl.DataFrame, labels: pl.DataFrame, cfg: Any, xp: Any) -> None:
    from fraudpipe.features import compute_features

    compute_features(tx, labels, cfg, xp=xp)


def handbook_pandas(sample: pl.DataFrame, delay_days: int = 7) -> Any:
    """The handbook's feature transformation as pandas code: per customer, count and mean
    amount over 1, 7 and 30 days by time-based rolling windows; per terminal, the count and
    fraud share of the window shifted back by the delay (its rolling window of delay + w days
    minus that of delay days); weekend and night flags."""
    pdf = sample.select("ts", "customer_id", "terminal_id", "amount", "is_fraud").to_pandas()
    pdf = pdf.sort_values("ts")
    pdf["is_weekend"] = (pdf["ts"].dt.weekday >= 5).astype("int8")
    pdf["is_night"] = (pdf["ts"].dt.hour <= 6).astype("int8")

    def customer(g: Any) -> Any:
        g = g.set_index("ts")
        for w in (1, 7, 30):
            window = g["amount"].rolling(f"{w}D")
            g[f"customer_nb_tx_{w}d"] = window.count()
            g[f"customer_avg_amount_{w}d"] = window.sum() / window.count()
        return g.reset_index()

    def terminal(g: Any) -> Any:
        g = g.sort_values("ts").set_index("ts")
        fraud_d = g["is_fraud"].rolling(f"{delay_days}D").sum()
        count_d = g["is_fraud"].rolling(f"{delay_days}D").count()
        for w in (1, 7, 30):
            fraud = g["is_fraud"].rolling(f"{delay_days + w}D").sum() - fraud_d
            count = g["is_fraud"].rolling(f"{delay_days + w}D").count() - count_d
            g[f"terminal_nb_tx_{w}d"] = count
            g[f"terminal_risk_{w}d"] = (fraud / count).fillna(0)
        return g.reset_index()

    pdf = pdf.groupby("customer_id", group_keys=False)[list(pdf.columns)].apply(customer)
    return pdf.groupby("terminal_id", group_keys=False)[list(pdf.columns)].apply(terminal)


def _training_rows(data: Data) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every row's features (float32, as infer scores them) and fraud label, in time order."""
    from fraudpipe.features import compute_features, feature_names

    cfg = _settings().features
    names = feature_names(cfg)
    feats = compute_features(data.tx, data.labels, cfg).join(
        data.labels.select("transaction_id", "is_fraud"),
        on="transaction_id",
        maintain_order="left",
    )
    return feats.select(names).to_numpy().astype(np.float32), feats["is_fraud"].to_numpy(), names


def _train_settings(threads: int, device: str = "cpu") -> Any:
    """200 rounds of 31 leaves; on the GPU at the bins its learner holds, the CPU beside it too."""
    from fraudpipe.model import GPU_MAX_BIN

    gpu = {"max_bin": GPU_MAX_BIN} if device == "gpu" else {}
    return _settings({"train": {"threads": threads, **gpu}}).train


def bench_infer(data: Data, runs: int, threads: int, device: str = "cpu") -> dict[str, Any]:
    from fraudpipe.config import ScorerKind
    from fraudpipe.devices import device as make_device
    from fraudpipe.model import best_f1_threshold, export_onnx, train_booster
    from fraudpipe.reasons import Forest
    from fraudpipe.scoring import (
        MODEL_FILE,
        ONNX_FILE,
        SCORERS,
        compile_forest,
        compiled_name,
        digest,
        open_scorer,
        resolve,
    )

    X_all, y_all, names = _training_rows(data)
    cut = int(len(X_all) * 0.8)  # train on the first days, score the last ones
    booster = train_booster(X_all[:cut], y_all[:cut], _train_settings(threads), names)
    X, y = X_all[cut:], y_all[cut:]
    with tempfile.TemporaryDirectory(prefix="fraudpipe-bench-") as tmp:
        where = Path(tmp)
        text = booster.model_to_string()
        (where / MODEL_FILE).write_text(text)
        (where / ONNX_FILE).write_bytes(export_onnx(booster, len(names)))
        obj = compile_forest(text)
        (where / compiled_name()).write_bytes(obj)
        manifest = {"compiled": {compiled_name(): {"sha256": digest(obj)}}}
        # The walk on numpy is the GPU's code proven on the host, not a CPU scorer: it is
        # measured on the GPU only.
        kinds: list[ScorerKind] = [k for k in SCORERS if k != "arrays"]
        scorers: dict[str, Any] = {k: open_scorer(k, where, manifest, threads) for k in kinds}
        if device == "gpu":
            scorers["arrays"] = open_scorer("arrays", where, manifest, threads, make_device(device))
            kinds.append("arrays")
        batches = [X[i : i + BATCH_ROWS] for i in range(0, len(X), BATCH_ROWS)]
        n = len(X)

        def scoring(kind: str) -> Callable[[Callable[[float], None]], None]:
            def work(done: Callable[[float], None]) -> None:
                for b in batches:
                    t = time.perf_counter()
                    scorers[kind].score(b)
                    done(time.perf_counter() - t)

            return work

        figures = {k: measure(n, runs, scoring(k)) for k in kinds}
    # alerts at the threshold train would choose (best F1), on these rows
    scores = np.asarray(booster.predict(X))
    chosen = best_f1_threshold(y, scores)
    threshold = chosen[0] if chosen is not None else 0.5
    alerts = X[scores >= threshold]
    forest = Forest.of(booster, threads=threads)
    reasons = measure(len(alerts), runs, lambda done: forest.contributions(alerts))
    few = alerts[: min(len(alerts), 500)]
    shap = measure(
        len(few), 1, lambda done: booster.predict(few, pred_contrib=True, num_threads=threads)
    )
    # how the reasons compare: TreeSHAP's first feature among ours (first, and top 3)
    ours_rank = np.argsort(-forest.contributions(few)[:, :-1], axis=1, kind="stable")[:, :3]
    shap_first = np.argmax(np.asarray(booster.predict(few, pred_contrib=True))[:, :-1], axis=1)
    first_equal = float(np.mean(ours_rank[:, 0] == shap_first)) if len(few) else None
    in_top3 = float(np.mean((ours_rank == shap_first[:, None]).any(axis=1))) if len(few) else None
    compiled = figures["compiled"]
    ours = figures["arrays"] if device == "gpu" else compiled
    reasons_s = reasons["wall_s"]
    share = reasons_s / (reasons_s + ours["wall_s"]) if ours["wall_s"] else None
    doc = {
        "fraudpipe": {"scorer": resolve("auto", make_device(device)), **ours},
        "baseline": {"what": "LightGBM's own Booster.predict", **figures["lightgbm"]},
        "onnx": figures["onnx"],
        "ratio_to_baseline": _beside(ours, figures["lightgbm"]),
        "ratio_to_onnx": _beside(ours, figures["onnx"]),
        "reasons": {
            "alert_rate": round(len(alerts) / max(1, n), 5),
            "per_alert_us": round(reasons_s / max(1, len(alerts)) * 1e6, 2),
            "share_of_infer": round(share, 4) if share is not None else None,
            "treeshap_per_alert_us": round(shap["wall_s"] / max(1, len(few)) * 1e6, 2),
            "treeshap_first_is_ours_first": first_equal,
            "treeshap_first_in_our_top3": in_top3,
        },
        "model": {"trees": booster.num_trees(), "features": len(names)},
        "threads": threads,
    }
    if device == "gpu":
        doc.update(beside_the_cpu(ours, compiled))
    return doc


def bench_train(data: Data, runs: int, threads: int, device: str = "cpu") -> dict[str, Any]:
    import lightgbm as lgb

    from fraudpipe.devices import device as make_device
    from fraudpipe.model import booster_params, export_onnx, train_booster
    from fraudpipe.scoring import compile_forest

    X, y, names = _training_rows(data)
    X, y = X[-TRAIN_ROWS:], y[-TRAIN_ROWS:]
    train = _train_settings(threads, device)
    made: dict[str, Any] = {}

    def fitting(on: str) -> Callable[[Callable[[float], None]], None]:
        def work(done: Callable[[float], None]) -> None:
            made["booster"] = train_booster(X, y, train, names, device=make_device(on))

        return work

    def plain(done: Callable[[float], None]) -> None:
        params = {**booster_params(train), "num_threads": threads}
        lgb.train(params, lgb.Dataset(X, y), num_boost_round=train.num_boost_round)

    cpu = measure(len(X), runs, fitting("cpu")) if device == "gpu" else None
    ours = measure(len(X), runs, fitting(device))
    baseline = measure(len(X), runs, plain)
    text = made["booster"].model_to_string()
    started = time.perf_counter()
    export_onnx(made["booster"], len(names))
    onnx_s = time.perf_counter() - started
    started = time.perf_counter()
    compile_forest(text)
    compile_s = time.perf_counter() - started
    return {
        "fraudpipe": ours,
        "baseline": {"what": "lightgbm.train alone, same parameters", **baseline},
        "ratio_to_baseline": _beside(ours, baseline),
        "export_onnx_s": round(onnx_s, 2),
        "compile_s": round(compile_s, 2),
        "threads": threads,
        "max_bin": train.max_bin,
        **(beside_the_cpu(ours, cpu) if cpu is not None else {}),
    }


def bench_queue(data: Data, runs: int) -> dict[str, Any]:
    from fraudpipe.queue import Topic, make_id

    batch = data.tx.head(5_000)  # the default batch of gather at the default rate
    n_batches = 200
    encoded = io.BytesIO()
    batch.write_parquet(encoded, compression="lz4", statistics=False)
    raw = encoded.getvalue()

    def through_queue(done: Callable[[float], None]) -> None:
        with tempfile.TemporaryDirectory(prefix="fraudpipe-bench-") as tmp:
            topic = Topic(Path(tmp), "bench", _settings({"queue": {"watch": "off"}}).queue)
            for i in range(n_batches):
                t = time.perf_counter()
                topic.publish(make_id(i, "bench", i), batch)
                claim = topic.claim("bench")
                assert claim is not None
                topic.read(claim)
                topic.ack(claim)
                done(time.perf_counter() - t)

    def by_hand(done: Callable[[float], None]) -> None:
        with tempfile.TemporaryDirectory(prefix="fraudpipe-bench-") as tmp:
            root = Path(tmp)
            for state in ("tmp", "pending", "claimed", "done"):
                (root / state).mkdir()
            for i in range(n_batches):
                name = f"{i}.parquet"
                buf = io.BytesIO()
                batch.write_parquet(buf, compression="lz4", statistics=False)
                with open(root / "tmp" / name, "wb") as fh:
                    fh.write(buf.getvalue())
                    fh.flush()
                    os.fsync(fh.fileno())
                os.rename(root / "tmp" / name, root / "pending" / name)
                os.rename(root / "pending" / name, root / "claimed" / name)
                pl.read_parquet(root / "claimed" / name)
                os.rename(root / "claimed" / name, root / "done" / name)

    rows = n_batches * batch.height
    ours = measure(rows, runs, through_queue)
    baseline = measure(rows, runs, by_hand)
    overhead = (
        ours["wall_s"] / baseline["wall_s"] - 1 if baseline["wall_s"] else None
    )  # > 0: the queue's cost beyond the file operations themselves
    return {
        "fraudpipe": ours,
        "baseline": {
            "what": "the same files encoded, written, fsynced, renamed and read by hand",
            **baseline,
        },
        "ratio_to_baseline": _beside(ours, baseline),
        "overhead": round(overhead, 4) if overhead is not None else None,
        "batch_rows": batch.height,
        "file_bytes": len(raw),
    }


def machine() -> dict[str, Any]:
    import lightgbm
    import polars

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor() or None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "polars": polars.__version__,
        "lightgbm": lightgbm.__version__,
    }


def run(
    stages: list[str],
    rows: int,
    runs: int,
    device: str,
    threads: int,
    e2e_seconds: float = 12.0,
    e2e_search: int | None = None,
) -> dict[str, Any]:
    """Every figure of the stages asked for, as one document."""
    from fraudpipe import bench_e2e
    from fraudpipe.devices import require_device
    from fraudpipe.runner import GPU_STAGES

    # the stages each figure runs on the device asked for (e2e: those `run --device` moves)
    needs = {"e2e": GPU_STAGES, **{s: (s,) for s in ("preprocess", "infer", "train")}}
    for stage in stages:
        for name in needs.get(stage, ()):
            require_device(name, device)  # DeviceUnavailable, with what is missing
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "at": dt.datetime.now(dt.UTC).isoformat(),
        "machine": machine(),
        "settings": {
            "rows": rows,
            "runs": runs,
            "device": device,
            "threads": threads,
            "e2e_seconds": e2e_seconds,
        },
        "stages": {},
    }
    data: Data | None = None
    if set(stages) - {"gather", "e2e"}:
        with _step(f"simulating about {rows} transactions"):
            data = make_data(rows)
    for stage in stages:
        with _step(stage):
            if stage == "gather":
                doc["stages"][stage] = bench_gather(rows, runs)
            elif stage == "preprocess":
                assert data is not None
                doc["stages"][stage] = bench_preprocess(data, runs, device, min(rows, PANDAS_ROWS))
            elif stage == "infer":
                assert data is not None
                doc["stages"][stage] = bench_infer(data, runs, threads, device)
            elif stage == "train":
                assert data is not None
                doc["stages"][stage] = bench_train(data, runs, threads, device)
            elif stage == "queue":
                assert data is not None
                doc["stages"][stage] = bench_queue(data, runs)
            elif stage == "e2e":
                doc["stages"][stage] = bench_e2e.bench_e2e(e2e_seconds, e2e_search, device)
    if "e2e" in doc["stages"]:
        e2e = doc["stages"]["e2e"]
        e2e["baseline"] = bench_e2e.ceiling(doc["stages"], doc["machine"]["cpus"] or 1)
        ours, base = e2e["fraudpipe"], e2e["baseline"]
        e2e["ratio_to_baseline"] = _beside(ours, base) if ours and base else None
    return doc
