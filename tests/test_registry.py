"""registry.py: atomic versions, the models/current symlink, promotion history and rollback."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from fraudpipe.config import TrainSettings
from fraudpipe.model import export_onnx, train_booster
from fraudpipe.registry import (
    VERSION_RE,
    AmbiguousVersionError,
    ModelRegistry,
    RegistryError,
    UnknownVersionError,
    UnusableVersionError,
)
from fraudpipe.scoring import (
    SCORERS,
    CompiledScorer,
    OnnxScorer,
    compile_forest,
    compiled_name,
    digest,
)
from tests.conftest import fraudpipe


@pytest.fixture(scope="module")
def model() -> tuple[lgb.Booster, bytes, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)).astype(np.float32)
    y = (X[:, 0] + rng.normal(size=500) > 1.5).astype(np.int8)
    cfg = TrainSettings(num_boost_round=5, num_leaves=4, min_data_in_leaf=10, threads=1)
    booster = train_booster(X, y, cfg, ["a", "b", "c"])
    return booster, export_onnx(booster, 3), X


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models", fsync=False)


def save(registry: ModelRegistry, model: tuple, **manifest: object) -> str:
    booster, onnx_bytes, _ = model
    return registry.save(
        booster, onnx_bytes, {"feature_names": ["a", "b", "c"], "threshold": 0.5, **manifest}
    )


def test_save_writes_a_whole_version(registry: ModelRegistry, model: tuple) -> None:
    booster, _, X = model
    version = save(registry, model, metrics={"average_precision": 0.5})
    assert VERSION_RE.match(version)
    assert sorted(p.name for p in registry.root.iterdir()) == [version]  # no temp dir left
    assert sorted(p.name for p in (registry.root / version).iterdir()) == sorted(
        ["manifest.json", compiled_name(), "model.onnx", "model.txt"]
    )
    manifest = registry.manifest(version)
    assert manifest["version"] == version
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["metrics"] == {"average_precision": 0.5}
    assert set(manifest["compiled"]) == {compiled_name()}
    loaded = registry.load_booster(version)
    np.testing.assert_allclose(loaded.predict(X), booster.predict(X))
    onnx = OnnxScorer(registry.onnx_path(version)).score(X)
    assert np.abs(onnx - booster.predict(X)).max() < 1e-2
    for kind in SCORERS:
        scores = registry.scorer(version, kind).score(X)
        assert np.abs(scores - booster.predict(X)).max() < (1e-2 if kind == "onnx" else 1e-6)
    compiled = registry.scorer(version, "compiled")
    assert isinstance(compiled, CompiledScorer) and compiled.compiled_here_s is None  # loaded


def test_failed_save_leaves_nothing(registry: ModelRegistry, model: tuple) -> None:
    booster, _, _ = model
    with pytest.raises(TypeError):
        registry.save(booster, "not bytes", {})  # type: ignore[arg-type]
    assert registry.versions() == []
    assert list(registry.root.iterdir()) == []


def test_versions_are_unique_and_time_ordered(registry: ModelRegistry, model: tuple) -> None:
    made = [save(registry, model) for _ in range(5)]
    assert len(set(made)) == 5
    assert registry.versions() == made
    (registry.root / ".leftover.tmp").mkdir()  # a crashed save's temp dir is not a version
    assert registry.versions() == made


def test_promote_replaces_current_atomically(registry: ModelRegistry, model: tuple) -> None:
    assert registry.current() is None
    v1, v2 = save(registry, model), save(registry, model)
    registry.promote(v1, "first")
    assert registry.current() == v1
    link = registry.root / "current"
    assert os.readlink(link) == v1  # relative: valid wherever the volume is mounted
    assert (link / "model.onnx").is_file()

    seen: set[str | None] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(registry.current())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        registry.promote(v2 if i % 2 == 0 else v1, "flip")
    done.set()
    reader.join()
    assert seen <= {v1, v2}  # a reader never finds current missing or half-written
    assert registry.current() == v1
    assert [p.name for p in registry.root.iterdir() if p.name.startswith(".")] == []


def test_history_and_rollback(registry: ModelRegistry, model: tuple) -> None:
    v1, v2, v3, v4 = (save(registry, model) for _ in range(4))
    with pytest.raises(RegistryError, match="no model has been promoted"):
        registry.rollback()
    registry.promote(v1, "first model")
    registry.promote(v2, "better")
    registry.promote(v3, "operator says so", forced=True)
    assert registry.rollback("v3 misbehaves") == v2
    assert registry.current() == v2
    registry.promote(v4, "better")
    assert registry.rollback() == v2
    assert registry.rollback() == v1  # repeated rollbacks walk further back
    with pytest.raises(RegistryError, match=f"no version was current before {v1}"):
        registry.rollback()
    assert registry.current() == v1

    history = registry.history()
    assert [(e["event"], e["from"], e["to"]) for e in history] == [
        ("promoted", None, v1),
        ("promoted", v1, v2),
        ("forced", v2, v3),
        ("rolled-back", v3, v2),
        ("promoted", v2, v4),
        ("rolled-back", v4, v2),
        ("rolled-back", v2, v1),
    ]
    assert history[3]["reason"] == "v3 misbehaves"
    assert all(e["at"].endswith("+00:00") for e in history)
    assert len(list(registry.promotions_dir.iterdir())) == len(history)  # one file per event


def test_unknown_versions_are_clear_errors(registry: ModelRegistry, model: tuple) -> None:
    known = save(registry, model)
    for bad in ("20990101T000000.000000Z-abcdef", "../../etc", "current", "promotions"):
        with pytest.raises(UnknownVersionError, match="unknown model version") as err:
            registry.manifest(bad)
        assert known in str(err.value)
        with pytest.raises(LookupError):
            registry.promote(bad, "typo")
    with pytest.raises(UnknownVersionError):
        registry.onnx_path("nope")
    with pytest.raises(UnknownVersionError):
        registry.load_booster("nope")
    assert registry.current() is None
    assert registry.history() == []


def test_empty_registry(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "absent")
    assert registry.versions() == []
    assert registry.current() is None
    assert registry.history() == []


def corrupt(registry: ModelRegistry, version: str, how: str) -> None:
    where = registry.root / version
    if how == "onnx cut short":
        onnx = where / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    elif how == "model.txt gone":
        (where / "model.txt").unlink()
    elif how == "manifest not JSON":
        (where / "manifest.json").write_text("{")
    elif how == "compiled object cut short":
        obj = where / compiled_name()
        obj.write_bytes(obj.read_bytes()[: obj.stat().st_size // 2])
    elif how == "compiled object of another model":
        other = registry.versions()[0]
        assert other != version
        booster = registry.load_booster(other)
        retrained = lgb.train(
            {"objective": "binary", "verbose": -1, "num_leaves": 4, "seed": 9},
            lgb.Dataset(np.eye(3, dtype=np.float32).repeat(50, 0), [0, 1, 1] * 50),
            3,
        )
        assert booster.model_to_string() != retrained.model_to_string()
        (where / compiled_name()).write_bytes(compile_forest(retrained.model_to_string()))
        m = registry.manifest(version)
        recorded = {compiled_name(): {"sha256": digest((where / compiled_name()).read_bytes())}}
        (where / "manifest.json").write_text(json.dumps({**m, "compiled": recorded}))
    elif how == "features disagree":
        m = registry.manifest(version)
        (where / "manifest.json").write_text(json.dumps({**m, "feature_names": ["a", "b"]}))


HOW = [
    "onnx cut short",
    "model.txt gone",
    "manifest not JSON",
    "features disagree",
    "compiled object cut short",
    "compiled object of another model",
]


@pytest.mark.parametrize("how", HOW)
def test_an_unusable_version_is_never_made_current(
    registry: ModelRegistry, model: tuple, how: str
) -> None:
    good, bad = save(registry, model), save(registry, model)
    registry.promote(good, "first")
    corrupt(registry, bad, how)
    with pytest.raises(UnusableVersionError, match=f"model version {bad} cannot score"):
        registry.promote(bad, "operator", forced=True)
    assert registry.current() == good and len(registry.history()) == 1
    assert registry.verify(good)["version"] == good


def test_rollback_refuses_an_unusable_target(registry: ModelRegistry, model: tuple) -> None:
    v1, v2 = save(registry, model), save(registry, model)
    registry.promote(v1, "first")
    registry.promote(v2, "second")
    corrupt(registry, v1, "onnx cut short")
    with pytest.raises(UnusableVersionError):
        registry.rollback()
    assert registry.current() == v2


def test_model_promote_refuses_a_truncated_onnx(tmp_path: Path, model: tuple) -> None:
    registry = ModelRegistry(tmp_path / "models", fsync=False)
    good, bad = save(registry, model), save(registry, model)
    corrupt(registry, bad, "onnx cut short")
    args = ["--data-dir", str(tmp_path)]
    refused = fraudpipe("model", "promote", bad, *args)
    assert refused.returncode == 1 and f"model version {bad} cannot score" in refused.stderr
    assert registry.current() is None
    fraudpipe("model", "promote", good, *args, check=True)
    assert registry.current() == good


def test_a_prefix_or_the_dashboards_short_id_names_a_version(tmp_path: Path, model: tuple) -> None:
    registry = ModelRegistry(tmp_path / "models", fsync=False)
    v1, v2 = save(registry, model), save(registry, model)
    short = v2.rpartition("-")[2]  # what the dashboard shows
    assert registry.resolve(v1) == v1 and registry.resolve(short) == v2
    assert registry.resolve(v1[:-1]) == v1  # a prefix of the whole name
    with pytest.raises(AmbiguousVersionError, match=f"{v1}, {v2}"):
        registry.resolve(v1[:8])  # the same day: both
    with pytest.raises(UnknownVersionError):
        registry.resolve("zzz")
    args = ["--data-dir", str(tmp_path)]
    assert f"current model: {v2}" in fraudpipe("model", "promote", short, *args, check=True).stdout
    assert registry.current() == v2
    assert f'"version": "{v1}"' in fraudpipe("model", "show", v1[:-1], *args, check=True).stdout
    ambiguous = fraudpipe("model", "show", v1[:8], *args)
    assert ambiguous.returncode == 2 and v1 in ambiguous.stderr and v2 in ambiguous.stderr
    assert fraudpipe("model", "promote", "zzz", *args).returncode == 1
    assert registry.current() == v2


def test_model_ls_shows_whole_ids_and_the_comparison_promotion_used(
    tmp_path: Path, model: tuple
) -> None:
    """At 80 columns (a pipe, a narrow terminal) every id is whole and on one line, and each
    row says how the champion of the time scored on that row's own holdout; reasons follow."""
    registry = ModelRegistry(tmp_path / "models", fsync=False)
    first = save(
        registry,
        model,
        metrics={"roc_auc": 0.91, "average_precision": 0.7},
        champion={"version": None, "metrics": None},
        decision="promoted",
        reason="first model: there is no champion yet",
    )
    second = save(
        registry,
        model,
        metrics={"roc_auc": 0.89, "average_precision": 0.66},  # lower, on harder weeks
        champion={"version": first, "metrics": {"average_precision": 0.6123}},
        decision="promoted",
        reason="challenger average precision 0.6600 vs champion 0.6123: the challenger wins",
    )
    registry.promote(second, "trained")
    out = fraudpipe("model", "ls", "--data-dir", str(tmp_path), env={"COLUMNS": "80"}, check=True)
    lines = out.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines[:3]), out.stdout  # the table fits
    one, two = (next(line for line in lines if v in line) for v in (first, second))
    assert one.split() == [first, "0.9100", "0.7000", "none", "promoted"], out.stdout
    assert two.split() == ["*", second, "0.8900", "0.6600", short(first), "0.6123", "promoted"]
    assert f"{short(second)}: challenger average precision 0.6600 vs" in out.stdout


def short(version: str) -> str:
    return version.rpartition("-")[2]
