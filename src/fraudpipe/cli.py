"""The `fraudpipe` command: a thin layer that parses flags and calls the modules."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from fraudpipe.config import STAGES, ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from fraudpipe.model import Trial

app = typer.Typer(
    help="Real-time fraud detection over durable file queues.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
queue_app = typer.Typer(
    help="Inspect topics and dead letters; requeue or purge them.", no_args_is_help=True
)
model_app = typer.Typer(
    help="List, inspect, promote and roll back model versions.", no_args_is_help=True
)
app.add_typer(queue_app, name="queue")
app.add_typer(model_app, name="model")

console = Console()

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Root of the shared volume (data_dir).")
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="YAML configuration file.", dir_okay=False)
]


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)  # plain: never re-wrapped, easy to grep
    raise typer.Exit(code)


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def worker(
    stage: Annotated[str, typer.Option(help="gather | preprocess | train | infer | dashboard")],
    device: Annotated[str, typer.Option(help="cpu | gpu")] = "cpu",
    once: Annotated[
        bool, typer.Option("--once", help="Handle exactly one batch, then exit.")
    ] = False,
    burst: Annotated[
        bool, typer.Option("--burst", help="Drain what is queued, then exit.")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    port: Annotated[int | None, typer.Option(help="Metrics/health port (0: any free).")] = None,
    supervisor_pid: Annotated[
        int | None,
        typer.Option(hidden=True, help="Stop when this parent process is gone (fraudpipe run)."),
    ] = None,
) -> None:
    """Run one stage in this process: what a pod runs, and how to debug one stage."""
    from fraudpipe.devices import DeviceUnavailable
    from fraudpipe.logs import setup
    from fraudpipe.stages import StageError, stage_class
    from fraudpipe.worker import Mode, Worker

    if stage not in (*STAGES, "dashboard"):
        fail(f"--stage must be one of {', '.join(STAGES)}, dashboard; got {stage!r}")
    if device not in ("cpu", "gpu"):
        fail(f"--device must be cpu or gpu; got {device!r}")
    if once and burst:
        fail("--once and --burst exclude each other")
    settings = settings_from(config, data_dir=data_dir, **{"metrics.port": port})
    setup(settings.log.format, settings.log.level)
    if stage == "dashboard":  # a web server, not a queue consumer: it computes nothing
        from fraudpipe.dashboard.server import run_dashboard

        if once or burst:
            fail("the dashboard serves until stopped: --once/--burst do not apply")
        raise typer.Exit(run_dashboard(settings))
    mode = Mode.ONCE if once else Mode.BURST if burst else Mode.FOREVER
    try:
        w = Worker(settings, stage_class(stage), device, mode, supervisor_pid=supervisor_pid)
    except (DeviceUnavailable, StageError) as exc:
        fail(str(exc))
    code = w.run()
    # Stopped: a SIGTERM still to come (one comes for each thread of a dying parent) must not
    # turn this clean exit into a kill when the interpreter puts default handlers back.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise typer.Exit(code)


def _parse_replicas(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in values:
        name, sep, count = item.partition("=")
        # train=0 scores on with the registry's current model and trains none (a frozen model)
        least = 0 if name == "train" else 1
        if not sep or name not in STAGES or not count.isdigit() or int(count) < least:
            fail(
                f"--replicas expects STAGE=N with STAGE in {', '.join(STAGES)} and N >= 1 "
                f"(train=0 allowed: no retraining); got {item!r}"
            )
        out[name] = int(count)
    return out


@app.command()
def run(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after S seconds (and drain).")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Transactions per second to generate.")] = None,
    days: Annotated[
        int | None, typer.Option(help="Stop the stream after N simulated days.")
    ] = None,
    replicas: Annotated[
        list[str] | None,
        typer.Option(
            help="STAGE=N, repeatable: e.g. --replicas preprocess=2 --replicas infer=2 "
            "(train=0: score with the current model, train none)"
        ),
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for queues to drain.")
    ] = 120.0,
    dashboard: Annotated[
        bool, typer.Option(help="Serve the dashboard (its URL and token are printed).")
    ] = True,
    device: Annotated[
        str,
        typer.Option(
            help="cpu, or gpu: preprocess and infer on this machine's GPU (train, gather and "
            "the dashboard stay on the CPU)"
        ),
    ] = "cpu",
) -> None:
    """Run the whole pipeline on this machine: every stage as local processes over one folder.

    Exits 0 when every generated transaction was scored (or on Ctrl-C, which stops at once and
    says what is still queued), 1 when some were not (dead letters, a drain that timed out),
    2 when a stage refused to start or another run holds the data dir."""
    from fraudpipe.runner import RunError, run_pipeline, shortfall

    if device not in ("cpu", "gpu"):
        fail(f"--device must be cpu or gpu; got {device!r}")
    settings = settings_from(
        config, data_dir=data_dir, **{"gather.rate": rate, "gather.days": days}
    )
    try:
        summary = run_pipeline(
            settings,
            _parse_replicas(replicas or []),
            duration,
            drain_timeout,
            console,
            dashboard,
            device,
        )
    except RunError as exc:
        fail(str(exc))
    console.print_json(json.dumps(summary, default=str))
    missing = shortfall(summary)
    if missing and summary["interrupted"]:
        typer.echo(f"stopped: {missing}; run the same command to resume", err=True)
    elif missing:
        fail(missing, 1)


@app.command()
def bench(
    stage: Annotated[
        list[str] | None,
        typer.Option(help="gather, preprocess, infer, train, queue or all; repeatable."),
    ] = None,
    rows: Annotated[
        int, typer.Option(min=10_000, help="About how many transactions to simulate.")
    ] = 500_000,
    runs: Annotated[int, typer.Option(min=1, help="Runs per figure (the median is shown).")] = 3,
    device: Annotated[str, typer.Option(help="cpu or gpu.")] = "cpu",
    threads: Annotated[int, typer.Option(min=1, help="Threads for scoring and training.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write e2e throughput and latency against offered rate (PNG)."),
    ] = None,
    e2e_seconds: Annotated[
        float, typer.Option(min=2.0, help="Seconds measured in each e2e phase.")
    ] = 12.0,
    e2e_search: Annotated[
        int | None,
        typer.Option(min=0, help="e2e search steps after the 10k and 50k phases (default 3)."),
    ] = None,
) -> None:
    """Measure each stage's hot path beside a baseline run in the same process (bench.py),
    and the whole pipeline under load (bench_e2e.py)."""
    from fraudpipe import bench as benchmark
    from fraudpipe import bench_e2e
    from fraudpipe.devices import DeviceUnavailable

    asked = stage or ["all"]
    unknown = [s for s in asked if s not in (*benchmark.STAGES, "all")]
    if unknown:
        fail(f"--stage must be one of {', '.join(benchmark.STAGES)}, all; got {unknown}")
    stages = list(benchmark.STAGES) if "all" in asked else list(dict.fromkeys(asked))
    if plot is not None and "e2e" not in stages:
        fail("--plot draws the e2e phases: add --stage e2e (or all)")
    try:
        doc = benchmark.run(
            stages, rows, runs, device, threads, e2e_seconds=e2e_seconds, e2e_search=e2e_search
        )
        if plot is not None:
            bench_e2e.plot(doc, plot)
    except DeviceUnavailable as exc:
        fail(str(exc))
    except bench_e2e.BenchError as exc:
        fail(str(exc), 1)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    table = Table(title=f"fraudpipe bench ({doc['machine']['cpus']} CPUs, median of {runs})")
    for column in ("stage", "rows/s", "CPU s / M rows", "batch p50 / p99 ms", "peak RSS MB"):
        table.add_column(column)
    table.add_column("baseline rows/s")
    table.add_column("x baseline")
    for name, figures in doc["stages"].items():
        ours, base = figures["fraudpipe"], figures.get("baseline") or {}
        if ours is None:  # e2e with no flat phase
            table.add_row(name, "not flat at any rate tried", *["-"] * 5)
            continue
        latency = ours.get("batch_latency_ms")
        table.add_row(
            name,
            f"{ours['rows_per_s']:,.0f}",
            f"{ours['cpu_s_per_million_rows']:.3f}",
            f"{latency['p50']:.1f} / {latency['p99']:.1f}" if latency else "-",
            f"{ours['peak_rss_mb']:.0f}",
            f"{base['rows_per_s']:,.0f}" if base.get("rows_per_s") else "-",
            f"{figures['ratio_to_baseline']}" if figures.get("ratio_to_baseline") else "-",
        )
    console.print(table)
    if "e2e" in doc["stages"]:
        e2e = doc["stages"]["e2e"]
        at = ", ".join(
            f"at {int(r):,} tx/s p50/p99 {ms['p50']:.0f}/{ms['p99']:.0f} ms"
            + ("" if a["flat"] else " (not flat)")
            for r, a in e2e["latency_at"].items()
            if (ms := a["latency_ms"])
        )
        flat = e2e["highest_flat_rate"]
        console.print(
            f"e2e: highest flat rate tried {flat:,.0f} tx/s; {at}" if flat else f"e2e: {at}"
        )
    console.print("Baselines and every other figure: fraudpipe bench --json")


@app.command()
def check(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for end-to-end flow.")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Wait until transactions generated from now on are scored (exit 0), or say what stands
    still (exit 1). Only reads the data dir: it is what `helm test` runs."""
    from fraudpipe.check import wait_for_flow

    settings = settings_from(config, data_dir=data_dir)

    def waiting(elapsed: float, problems: list[str]) -> None:
        typer.echo(f"waiting {elapsed:.0f}s: " + ("; ".join(problems) or "no fresh scores yet"))

    report = wait_for_flow(settings, timeout, on_wait=None if as_json else waiting)
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    elif report.ok:
        typer.echo(
            f"flow ok after {report.waited_s}s: batch {report.batch} scored {report.rows} "
            f"fresh transaction(s) with model {report.model_version}, "
            f"median latency {report.latency_ms_p50} ms"
        )
    else:
        typer.echo(f"no end-to-end flow within {timeout:.0f}s:", err=True)
        for problem in report.problems or ["every stage is alive, yet nothing new was scored"]:
            typer.echo(f"  - {problem}", err=True)
    raise typer.Exit(0 if report.ok else 1)


@app.command("config")
def show_config(config: ConfigFile = None, data_dir: DataDir = None) -> None:
    """Print the effective configuration (every field, after all sources) as YAML."""
    settings = settings_from(config, data_dir=data_dir)
    console.print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")


# -- offline: fraudpipe features / train / score (logic in offline.py) -----------------------

_DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]

TUNE_TRIALS = 10  # candidates --tune tries unless --tune-trials says otherwise
Tune = Annotated[
    bool,
    typer.Option(
        "--tune",
        help="First search LightGBM parameters on the validation days (train.valid_days), "
        "then refit the best.",
    ),
]
TuneTrials = Annotated[
    int | None,
    typer.Option(
        "--tune-trials",
        min=1,
        max=100,
        help=f"Candidates --tune tries (implies --tune; default {TUNE_TRIALS}): the "
        "configured parameters, then a seeded sample of model.TUNING_SPACE.",
    ),
]


def _tune_trials(tune: bool, tune_trials: int | None) -> int | None:
    """How many candidates to try, or None for no search."""
    if tune_trials is not None:
        return tune_trials
    return TUNE_TRIALS if tune else None


def _trials_table(tuning: dict[str, Any]) -> Table:
    """Every trial of a search: its parameters, validation AP and best iteration."""
    names = list(tuning["chosen"])
    table = Table(
        "", "trial", *names, "valid AP", "best iteration", title="parameter search (--tune)"
    )
    for i, trial in enumerate(tuning["trials"], start=1):
        params = trial["params"]
        table.add_row(
            "*" if params == tuning["chosen"] else "",
            str(i),
            *(f"{params[n]:g}" for n in names),
            f"{trial['valid_average_precision']:.4f}",
            str(trial["best_iteration"]),
        )
    return table


@app.command("features")
def offline_features(
    input_path: Annotated[
        Path, typer.Option("--input", help="Transactions, Parquet or CSV (ours or handbook names).")
    ],
    output: Annotated[Path, typer.Option("--output", help="Features Parquet file to write.")],
    label_delay_days: Annotated[
        float | None, typer.Option(help="Days until a label arrives (gather.label_delay_days).")
    ] = None,
    config: ConfigFile = None,
) -> None:
    """Compute the stream's features over a whole file (also to backfill a history).

    Writes the transaction columns, every feature, is_fraud and label_ts: what `fraudpipe
    train` reads. The features equal, to the bit, what preprocess computes when the same file
    is replayed.
    """
    from fraudpipe.offline import OfflineError, build_features

    settings = settings_from(config, **{"gather.label_delay_days": label_delay_days})
    try:
        s = build_features(input_path, output, settings, console)
    except OfflineError as exc:
        fail(str(exc))
    console.print(
        f"wrote {s.rows} rows ({s.frauds} frauds, {s.first_ts} .. {s.last_ts}) with "
        f"{len(s.feature_names)} features to {s.output}"
    )


@app.command("train")
def offline_train(
    features: Annotated[Path, typer.Option("--features", help="Features file (`features`).")],
    train_start: Annotated[
        dt.datetime, typer.Option(formats=_DATE_FORMATS, help="First day (UTC) of the window.")
    ],
    train_end: Annotated[
        dt.datetime, typer.Option(formats=_DATE_FORMATS, help="End of the window (excluded).")
    ],
    labels: Annotated[
        Path | None, typer.Option(help="transaction_id,is_fraud[,label_ts] file (Parquet/CSV).")
    ] = None,
    holdout_days: Annotated[
        int | None, typer.Option(help="Newest days held out (train.holdout_days).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the model to this directory, not the registry.")
    ] = None,
    promote: Annotated[
        bool, typer.Option("--promote", help="Make it the registry's current model.")
    ] = False,
    tune: Tune = False,
    tune_trials: TuneTrials = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Train a model on a time window of a features file, as the train stage trains."""
    from fraudpipe.offline import OfflineError, train_model

    if output is not None and data_dir is not None:
        fail("--output and --data-dir exclude each other: a directory, or the registry")
    settings = settings_from(config, data_dir=data_dir, **{"train.holdout_days": holdout_days})
    try:
        s = train_model(
            features,
            settings,
            train_start,
            train_end,
            labels_path=labels,
            output=output,
            promote=promote,
            tune_trials=_tune_trials(tune, tune_trials),
            console=Console(stderr=True),
        )
    except OfflineError as exc:
        fail(str(exc))
    if s.tuning is not None:
        console.print(_trials_table(s.tuning))
    m = s.metrics
    console.print(
        f"model {s.version} in {s.where}: {s.train['n']} training rows, holdout {s.holdout['n']} "
        f"rows: AUC {m['roc_auc']:.4f}, AP {m['average_precision']:.4f}, "
        f"threshold {m['threshold']:.4f}"
    )
    if s.promoted:
        console.print(f"current model: {s.version}")
    console.print(s.reason)


@app.command("score")
def offline_score(
    model: Annotated[
        str, typer.Option(help="Model directory, or a version (or 'current') of --data-dir.")
    ],
    input_path: Annotated[Path, typer.Option("--input", help="Features file to score.")],
    output: Annotated[Path, typer.Option(help="Results Parquet file (schema RESULTS).")],
    threshold: Annotated[
        float | None, typer.Option(help="Alert threshold (default: the model's).")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Score a features file as infer does: scores, alerts and their reason codes."""
    from fraudpipe.offline import OfflineError, score_file

    settings = settings_from(config, data_dir=data_dir, **{"infer.threshold": threshold})
    try:
        s = score_file(model, input_path, output, settings, console)
    except OfflineError as exc:
        fail(str(exc))
    console.print(
        f"scored {s.rows} rows with model {s.model_version}: {s.alerts} alerts at threshold "
        f"{s.threshold:.4f}; wrote {s.output}"
    )


# -- fraudpipe simulate / evaluate: the handbook's protocol (logic in evaluate.py) --------------


@app.command("simulate")
def simulate_file(
    output: Annotated[
        Path, typer.Option("--output", help="File to write: .parquet or .csv (by suffix).")
    ],
    days: Annotated[int, typer.Option(min=1, help="Simulated days from the start date.")] = 183,
    config: ConfigFile = None,
) -> None:
    """Write the simulator's transactions (gather.simulator settings) to a file.

    Our columns: transaction_id, ts, customer_id, terminal_id, amount, is_fraud,
    fraud_scenario. The same settings give the same file: `fraudpipe evaluate --input` it.
    """
    import polars as pl
    from rich.progress import Progress

    from fraudpipe.simulate import Simulator

    suffix = output.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        fail(f"--output {output}: the suffix must be .parquet, .pq or .csv")
    if not output.parent.is_dir():
        fail(f"--output {output}: no directory {output.parent}")
    settings = settings_from(config)
    sim = Simulator(settings.gather.simulator, settings.gather.label_delay_days)
    frames = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("simulating days", total=days)
        for d in range(days):
            frames.append(sim.day(d).drop("label_ts"))
            progress.advance(task)
    data = pl.concat(frames)
    if suffix == ".csv":
        data.write_csv(output)
    else:
        data.write_parquet(output)
    console.print(
        f"wrote {data.height:,} transactions ({int(data['is_fraud'].sum()):,} frauds) over "
        f"{days} days from {sim.start_date} to {output}"
    )


@app.command("evaluate")
def evaluate_file(
    input_path: Annotated[
        Path,
        typer.Option(
            "--input", help="Transactions, Parquet or CSV (our or the handbook's column names)."
        ),
    ],
    train_start: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="First training day (default: 2018-07-25 when the data covers the window, "
            "else the latest start that fits).",
        ),
    ] = None,
    train_days: Annotated[
        int,
        typer.Option(min=1, help="The training week: it decides which cards the test leaves out."),
    ] = 7,
    fit_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Days the model fits on, up to the training week's end (default: the config's "
            "train.train_days, 14, as the train stage fits; the handbook's models fit on the "
            "training week, 7). The test days stay the protocol's.",
        ),
    ] = None,
    gap_days: Annotated[
        int, typer.Option(min=0, help="Days between train and test; labels arrive this late.")
    ] = 7,
    test_days: Annotated[int, typer.Option(min=1)] = 7,
    folds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Successive windows, each test_days after the one before (the handbook's "
            "prequential protocol: 4); prints each, and the mean ± std over them.",
        ),
    ] = 1,
    tune: Tune = False,
    tune_trials: TuneTrials = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    config: ConfigFile = None,
) -> None:
    """Run the fraud handbook's evaluation protocol on a labeled transactions file and compare
    with its published results (features and model as the pipeline's, from the config).

    On data with the simulator's truth (fraud_scenario, or the handbook's TX_FRAUD_SCENARIO)
    it also prints the ceilings no model can pass: ROC AUC and average precision with the
    frauds no arrived label can reveal ranked at chance."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from fraudpipe import evaluate as ev

    settings = settings_from(config)
    err = Console(stderr=True)
    try:
        with err.status(f"reading {input_path}"):
            data = ev.load(input_path, gap_days)
        window = ev.choose_window(
            *ev.data_days(data),
            train_start=None if train_start is None else train_start.date(),
            train_days=train_days,
            gap_days=gap_days,
            test_days=test_days,
            folds=folds,
            fit_days=settings.train.train_days if fit_days is None else fit_days,
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("starting", total=None)
            trials = _tune_trials(tune, tune_trials)
            search = progress.add_task("tuning", total=trials, visible=False)

            def step(what: str) -> None:
                progress.update(task, description=what, completed=0, total=None)

            def rounds(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            def on_trial(done: list[Trial], total: int) -> None:
                best = max(t.average_precision for t in done)
                progress.update(
                    search,
                    visible=True,
                    completed=len(done),
                    description=f"tuning: best validation AP {best:.4f}",
                )

            result = ev.evaluate_folds(
                data,
                ev.fold_windows(window, folds),
                settings.features,
                settings.train,
                tune_trials=trials,
                step=step,
                progress=rounds,
                on_trial=on_trial,
            )
    except ev.EvaluationError as exc:
        fail(str(exc))
    if folds > 1:
        if as_json:
            typer.echo(json.dumps(result.as_dict()))
            return
        console.print(ev.folds_table(result))
        return
    (only,) = result.folds
    if as_json:
        typer.echo(json.dumps(only.as_dict()))
        return
    console.print(ev.table(only))
    if "tuning" in only.info["train"]:
        console.print(_trials_table(only.info["train"]["tuning"]))


# -- fraudpipe queue ---------------------------------------------------------------------------


def _queue(config: Path | None, data_dir: Path | None) -> Any:
    from fraudpipe.layout import Layout
    from fraudpipe.queue import Queue

    s = settings_from(config, data_dir=data_dir)
    if not Layout(s.data_dir).queue.is_dir():
        fail(f"no queue under {s.data_dir} (is --data-dir right?)", 1)
    return Queue(Layout(s.data_dir).queue, s.queue)


def _topic(q: Any, name: str) -> Any:
    if name not in q.existing():
        fail(f"no topic {name!r}; topics: {', '.join(q.existing()) or '(none)'}", 1)
    return q.topic(name)


@queue_app.command("stats")
def queue_stats(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Messages per topic: pending, claimed (and expired claims), done, dead."""
    q = _queue(config, data_dir)
    rows = [q.topic(t).stats().as_dict() for t in q.existing()]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("topic", "pending", "claimed", "expired", "done", "dead")
    for r in rows:
        table.add_row(
            r["topic"], *(str(r[k]) for k in ("pending", "claimed", "expired", "done", "dead"))
        )
    console.print(table)


@queue_app.command("ls")
def queue_ls(
    topic: Annotated[str, typer.Argument(help="Topic name, e.g. raw-transactions.")],
    state: Annotated[str, typer.Option(help="pending | claimed | dead")] = "dead",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """List the messages of a topic in one state (dead letters by default, with reasons)."""
    t = _topic(_queue(config, data_dir), topic)
    # Plain lines (no table): reasons are long and people grep them.
    if state == "dead":
        dls = t.dead_letters()
        typer.echo(f"# {topic}: {len(dls)} dead letter(s): id, attempts, reason")
        for dl in dls:
            attempts = dl.reason.get("attempts", dl.attempt + 1)
            typer.echo(f"{dl.id}\t{attempts}\t{dl.reason.get('reason')}")
    elif state in ("pending", "claimed"):
        msgs = t.pending() if state == "pending" else t.claims()
        typer.echo(f"# {topic}: {len(msgs)} {state}: id, attempt, consumer")
        for m in msgs:
            typer.echo(f"{m.id}\t{m.attempt}\t{getattr(m, 'consumer', '')}")
    else:
        fail(f"--state must be pending, claimed or dead; got {state!r}")


@queue_app.command("inspect")
def queue_inspect(
    topic: str,
    msg_id: Annotated[str, typer.Argument(metavar="ID")],
    rows: Annotated[int, typer.Option(help="Rows to show.")] = 5,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Show one message: where it is, its reason if dead, its schema and first rows."""
    import polars as pl

    t = _topic(_queue(config, data_dir), topic)
    found = [m for m in t.pending() + t.claims() if m.id == msg_id]
    try:
        dl = t.find_dead(msg_id)
        path, info = dl.path, {"state": "dead", **dl.reason}
    except KeyError:
        if not found:
            fail(f"no message {msg_id!r} pending, claimed or dead in {topic!r}", 1)
        path, info = (
            found[0].path,
            {
                "state": "claimed" if hasattr(found[0], "consumer") else "pending",
                "attempt": found[0].attempt,
            },
        )
    console.print_json(
        json.dumps({"topic": topic, "id": msg_id, "path": str(path), **info}, default=str)
    )
    try:
        df = pl.read_parquet(path)
    except Exception as exc:
        console.print(f"(content unreadable: {exc})")
        return
    console.print(f"{df.height} rows; schema: {dict(df.schema)}")
    console.print(df.head(rows))


def _dead_ids(t: Any, msg_id: str | None, all_: bool, *, messages_only: bool = False) -> list[str]:
    """The dead letters named (ID, or --all: every one, perhaps none; messages_only: not the
    foreign files, which can only be purged)."""
    if all_:
        return [d.id for d in t.dead_letters() if not (messages_only and d.foreign)]
    if not msg_id:
        fail("name an ID or pass --all")
    return [msg_id]


def _each(ids: list[str], action: Any) -> None:
    for i in ids:
        try:
            action(i)
        except (KeyError, ValueError) as exc:
            fail(str(exc).strip("'\""), 1)


@queue_app.command("requeue")
def queue_requeue(
    topic: str,
    msg_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter of the topic.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Send dead letters back to pending (after fixing what killed them)."""
    t = _topic(_queue(config, data_dir), topic)
    ids = _dead_ids(t, msg_id, all_, messages_only=True)
    if not ids:
        console.print(f"no dead letters in {topic}: nothing to requeue")
        return
    _each(ids, t.requeue)
    console.print(f"requeued {len(ids)} message(s) in {topic}")


@queue_app.command("purge")
def queue_purge(
    topic: str,
    msg_id: Annotated[str | None, typer.Argument(metavar="[ID]")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter of the topic.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Delete dead letters for good."""
    t = _topic(_queue(config, data_dir), topic)
    ids = _dead_ids(t, msg_id, all_)
    if not ids:
        console.print(f"no dead letters in {topic}: nothing to purge")
        return
    if not yes and not typer.confirm(f"delete {len(ids)} dead letter(s) of {topic}?"):
        raise typer.Exit(1)
    _each(ids, t.purge)
    console.print(f"purged {len(ids)} dead letter(s) from {topic}")


# -- fraudpipe model ---------------------------------------------------------------------------


def _registry(config: Path | None, data_dir: Path | None) -> Any:
    from fraudpipe.layout import Layout
    from fraudpipe.registry import ModelRegistry

    return ModelRegistry(Layout(settings_from(config, data_dir=data_dir).data_dir).models)


def _metric(metrics: dict[str, Any] | None, key: str) -> str:
    value = (metrics or {}).get(key)
    return "unknown" if value is None else f"{value:.4f}"


def _compared(manifest: dict[str, Any]) -> str:
    """The champion's average precision on this version's holdout: what promotion compared."""
    from fraudpipe.registry import short_id

    champion = manifest.get("champion") or {}
    if not champion.get("version"):
        return "none"
    if not champion.get("metrics"):
        return f"{short_id(champion['version'])} not compared"
    return f"{short_id(champion['version'])} {_metric(champion['metrics'], 'average_precision')}"


def _resolve(reg: Any, ref: str) -> str:
    """The version a full name or unique prefix names (the dashboard's short id too); an
    ambiguous one exits 2 naming the candidates, an unknown one exits 1."""
    from fraudpipe.registry import AmbiguousVersionError, RegistryError

    try:
        version: str = reg.resolve(ref)
    except AmbiguousVersionError as exc:
        fail(str(exc), 2)
    except RegistryError as exc:
        fail(str(exc), 1)
    return version


@model_app.command("ls")
def model_ls(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Every model version (* the current one, s the one in shadow) with its holdout metrics
    and the promotion decision, then each decision's reason.

    A version's id begins with the UTC time it was created; its last six characters are the
    short id the dashboard shows. AUC and AP are each version's own holdout; "champion AP" is
    the champion of the time on that same holdout, the comparison the decision used (two
    rows' own figures come from different weeks and do not compare).
    """
    from fraudpipe.registry import short_id

    reg = _registry(config, data_dir)
    current, shadow = reg.current(), reg.shadow()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("", "version", "AUC", "AP", "champion AP", "decision"):
        table.add_column(name, no_wrap=True)  # whole ids at any width: reasons wrap below
    reasons = []
    for v in reg.versions():
        m = reg.manifest(v)
        table.add_row(
            "*" if v == current else "s" if v == shadow else "",
            v,
            _metric(m.get("metrics"), "roc_auc"),
            _metric(m.get("metrics"), "average_precision"),
            _compared(m),
            str(m.get("decision", "")),
        )
        reasons.append(f"{short_id(v)}: {m.get('reason', 'no reason recorded')}")
    console.print(table)
    if current is None:
        console.print("no model promoted yet")
    if reasons:
        console.print("\nwhy each was decided:")
        for line in reasons:
            console.print(line, highlight=False)


@model_app.command("show")
def model_show(
    version: Annotated[
        str | None, typer.Argument(help="A version, a unique prefix, or its short id.")
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """A version's manifest (the current one by default)."""
    from fraudpipe.registry import RegistryError

    reg = _registry(config, data_dir)
    version = _resolve(reg, version) if version else reg.current()
    if version is None:
        fail("no model promoted yet; `fraudpipe model ls` lists versions", 1)
    try:
        console.print_json(json.dumps(reg.manifest(version), default=str))
    except RegistryError as exc:
        fail(str(exc), 1)


@model_app.command("promote")
def model_promote(
    version: str,
    reason: Annotated[str, typer.Option()] = "promoted by operator",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Make VERSION current (infer picks it up between batches); a unique prefix or the
    dashboard's short id names it too."""
    from fraudpipe.registry import RegistryError

    reg = _registry(config, data_dir)
    version = _resolve(reg, version)
    try:
        reg.promote(version, reason)
    except RegistryError as exc:
        fail(str(exc), 1)
    console.print(f"current model: {version}")


@model_app.command("shadow")
def model_shadow(
    version: Annotated[
        str | None,
        typer.Argument(help="A version, a unique prefix, or its short id; none: show it."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Score with no shadow.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Score VERSION in shadow beside the current model (models/shadow): infer adds its score
    to every result and alerts on nothing with it; the dashboard shows its live figures beside
    the champion's on the same rows. Promoting it ends its shadow."""
    from fraudpipe.registry import RegistryError

    reg = _registry(config, data_dir)
    if clear and version is not None:
        fail("give a VERSION or --clear, not both")
    try:
        if clear:
            reg.set_shadow(None)
        elif version is not None:
            reg.set_shadow(_resolve(reg, version))
    except RegistryError as exc:
        fail(str(exc), 1)
    shadow = reg.shadow()
    console.print(f"shadow model: {shadow}" if shadow else "no model in shadow")


@model_app.command("rollback")
def model_rollback(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Return to the version that was current before this one."""
    from fraudpipe.registry import RegistryError

    try:
        version = _registry(config, data_dir).rollback()
    except RegistryError as exc:
        fail(str(exc), 1)
    console.print(f"current model: {version}")


def main() -> None:
    try:
        app()
    except ConfigError as exc:  # raised past a command (should not happen, but never a trace)
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
