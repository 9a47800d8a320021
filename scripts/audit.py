"""Audit the locked dependency set for known vulnerabilities (`make audit`; CI runs it).

pip-audit checks every pin of requirements/dev.txt and requirements/gpu.txt (between them,
everything any install of fraudpipe gets: scripts/lock.py) against the OSV database, without
installing anything. The gate is ours, because pip-audit fails on every finding: a known
vulnerability that has a fixed release fails the audit (exit 1: move the pin, `make lock`);
one with no fix yet is reported and does not fail, since no lock can avoid it.

The full report is written to test-artifacts/audit/pip-audit.json. The OSV endpoint is
FRAUDPIPE_OSV_URL (default https://api.osv.dev/v1/query), for a mirror inside a closed
network. When it cannot be reached, the audit has not happened, and says so: exit 3, or with
--if-unreachable=warn, a warning and exit 0 (CI, whose network has only package registries).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCKED = ("requirements/dev.txt", "requirements/gpu.txt")
OSV_URL = "https://api.osv.dev/v1/query"
UNREACHABLE = 3


def reachable(url: str, timeout: float = 15.0) -> str | None:
    """None when the OSV endpoint answers a query, else why not."""
    query = json.dumps({"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "0"})
    request = urllib.request.Request(
        url, data=query.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            json.load(response)
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
        return f"{type(exc).__name__}: {exc}"
    return None


def findings(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(fixable, unfixed): one line per vulnerability of a locked package."""
    fixable, unfixed = [], []
    for dep in report.get("dependencies", []):
        for vuln in dep.get("vulns", []):
            ids = ", ".join([vuln["id"], *vuln.get("aliases", [])])
            line = f"{dep['name']}=={dep['version']}: {ids}"
            if vuln.get("fix_versions"):
                fixable.append(f"{line} (fixed in {', '.join(vuln['fix_versions'])})")
            else:
                unfixed.append(f"{line} (no fixed release yet)")
    return fixable, unfixed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-unreachable", choices=("fail", "warn"), default="fail")
    parser.add_argument("--report", type=Path, default=ROOT / "test-artifacts/audit/pip-audit.json")
    args = parser.parse_args()
    url = os.environ.get("FRAUDPIPE_OSV_URL", OSV_URL)
    why = reachable(url)
    if why is not None:
        print(f"audit NOT performed: the vulnerability database {url} is unreachable ({why}); "
              "set FRAUDPIPE_OSV_URL to a mirror", file=sys.stderr)  # fmt: skip
        return 0 if args.if_unreachable == "warn" else UNREACHABLE
    args.report.parent.mkdir(parents=True, exist_ok=True)
    sources = [arg for path in LOCKED for arg in ("-r", str(ROOT / path))]
    done = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--disable-pip", *sources,
         "--vulnerability-service", "osv", "--osv-url", url, "--progress-spinner", "off",
         "--format", "json", "--output", str(args.report)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if not args.report.exists():
        print(f"audit failed: pip-audit wrote no report\n{done.stderr[-2000:]}", file=sys.stderr)
        return 2
    report = json.loads(args.report.read_text())
    deps = report["dependencies"]
    audited = [d for d in deps if "skip_reason" not in d]
    skipped = [f"{d['name']}: {d['skip_reason']}" for d in deps if "skip_reason" in d]
    fixable, unfixed = findings(report)
    print(f"audited {len(audited)} locked packages against {url}; report: {args.report}")
    for line in skipped:
        print(f"  not audited: {line}")
    for line in unfixed:
        print(f"  known, unfixed: {line}")
    for line in fixable:
        print(f"  VULNERABLE: {line}")
    if fixable:
        print(f"{len(fixable)} known vulnerabilities have a fix: raise the pins (make lock)")
        return 1
    if skipped:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
