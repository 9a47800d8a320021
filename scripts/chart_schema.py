"""Keep chart/values.schema.json's `config` in step with the pydantic configuration model.

The chart's `config` value is the worker's configuration (same names, same limits), so its
schema is generated from `fraudpipe.config.Settings`, minus what the chart owns (`data_dir` is
persistence.mountPath, `metrics` is metrics.port, `dashboard` is dashboard.port, its token
Secret and dashboard.allowedHosts, whose items get the model's own pattern), and one rule across
the two: a train stage on the GPU needs `config.train.max_bin` within what LightGBM's GPU learner
holds (model.GPU_MAX_BIN), as the worker itself refuses. `python
scripts/chart_schema.py` rewrites the file; `--check` exits 1 when it is out of date (the chart
tests run the same comparison).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fraudpipe.config import DashboardSettings, Settings
from fraudpipe.model import GPU_MAX_BIN

SCHEMA = Path(__file__).resolve().parent.parent / "chart" / "values.schema.json"
CHART_OWNED = ("data_dir", "metrics", "dashboard")


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_titles(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the `config` property's schema, the definitions it refers to)."""
    generated = _strip_titles(Settings.model_json_schema(ref_template="#/definitions/{model}"))
    definitions = generated.pop("$defs")
    for name in CHART_OWNED:
        generated["properties"].pop(name)
    used: set[str] = set()
    text = json.dumps(generated)
    while True:  # the definitions `config` refers to, directly or through other definitions
        found = {d for d in definitions if f'"#/definitions/{d}"' in text} - used
        if not found:
            break
        used |= found
        text = json.dumps([definitions[d] for d in found])
    generated["description"] = (
        "The pipeline configuration (names as `fraudpipe config` prints them); "
        "data_dir, metrics and dashboard are set by the chart."
    )
    return generated, {d: definitions[d] for d in sorted(used)}


def train_on_gpu_rule() -> dict[str, Any]:
    """If stages.train.device is gpu, then config.train.max_bin must be set, <= GPU_MAX_BIN."""

    def path(keys: list[str], leaf: dict[str, Any]) -> dict[str, Any]:
        node = leaf
        for key in reversed(keys):
            node = {"properties": {key: node}, "required": [key]}
        return node

    return {
        "if": path(["stages", "train", "device"], {"const": "gpu"}),
        "then": path(
            ["config", "train", "max_bin"],
            {
                "maximum": GPU_MAX_BIN,
                "description": f"LightGBM's GPU learner holds at most {GPU_MAX_BIN} bins a "
                "feature (the default train.max_bin is more): set "
                f"config.train.max_bin={GPU_MAX_BIN} to train on the GPU",
            },
        ),
    }


def synced(schema: dict[str, Any]) -> dict[str, Any]:
    config, definitions = config_schema()
    out = dict(schema)
    dashboard = json.loads(json.dumps(schema["properties"]["dashboard"]))
    hosts = DashboardSettings.model_json_schema()["properties"]["allowed_hosts"]["items"]
    dashboard["properties"]["allowedHosts"]["items"] = hosts
    out["properties"] = {**schema["properties"], "config": config, "dashboard": dashboard}
    kept = {k: v for k, v in schema.get("definitions", {}).items() if not k.endswith("Settings")}
    out["definitions"] = {**kept, **definitions}
    out["allOf"] = [train_on_gpu_rule()]
    return out


def main() -> int:
    current = json.loads(SCHEMA.read_text())
    wanted = synced(current)
    if "--check" in sys.argv:
        if wanted != current:
            print(f"{SCHEMA} is out of date: run `make chart-schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(json.dumps(wanted, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
