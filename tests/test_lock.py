"""The dependency lock and its audit (scripts/lock.py, scripts/audit.py).

The lock must agree with pyproject.toml and its exports with the lock (uv itself decides:
`uv lock --check`, `uv export`), every install must take the lock's hashed pins, and the audit
gate must fail on a fixable vulnerability, pass an unfixed one with a report, and never pass
silently when the database is out of reach. The vulnerability database is the one thing faked:
a local server speaking OSV's query API, as the real one does.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402


def test_the_lock_agrees_with_pyproject_and_its_exports() -> None:
    assert lock.stale() == []


def test_the_check_fails_when_pyproject_or_an_export_moves(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock", "README.md", "requirements"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, tmp_path / name)
    assert lock.stale(tmp_path) == []

    dev = tmp_path / "requirements" / "dev.txt"
    dev.write_text(dev.read_text().replace("polars==", "polars>=", 1))
    assert lock.stale(tmp_path) == [
        "requirements/dev.txt is not uv.lock's export (run `make lock`)"
    ]

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"rich>=13",', '"rich>=13",\n  "six>=1",'))
    problems = lock.stale(tmp_path)
    assert problems[0].startswith("uv.lock does not satisfy pyproject.toml"), problems


def _pip_installs(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return re.findall(r"pip install ([^&;\n]*)", joined)


@pytest.mark.parametrize("path", ["Makefile", "Dockerfile"])
def test_every_install_takes_the_locks_hashed_pins(path: str) -> None:
    installs = _pip_installs((ROOT / path).read_text())
    assert installs
    for args in installs:
        words = args.split()
        upgrade_pip = "--upgrade" in words and words[-1] == "pip"
        assert upgrade_pip or "--require-hashes" in words or "--no-deps" in words, args
        if "--require-hashes" in words:
            files = [words[i + 1] for i, w in enumerate(words) if w == "-r"]
            assert files and all("requirements" in f for f in files), args


# --- the audit gate, against a stand-in OSV server -----------------------------------------


class _Osv(http.server.BaseHTTPRequestHandler):
    vulns: ClassVar[dict[str, list[dict[str, Any]]]] = {}

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        found = self.vulns.get(query["package"]["name"], [])
        body = json.dumps({"vulns": found} if found else {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def osv() -> Iterator[tuple[str, dict[str, list[dict[str, Any]]]]]:
    vulns: ClassVar[dict[str, list[dict[str, Any]]]] = {}
    handler = type("Handler", (_Osv,), {"vulns": vulns})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/query", vulns
    finally:
        server.shutdown()
        server.server_close()


def _locked_version(package: str) -> str:
    found = re.search(rf"^{package}==(\S+)", (ROOT / "requirements/dev.txt").read_text(), re.M)
    assert found, package
    return found.group(1)


def _vuln(package: str, fixed: str | None) -> dict[str, Any]:
    events: list[dict[str, str]] = [{"introduced": "0"}]
    if fixed is not None:
        events.append({"fixed": fixed})
    return {
        "id": f"PYSEC-0000-{package}",
        "aliases": ["CVE-0000-0001"],
        "summary": "stand-in advisory",
        "affected": [
            {
                "package": {"name": package, "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
    }


def _audit(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/audit.py"), "--report",
         str(tmp_path / "report.json"), *args],
        env={"FRAUDPIPE_OSV_URL": url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_audit_fails_on_a_fixable_vulnerability_and_reports_an_unfixed_one(
    osv: tuple[str, dict[str, list[dict[str, Any]]]], tmp_path: Path
) -> None:
    url, vulns = osv
    done = _audit(url, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"audited \d+ locked packages", done.stdout)

    vulns["pyyaml"] = [_vuln("pyyaml", None)]
    done = _audit(url, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"known, unfixed: pyyaml=={_locked_version('pyyaml')}" in done.stdout

    vulns["polars"] = [_vuln("polars", "999.0")]
    done = _audit(url, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"VULNERABLE: polars=={_locked_version('polars')}" in done.stdout
    assert "(fixed in 999.0)" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert any(d["name"] == "polars" and d["vulns"] for d in report["dependencies"])


def test_audit_never_passes_silently_without_its_database(tmp_path: Path) -> None:
    with http.server.HTTPServer(("127.0.0.1", 0), _Osv) as closed:
        url = f"http://127.0.0.1:{closed.server_port}/v1/query"
    done = _audit(url, tmp_path)
    assert done.returncode == 3
    assert "audit NOT performed" in done.stderr
    done = _audit(url, tmp_path, "--if-unreachable=warn")
    assert done.returncode == 0
    assert "audit NOT performed" in done.stderr
    assert not (tmp_path / "report.json").exists()
