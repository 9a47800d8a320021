"""Each stage run by hand, as a person debugging it would: --once, --burst, dead letters."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fraudpipe.config import load_settings
from fraudpipe.layout import FEATURES, RAW, RESULTS
from fraudpipe.registry import ModelRegistry, new_name
from fraudpipe.replay import ReplaySource
from fraudpipe.stages import stage_class
from fraudpipe.worker import BatchStage, Mode, Worker
from tests.conftest import fraudpipe
from tests.pipeline import assert_exactly_once, queue_states, run_stage, small_config


def pending(data: Path, topic: str) -> list[Path]:
    return sorted((data / "queue" / topic / "pending").glob("*.parquet"))


@pytest.fixture(scope="module")
def debugged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """gather --burst, preprocess --once then --burst, train --once, infer --burst."""
    tmp = tmp_path_factory.mktemp("stages")
    cfg, data = small_config(tmp, days=16), tmp / "data"
    run_stage("gather", "--burst", data, cfg)
    raw = pending(data, RAW)
    assert len(raw) > 5
    run_stage("preprocess", "--once", data, cfg)
    assert len(pending(data, RAW)) == len(raw) - 1, "--once handles exactly one batch"
    assert len(pending(data, FEATURES)) == 1
    # Corrupt and schema-mismatched batches among the good ones.
    queue = data / "queue" / RAW / "pending"
    (queue / "0000000000001-bad-00000001~0.parquet").write_bytes(b"PAR1 this is not parquet")
    pl.DataFrame({"transaction_id": [1, 2], "amount": [3.0, 4.0]}).write_parquet(
        queue / "0000000000002-bad-00000002~0.parquet"
    )
    run_stage("preprocess", "--burst", data, cfg)
    assert pending(data, RAW) == [], "--burst drains"
    assert len(pending(data, FEATURES)) == len(raw)
    run_stage("infer", "--burst", data, cfg)
    assert len(pending(data, FEATURES)) == len(raw), "no model yet: features stay queued"
    run_stage("train", "--once", data, cfg)
    assert (data / "models" / "current").exists()
    run_stage("infer", "--burst", data, cfg)
    return data, cfg


def test_once_burst_and_the_first_model_score_everything(debugged: tuple[Path, Path]) -> None:
    data, cfg = debugged
    df = assert_exactly_once(data, cfg)
    assert pending(data, FEATURES) == []
    assert df["model_version"].n_unique() == 1
    assert df["score"].is_between(0, 1).all() and df["is_alert"].any()
    assert (df["latency_ms"] > 0).all()


def test_bad_batches_become_dead_letters_with_reasons(debugged: tuple[Path, Path]) -> None:
    data, cfg = debugged
    states = queue_states(data, cfg)
    assert states[RAW]["dead"] == 2 and states[RAW]["pending"] == 0
    assert states[FEATURES]["dead"] == 0 and states[RESULTS]["dead"] == 0
    listing = fraudpipe(
        "queue", "ls", RAW, "--data-dir", str(data), "--config", str(cfg), check=True
    ).stdout
    assert "cannot read batch 0000000000001-bad-00000001 as Parquet" in listing
    assert "missing column(s)" in listing and "'ts'" in listing
    shown = fraudpipe(
        "queue",
        "inspect",
        RAW,
        "0000000000002-bad-00000002",
        "--data-dir",
        str(data),
        "--config",
        str(cfg),
        check=True,
    ).stdout
    assert '"state": "dead"' in shown and "2 rows" in shown
    stats = fraudpipe(
        "queue", "stats", "--json", "--data-dir", str(data), "--config", str(cfg), check=True
    ).stdout
    assert '"dead": 2' in stats


def test_model_commands(debugged: tuple[Path, Path]) -> None:
    data, _ = debugged
    listing = fraudpipe("model", "ls", "--data-dir", str(data), check=True).stdout
    assert "promoted" in listing and "*" in listing
    shown = fraudpipe("model", "show", "--data-dir", str(data), check=True).stdout
    assert '"feature_names"' in shown
    rb = fraudpipe("model", "rollback", "--data-dir", str(data))
    assert rb.returncode == 1 and "error:" in rb.stderr  # nothing to roll back to


def test_requeue_and_purge(tmp_path: Path) -> None:
    cfg, data = small_config(tmp_path, days=2), tmp_path / "data"
    run_stage("gather", "--burst", data, cfg)
    bad = data / "queue" / RAW / "pending" / "0000000000001-bad-00000001~0.parquet"
    bad.write_bytes(b"junk")
    run_stage("preprocess", "--burst", data, cfg)
    args = ["--data-dir", str(data), "--config", str(cfg)]
    fraudpipe("queue", "requeue", RAW, "0000000000001-bad-00000001", *args, check=True)
    assert bad.exists()
    run_stage("preprocess", "--burst", data, cfg)
    fraudpipe("queue", "purge", RAW, "--all", "--yes", *args, check=True)
    assert queue_states(data, cfg)[RAW]["dead"] == 0
    # --all with nothing dead is no error (it exited 2); naming an id that is not dead is
    for verb, *flags in (("requeue",), ("purge", "--yes")):
        none = fraudpipe("queue", verb, RAW, "--all", *flags, *args)
        assert none.returncode == 0 and f"no dead letters in {RAW}" in none.stdout, none.stderr
        assert fraudpipe("queue", verb, RAW, "0000000000009-x-00000009", *args).returncode == 1


def test_gather_resumes_a_checkpoint_written_before_new_simulator_knobs(tmp_path: Path) -> None:
    """An upgrade adds simulator fields at their defaults: the stream on the volume is the
    same one, so gather must resume it; a changed knob is another stream and is refused."""
    cfg, data = small_config(tmp_path, days=4), tmp_path / "data"
    run_stage("gather", "--once", data, cfg)
    path = data / "state" / "gather" / "checkpoint.json"
    ck = json.loads(path.read_text())
    sim = load_settings(cfg).gather.simulator.model_dump(mode="json")
    older = {
        k: v for k, v in sim.items() if k not in ("scenarios", "amount_overlap", "label_noise")
    }
    ck["identity"] = {"source": "simulator", **older, "label_delay_days": 7.0}  # spelled out
    path.write_text(json.dumps(ck))
    run_stage("gather", "--once", data, cfg)
    assert json.loads(path.read_text())["seq"] == 2

    noisy = fraudpipe(
        "worker", "--stage=gather", "--once", "--data-dir", str(data), "--config", str(cfg),
        "--port", "0", env={"FRAUDPIPE_GATHER__SIMULATOR__LABEL_NOISE": "0.1"},
    )  # fmt: skip
    assert noisy.returncode == 2 and "holds a stream from another source" in noisy.stderr


def test_preprocess_passes_the_features_bound_only_until_the_first_model(tmp_path: Path) -> None:
    """At a low rate the first model needs more featured days than the features-ready bound
    holds, and infer cannot drain that topic before a model exists: preprocess must not wait
    on the bound then (a deadlock), and must once a model is promoted."""
    cfg, data = small_config(tmp_path, days=16), tmp_path / "data"
    run_stage("gather", "--burst", data, cfg)
    raw = pending(data, RAW)
    run_stage("preprocess", "--burst", data, cfg)
    assert len(pending(data, FEATURES)) == len(raw) > 2

    settings = load_settings(cfg, {"data_dir": data, "queue": {"max_backlog": 2}})
    preprocess = Worker(settings, stage_class("preprocess"), "cpu", Mode.ONCE).stage
    assert isinstance(preprocess, BatchStage) and not preprocess.over_backlog()
    run_stage("train", "--once", data, cfg)
    assert (data / "models" / "current").exists()
    assert preprocess.over_backlog(), "a model exists: preprocess waits at the bound"


def test_gather_builds_only_the_days_that_have_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay may have gaps of years (a stray year-9999 row once made gather build millions
    of empty days, 15 GB): the days between rows are skipped, never built."""
    when = ["2024-01-01 10:00:00", "2024-01-01 11:00:00", "2034-01-01 09:00:00"]
    path = tmp_path / "gap.csv"
    pl.DataFrame(
        {
            "ts": when,
            "customer_id": [1, 2, 1],
            "terminal_id": [5, 5, 6],
            "amount": [10.0, 20.0, 30.0],
            "is_fraud": [0, 1, 0],
        }
    ).write_csv(path)
    built: list[int] = []
    real = ReplaySource.day

    def counting(self: ReplaySource, d: int) -> pl.DataFrame | None:
        built.append(d)
        return real(self, d)

    monkeypatch.setattr(ReplaySource, "day", counting)
    settings = load_settings(
        None,
        {
            "data_dir": tmp_path / "data",
            "gather": {"source": "replay", "replay": {"path": path}, "max_batch_rows": 2},
            "queue": {"fsync": False},
            "metrics": {"port": 0},
        },
    )
    Worker(settings, stage_class("gather"), "cpu", Mode.BURST).run()
    sent = pl.concat(pl.read_parquet(p) for p in pending(tmp_path / "data", RAW))
    assert sent["amount"].to_list() == [10.0, 20.0, 30.0]
    assert set(built) == {0, 3653}, sorted(set(built))


def _point_current(registry: ModelRegistry, version: str) -> None:
    """models/current -> version, as a bad hand-edit would (no check)."""
    link = registry.root / ".current.test"
    os.symlink(version, link)
    os.replace(link, registry.root / "current")


def test_infer_keeps_its_last_good_model_when_current_goes_bad(tmp_path: Path) -> None:
    """models/current pointed at a version that does not exist, or whose ONNX is cut short:
    infer refuses it, names it, and scores on with its last good model (before this, it
    crash-looped); a process with no good model yet waits instead of crashing."""
    cfg, data = small_config(tmp_path, days=16), tmp_path / "data"
    run_stage("gather", "--burst", data, cfg)
    run_stage("preprocess", "--burst", data, cfg)
    run_stage("train", "--once", data, cfg)
    registry = ModelRegistry(data / "models")
    good = registry.current()
    assert good is not None
    truncated = new_name()
    shutil.copytree(registry.root / good, registry.root / truncated)
    onnx = registry.root / truncated / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])

    _point_current(registry, "20991231T000000.000000Z-abcdef")  # no such version
    fresh = fraudpipe(
        "worker", "--stage=infer", "--burst", "--data-dir", str(data), "--config", str(cfg),
        "--port", "0",
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    assert "model.refused" in fresh.stderr and "unknown model version" in fresh.stderr
    assert len(pending(data, FEATURES)) > 3, "no model: the features wait, unscored"

    _point_current(registry, good)
    settings = load_settings(cfg, {"data_dir": data, "metrics": {"port": 0}})
    infer = Worker(settings, stage_class("infer"), "cpu", Mode.ONCE).stage
    assert infer.ready() and infer.version == good  # type: ignore[attr-defined]
    for bad, why in ((truncated, "cannot score"), ("20991231T000000.000000Z-abcdef", "unknown")):
        _point_current(registry, bad)
        assert infer.ready(), "the last good model stands"
        assert infer.version == good  # type: ignore[attr-defined]
        assert infer.refused["version"] == bad and why in infer.refused["reason"]  # type: ignore[attr-defined]
        assert infer.status()["model_refused"]["version"] == bad
        assert infer.step().batches == 1
    scored = pl.concat(pl.read_parquet(p) for p in pending(data, RESULTS))
    assert scored["model_version"].unique().to_list() == [good]
    registry.promote(good, "back")  # current is good again: nothing refused any more
    assert infer.ready() and infer.refused is None  # type: ignore[attr-defined]


def test_gather_counts_the_labels_it_logs_and_publishes_no_label_topic(tmp_path: Path) -> None:
    """Labels travel only in the event log (train reads them there); gather counts each as it
    logs it (fraudpipe_labels_total), checked against the log's own label files."""
    cfg = small_config(tmp_path, days=12)
    settings = load_settings(cfg, {"data_dir": tmp_path / "data", "metrics": {"port": 0}})
    gather = Worker(settings, stage_class("gather"), "cpu", Mode.BURST)
    gather.run()
    logged = pl.concat(pl.read_parquet(p) for p in (tmp_path / "data").glob("state/log/labels/*/*"))
    frauds = int(logged["is_fraud"].sum())
    assert 0 < frauds < logged.height
    sample = gather.metrics.registry.get_sample_value
    assert sample("fraudpipe_labels_total", {"is_fraud": "1"}) == frauds
    assert sample("fraudpipe_labels_total", {"is_fraud": "0"}) == logged.height - frauds
    assert not (tmp_path / "data" / "queue" / "labels").exists()


def test_a_challenger_that_loses_is_scored_in_shadow_beside_the_champion(tmp_path: Path) -> None:
    """A second training on the same days cannot beat the champion: its version goes to
    shadow, infer scores every row with both (the shadow's score as its own booster gives it,
    alerting on nothing), and `model shadow` shows, moves and clears it."""
    cfg, data = small_config(tmp_path, days=16), tmp_path / "data"
    run_stage("gather", "--burst", data, cfg)
    run_stage("preprocess", "--burst", data, cfg)
    run_stage("train", "--once", data, cfg)
    run_stage("train", "--once", data, cfg)
    registry = ModelRegistry(data / "models")
    champion, challenger = registry.current(), registry.versions()[-1]
    assert champion is not None and challenger != champion
    assert registry.shadow() == challenger
    args = ["--data-dir", str(data), "--config", str(cfg)]
    listing = fraudpipe("model", "ls", *args, env={"COLUMNS": "200"}, check=True).stdout
    assert any(line.split()[:2] == ["s", challenger] for line in listing.splitlines())

    features = pl.concat(pl.read_parquet(p) for p in pending(data, FEATURES))
    run_stage("infer", "--burst", data, cfg)
    scored = pl.concat(pl.read_parquet(p) for p in pending(data, RESULTS))
    assert scored["shadow_version"].unique().to_list() == [challenger]
    rows = features.join(
        scored.select("transaction_id", "shadow_score", "score"), on="transaction_id"
    )
    names = registry.manifest(challenger)["feature_names"]
    X = rows.select(names).to_numpy().astype(np.float32)
    expected = registry.load_booster(challenger).predict(X)
    np.testing.assert_allclose(rows["shadow_score"].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert rows.height == features.height

    assert "no model in shadow" in fraudpipe("model", "shadow", "--clear", *args, check=True).stdout
    assert registry.shadow() is None
    short = challenger.rpartition("-")[2]
    moved = fraudpipe("model", "shadow", short, *args, check=True).stdout
    assert f"shadow model: {challenger}" in moved and registry.shadow() == challenger
    refused = fraudpipe("model", "shadow", champion, *args)
    assert refused.returncode == 1 and "is the current version" in refused.stderr
    fraudpipe("model", "promote", short, *args, check=True)  # promoted: no longer in shadow
    assert registry.current() == challenger and registry.shadow() is None
