"""Model versions on the shared volume (DESIGN.md section 5).

    models/<version>/model.txt       LightGBM model
    models/<version>/model.onnx      its ONNX export (infer.scorer onnx)
    models/<version>/model.<arch>.o  its forest compiled to native code (infer.scorer compiled,
                                     the default; scoring.py), sha256 in the manifest
    models/<version>/manifest.json   features, training window, metrics, decision
    models/current -> <version>      relative symlink, replaced atomically
    models/shadow -> <version>       optional: a challenger infer scores beside current, whose
                                     scores are kept for comparison and never alert
    models/promotions/<at>-<id>.json one file per promotion, rollback or forced promotion

Version names are a UTC timestamp (microseconds) plus a random suffix: unique without a shared
counter, and their name order is their creation order. A version is written into a hidden
temporary directory and renamed in whole, so readers never see a partial version.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np

from fraudpipe import durable
from fraudpipe.config import ScorerKind
from fraudpipe.devices import CPU, Device
from fraudpipe.logs import bounded
from fraudpipe.scoring import (
    MODEL_FILE,
    ONNX_FILE,
    OnnxScorer,
    Scorer,
    compile_forest,
    compiled_name,
    digest,
    open_scorer,
)

VERSION_RE = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{6}$")
MANIFEST_FILE = "manifest.json"
CURRENT = "current"
SHADOW = "shadow"
PROMOTIONS = "promotions"

Event = Literal["promoted", "forced", "rolled-back"]


class RegistryError(Exception):
    """A registry request cannot be served; the message says why."""


class UnknownVersionError(RegistryError, LookupError):
    """No model version of that name exists."""


class AmbiguousVersionError(RegistryError, LookupError):
    """A short id that more than one version starts with."""


class UnusableVersionError(RegistryError):
    """A version that exists but cannot score: a file missing, cut short, or inconsistent."""


def _stamp(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def short_id(version: str) -> str:
    """A version's random suffix, the short id the dashboard shows ("97cdbf")."""
    return version.rpartition("-")[2]


def new_name() -> str:
    """A unique, time-ordered name: UTC timestamp + random suffix."""
    return f"{_stamp(dt.datetime.now(dt.UTC))}-{secrets.token_hex(3)}"


class ModelRegistry:
    """Stores, lists and promotes model versions under one models/ directory."""

    def __init__(self, models_dir: Path, *, fsync: bool = True) -> None:
        self.root = Path(models_dir)
        self.fsync = fsync

    @property
    def promotions_dir(self) -> Path:
        return self.root / PROMOTIONS

    def _dir(self, version: str) -> Path:
        if not VERSION_RE.match(version) or not (self.root / version).is_dir():
            raise UnknownVersionError(
                f"unknown model version {version!r} under {self.root} "
                f"(known: {', '.join(self.versions()) or 'none'})"
            )
        return self.root / version

    def save(self, booster: lgb.Booster, onnx_bytes: bytes, manifest: dict[str, Any]) -> str:
        """Store a new version atomically and return its name (not promoted).

        The manifest gets "version", "compiled" (the native object's file and sha256) and,
        unless given, "created_at" (UTC, ISO 8601). Compiling takes seconds: it is done here,
        by train, so that infer only loads it.
        """
        version = new_name()
        model_text = booster.model_to_string()
        compiled = compile_forest(model_text)
        content = {
            **manifest,
            "version": version,
            "created_at": manifest.get("created_at") or dt.datetime.now(dt.UTC).isoformat(),
            "compiled": {compiled_name(): {"sha256": digest(compiled)}},
        }
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{version}.tmp"
        tmp.mkdir()
        try:
            durable.write_bytes(tmp / MODEL_FILE, model_text.encode(), fsync=self.fsync)
            durable.write_bytes(tmp / ONNX_FILE, onnx_bytes, fsync=self.fsync)
            durable.write_bytes(tmp / compiled_name(), compiled, fsync=self.fsync)
            durable.write_json(tmp / MANIFEST_FILE, content, fsync=self.fsync)
            os.rename(tmp, self.root / version)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.fsync:
            durable.fsync_dir(self.root)
        return version

    def versions(self) -> list[str]:
        """Every stored version, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if VERSION_RE.match(p.name))

    def resolve(self, ref: str) -> str:
        """The version ref names: its full name, a prefix of it, or a prefix of its random
        suffix (the short id the dashboard shows: "97cdbf" of 20261204T183909.492325Z-97cdbf).

        Raises UnknownVersionError when none matches and AmbiguousVersionError, naming the
        candidates, when several do."""
        versions = self.versions()
        if ref in versions:
            return ref
        found = [v for v in versions if ref and (v.startswith(ref) or short_id(v).startswith(ref))]
        if len(found) == 1:
            return found[0]
        if found:
            raise AmbiguousVersionError(
                f"{ref!r} names {len(found)} model versions ({', '.join(found)}): give more of it"
            )
        known = ", ".join(versions) or "none"
        raise UnknownVersionError(f"unknown model version {ref!r} under {self.root} ({known})")

    def current(self) -> str | None:
        """The version models/current points at, or None before the first promotion."""
        return self._target(CURRENT)

    def shadow(self) -> str | None:
        """The version models/shadow points at (scored beside current), or None."""
        return self._target(SHADOW)

    def _target(self, link: str) -> str | None:
        try:
            target = os.readlink(self.root / link)
        except FileNotFoundError:
            return None
        return Path(target).name

    def set_shadow(self, version: str | None) -> None:
        """Point models/shadow at version (once verify passes: infer must be able to score
        with it), or remove it (None). The current version cannot also be the shadow."""
        link = self.root / SHADOW
        if version is None:
            link.unlink(missing_ok=True)
        else:
            self.verify(version)
            if version == self.current():
                raise RegistryError(f"{version} is the current version: it cannot be in shadow")
            self._link(SHADOW, version)
        if self.fsync:
            durable.fsync_dir(self.root)

    def manifest(self, version: str) -> dict[str, Any]:
        content: dict[str, Any] = json.loads((self._dir(version) / MANIFEST_FILE).read_text())
        return content

    def onnx_path(self, version: str) -> Path:
        return self._dir(version) / ONNX_FILE

    def load_booster(self, version: str) -> lgb.Booster:
        return lgb.Booster(model_file=str(self._dir(version) / MODEL_FILE))

    def scorer(
        self, version: str, kind: ScorerKind, threads: int = 1, device: Device = CPU
    ) -> Scorer:
        """The version's scorer of that kind on that device (scoring.open_scorer)."""
        return open_scorer(kind, self._dir(version), self.manifest(version), threads, device)

    def verify(self, version: str) -> dict[str, Any]:
        """The version's manifest, once it is shown able to score: its manifest names the
        features, model.txt, model.onnx and the compiled object of this architecture (when
        kept) load, agree on their number, and score a row as the booster does.
        UnknownVersionError or UnusableVersionError (naming the file) otherwise. What infer
        loads, checked before anything points models/current at it."""
        where = self._dir(version)
        try:
            manifest = self.manifest(version)
            names = manifest.get("feature_names")
            if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
                raise ValueError(f"{MANIFEST_FILE} names no feature_names")
            threshold = manifest.get("threshold")
            if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
                raise ValueError(f"{MANIFEST_FILE} has no threshold in [0, 1]")
            booster = self.load_booster(version)
            forms: dict[str, Scorer] = {ONNX_FILE: OnnxScorer(where / ONNX_FILE)}
            if (where / compiled_name()).exists():
                forms[compiled_name()] = self.scorer(version, "compiled")
            row = np.zeros((1, len(names)), np.float32)
            expected = booster.predict(row.astype(np.float64))
            for name, scorer in forms.items():
                if not booster.num_feature() == scorer.n_features == len(names):
                    raise ValueError(
                        f"{MODEL_FILE} has {booster.num_feature()} features, {name} "
                        f"{scorer.n_features}, {MANIFEST_FILE} {len(names)}"
                    )
                if not np.allclose(scorer.score(row), expected, atol=1e-3):
                    raise ValueError(f"{name} does not score as {MODEL_FILE} does")
        except Exception as exc:  # JSON, LightGBM and onnxruntime raise their own kinds
            raise UnusableVersionError(
                f"model version {version} cannot score: {bounded(exc, 500)}"
            ) from exc
        return manifest

    def promote(self, version: str, reason: str, *, forced: bool = False) -> None:
        """Point models/current at version (once verify passes) and record the event.

        forced marks an operator's promotion that bypassed the champion comparison.
        """
        self.verify(version)
        self._switch(version, "forced" if forced else "promoted", reason)

    def rollback(self, reason: str = "rollback requested") -> str:
        """Point models/current back at the version that was current before it; return it.

        The history is replayed as a stack (a promotion pushes, a rollback pops), so repeated
        rollbacks walk further back. Raises RegistryError when there is nothing to go back to.
        """
        current = self.current()
        if current is None:
            raise RegistryError("nothing to roll back: no model has been promoted yet")
        events = self.history()
        stack: list[str] = []
        for event in events:
            if event["event"] == "rolled-back" and stack and stack[-1] == event["from"]:
                stack.pop()
            if not stack or stack[-1] != event["to"]:
                stack.append(event["to"])
        while stack and stack[-1] == current:
            stack.pop()
        if not stack:
            raise RegistryError(
                f"cannot roll back: no version was current before {current} "
                f"(history has {len(events)} event(s))"
            )
        self.verify(stack[-1])
        self._switch(stack[-1], "rolled-back", reason)
        return stack[-1]

    def history(self) -> list[dict[str, Any]]:
        """Every promotion event, oldest first."""
        if not self.promotions_dir.is_dir():
            return []
        files = sorted(
            p
            for p in self.promotions_dir.iterdir()
            if p.suffix == ".json" and not p.name.startswith(".")
        )
        return [json.loads(p.read_text()) for p in files]

    def _link(self, name: str, version: str) -> None:
        """Point models/<name> at version, atomically (a new symlink renamed over the old)."""
        tmp = self.root / f".{name}.{secrets.token_hex(4)}.tmp"
        os.symlink(version, tmp)
        try:
            os.replace(tmp, self.root / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _switch(self, version: str, event: Event, reason: str) -> None:
        self._dir(version)
        previous = self.current()
        self._link(CURRENT, version)
        if self.shadow() == version:  # promoted from shadow: it is no longer a challenger
            (self.root / SHADOW).unlink(missing_ok=True)
        if self.fsync:
            durable.fsync_dir(self.root)
        now = dt.datetime.now(dt.UTC)
        record = {
            "event": event,
            "from": previous,
            "to": version,
            "reason": reason,
            "at": now.isoformat(),
        }
        name = f"{_stamp(now)}-{secrets.token_hex(3)}.json"
        durable.write_json(self.promotions_dir / name, record, fsync=self.fsync)
