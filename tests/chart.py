"""Render the chart with the real Helm engine (helm-python-sdk: Helm's Go SDK), as `helm
install -f FILE --set ...` would, and hand back the parsed documents."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "chart"
RELEASE, NAMESPACE = "fp", "fraud"
# Kubernetes versions every rendered document must validate against (strict schemas).
KUBE_VERSIONS = tuple(f"1.{minor}" for minor in range(27, 38))  # 1.27 .. 1.37


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's layering of values files and --set: maps merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Helm's flags and their parsers. `--set` types only ints, bools and null: a float such as 0.7
# stays a string there, so numbers with a fraction go through --set-json (as users must do too).
SET_FLAGS = {
    "--set": helm_python.parse_set_string,
    "--set-string": helm_python.parse_set_string_values,
    "--set-json": helm_python.parse_set_json,
}


def values_from(files: Iterable[str] = (), sets: Iterable[str] = ()) -> dict[str, Any]:
    """`-f FILE ... --set EXPR ...`, in helm's order: files first, then the --set flags.

    A set is "EXPR" (--set) or "--set-string EXPR" / "--set-json EXPR".
    """
    values: dict[str, Any] = {}
    for name in files:
        values = deep_merge(values, yaml.safe_load((ROOT / name).read_text()) or {})
    for item in sets:
        flag, _, expr = item.partition(" ") if item.startswith("--") else ("--set", "", item)
        values = deep_merge(values, SET_FLAGS[flag](expr))
    return values


@dataclass
class Rendered:
    docs: list[dict[str, Any]]
    notes: str

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
        return found[0]

    def deployments(self) -> dict[str, dict[str, Any]]:
        """Deployments by stage (their component label)."""
        return {
            d["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in self.kind("Deployment")
        }

    def pod_specs(self) -> list[dict[str, Any]]:
        """Every pod this release can run: the stages' templates and the test pod."""
        return [d["spec"]["template"]["spec"] for d in self.kind("Deployment")] + [
            d["spec"] for d in self.kind("Pod")
        ]


def render(
    values: dict[str, Any] | None = None,
    *,
    api_versions: Iterable[str] | None = None,
    kube_version: str | None = None,
) -> Rendered:
    """`helm template` of the chart; api_versions stand for what the cluster serves."""
    chart = helm_python.Chart.load(CHART)
    opts: dict[str, Any] = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True}
    if api_versions is not None:
        opts["api_versions"] = list(api_versions)
    if kube_version is not None:
        opts["kube_version"] = kube_version
    # Chart.render() does not pass the capabilities options through; the engine takes them.
    out: dict[str, str] = json.loads(
        _native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts))
    )
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        # A disabled template renders as blanks and bare `---`: keep real documents only.
        docs += [d for d in yaml.safe_load_all(text) if d]
    return Rendered(docs, notes)
