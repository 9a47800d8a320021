"""Scorers: one interface, ``score(X) -> float32[N]``, over the forms a model version is kept in.

- ``compiled`` (the default): the forest compiled to native code by lleaves (LLVM), in float64
  like LightGBM itself: the same scores as ``Booster.predict`` to ~1e-15, several times faster
  than either onnxruntime or LightGBM (docs/performance.md). train compiles it when it saves a
  version (``compile_forest``), for a generic CPU of its machine's architecture, and the
  registry keeps it beside model.txt, so infer only loads it; a version without one for this
  architecture is compiled when infer loads it (between batches, once, and logged).
- ``arrays``: the forest as flat node arrays walked by the device's array namespace (forest.py):
  cupy on ``--device=gpu``, where it is the default; numpy on the host, where it is exact but
  slow, and serves to prove the walk in CI.
- ``onnx``: the ONNX export on onnxruntime's CPU provider (float32 thresholds: within ~1e-6).
- ``lightgbm``: the booster's own predict, the reference every scorer is tested against.

``auto`` (the default of ``infer.scorer``) is ``compiled`` on the CPU and ``arrays`` on the GPU.

Scores are probabilities of fraud. Anything that scores rows for the pipeline (infer, `fraudpipe
score`, drift, train's holdout) opens its scorer here.
"""

from __future__ import annotations

import hashlib
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol, Self, get_args

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from fraudpipe.config import ScorerKind
from fraudpipe.devices import CPU, Device
from fraudpipe.forest import ArrayForestScorer

SCORERS: tuple[ScorerKind, ...] = tuple(k for k in get_args(ScorerKind) if k != "auto")
MODEL_FILE = "model.txt"  # the forms a model version is kept in (registry.py)
ONNX_FILE = "model.onnx"
# A generic CPU of the architecture: the object runs on every node of it, whichever trained
# it (tree walks gain nothing measurable from wider vector units: docs/performance.md).
TARGET_CPU = "generic"


class ModelLoadError(Exception):
    """A model file cannot be loaded; the message names it and says why."""


class Scorer(Protocol):
    n_features: int

    def score(self, X: np.ndarray) -> npt.NDArray[np.float32]:
        """Probability of fraud for every row of X (float32, shape [N])."""
        ...


def _rows(X: np.ndarray, n_features: int, dtype: type[np.floating[Any]]) -> np.ndarray:
    rows = np.ascontiguousarray(X, dtype=dtype)
    if rows.ndim != 2 or rows.shape[1] != n_features:
        raise ValueError(f"expected rows of {n_features} features, got shape {X.shape}")
    return rows


class OnnxScorer:
    """Scores rows with an exported model on onnxruntime's CPU provider."""

    def __init__(self, path_or_bytes: str | Path | bytes, threads: int = 1) -> None:
        """Load a model from a file or from bytes; threads=0 lets onnxruntime choose."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        try:
            self._session = ort.InferenceSession(
                source, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            where = "bytes" if isinstance(source, bytes) else source
            raise ModelLoadError(f"cannot load ONNX model from {where}: {exc}") from exc
        model_input = self._session.get_inputs()[0]
        self._input = model_input.name
        self.n_features: int = model_input.shape[1]
        names = [o.name for o in self._session.get_outputs()]
        self._output = "probabilities" if "probabilities" in names else names[-1]

    def score(self, X: np.ndarray) -> npt.NDArray[np.float32]:
        rows = _rows(X, self.n_features, np.float32)
        if rows.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        probabilities = self._session.run([self._output], {self._input: rows})[0]
        return np.ascontiguousarray(probabilities[:, 1], dtype=np.float32)


class BoosterScorer:
    """LightGBM's own predict: the reference."""

    def __init__(self, booster: lgb.Booster, threads: int = 1) -> None:
        self.booster = booster
        self.n_features: int = booster.num_feature()
        self.threads = threads

    def score(self, X: np.ndarray) -> npt.NDArray[np.float32]:
        rows = _rows(X, self.n_features, np.float64)
        if rows.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        return np.asarray(self.booster.predict(rows, num_threads=self.threads), np.float32)


class CompiledScorer:
    """The forest as native code (lleaves), loaded from its compiled object; compiled_here_s:
    the seconds it took to compile here, when there was no object to load."""

    def __init__(self, model_file: Path, compiled: Path, threads: int = 1) -> None:
        import lleaves

        try:
            self._model = lleaves.Model(model_file=str(model_file))
            self._model.compile(cache=str(compiled), target_cpu=TARGET_CPU)
        except Exception as exc:  # lleaves and LLVM raise their own kinds
            raise ModelLoadError(f"cannot load compiled model {compiled}: {exc}") from exc
        self.n_features: int = self._model.num_feature()
        self.threads = threads
        self.compiled_here_s: float | None = None

    @classmethod
    def open(cls, model_file: Path, compiled: Path, sha256: str | None, threads: int) -> Self:
        """From the version's object when present and whole (sha256 as its manifest records
        it), else compiled here from model_file; ModelLoadError when neither can be."""
        if compiled.is_file():
            if sha256 is not None and digest(compiled.read_bytes()) != sha256:
                raise ModelLoadError(f"{compiled} does not match the sha256 its manifest records")
            return cls(model_file, compiled, threads)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="fraudpipe-compile-") as tmp:
            obj = Path(tmp) / compiled.name
            try:
                obj.write_bytes(compile_forest(model_file.read_text()))
            except Exception as exc:
                raise ModelLoadError(f"cannot compile {model_file}: {exc}") from exc
            scorer = cls(model_file, obj, threads)
        scorer.compiled_here_s = time.perf_counter() - started
        return scorer

    def score(self, X: np.ndarray) -> npt.NDArray[np.float32]:
        rows = _rows(X, self.n_features, np.float64)
        if rows.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        return np.asarray(self._model.predict(rows, n_jobs=self.threads), np.float32)


def resolve(kind: ScorerKind, device: Device) -> ScorerKind:
    """The scorer kind that ``auto`` stands for on that device (any other kind is itself)."""
    if kind != "auto":
        return kind
    return "arrays" if device.kind == "gpu" else "compiled"


def open_scorer(
    kind: ScorerKind,
    directory: Path,
    manifest: dict[str, Any],
    threads: int = 1,
    device: Device = CPU,
) -> Scorer:
    """The scorer of that kind for the model kept in directory (a registry version, or what
    ``fraudpipe train --output`` wrote), on that device; ModelLoadError when it cannot load.
    Without a compiled object for this architecture, the forest is compiled here (seconds)."""
    kind = resolve(kind, device)
    if kind == "onnx":
        return OnnxScorer(directory / ONNX_FILE, threads=threads)
    try:
        booster = lgb.Booster(model_file=str(directory / MODEL_FILE))
    except lgb.basic.LightGBMError as exc:
        raise ModelLoadError(f"cannot load {directory / MODEL_FILE}: {exc}") from exc
    if kind == "lightgbm":
        return BoosterScorer(booster, threads=threads)
    if kind == "arrays":
        try:
            return ArrayForestScorer(booster, device)
        except ValueError as exc:
            raise ModelLoadError(f"cannot walk {directory / MODEL_FILE} as arrays: {exc}") from exc
    recorded = manifest.get("compiled", {}).get(compiled_name(), {})
    compiled = directory / compiled_name()
    return CompiledScorer.open(directory / MODEL_FILE, compiled, recorded.get("sha256"), threads)


def compiled_name() -> str:
    """The compiled object's file name for this machine's architecture."""
    return f"model.{platform.machine()}.o"


def compile_forest(model_text: str) -> bytes:
    """model.txt's forest compiled to a native object for TARGET_CPU, as CompiledScorer loads
    it (seconds: docs/performance.md)."""
    import lleaves

    with tempfile.TemporaryDirectory(prefix="fraudpipe-compile-") as tmp:
        model_file, obj = Path(tmp) / "model.txt", Path(tmp) / "model.o"
        model_file.write_text(model_text)
        lleaves.Model(model_file=str(model_file)).compile(cache=str(obj), target_cpu=TARGET_CPU)
        return obj.read_bytes()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
