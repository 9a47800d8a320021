"""The dashboard against a real `fraudpipe run`, in a real browser (headless Chromium).

One pipeline serves the whole module: the page must show what the WebSocket sends, alerts with
their reason codes, refuse controls without the token, and show a stall when the pipeline
stops (its workers are frozen with SIGSTOP, so the dashboard keeps running).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fraudpipe.dashboard.payload import History, Snapshot
from fraudpipe.registry import ModelRegistry
from fraudpipe.worker import read_status
from tests.conftest import ARTIFACTS, fraudpipe, post_json
from tests.pipeline import small_config

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # A name an attacker controls, resolved to the dashboard's address (DNS rebinding).
    "--host-resolver-rules=MAP rebind.test 127.0.0.1",
    # Chromium's Local Network Access checks stop a public page's connections to loopback
    # before they reach the dashboard; browsers without them do not: the dashboard's own
    # refusals are what the tests must see.
    "--disable-features=LocalNetworkAccessChecks",
]
# Opens a WebSocket from the page; resolves to what came of it.
READ_STREAM = """(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onmessage = (m) => { resolve(`read ${JSON.parse(m.data).kind}`); ws.close(); };
  ws.onclose = (e) => resolve(`closed ${e.code}`);
})"""


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    base: str
    token: str
    data: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
        return post_json(self.base + path, body, token)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FRAUDPIPE_")}


def wait_until(what: str, predicate: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("dashboard")
    cfg, data, out = small_config(tmp, days=400, rate=4000), tmp / "data", tmp / "run.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fraudpipe", "run", "--data-dir", str(data),
             "--config", str(cfg), "--duration", "600"],
            env=_env(), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = wait_until(
            "the dashboard URL",
            lambda: re.search(r"dashboard (http://\S+)", out.read_text(errors="replace")),
            30,
        ).group(1)
        base, _, token = url.partition("/#token=")
        wait_until("the first snapshot", lambda: _snapshot_or_none(base), 30)
        yield Run(proc, base, token, data)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _snapshot_or_none(base: str) -> Any:
    try:
        with urllib.request.urlopen(base + "/api/snapshot", timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _number(text: str) -> float:
    return float(text.replace(",", "").split()[0])


def open_page(browser: Any) -> tuple[Any, list[str]]:
    """A new page, and what goes wrong in it: uncaught errors, console errors, and every
    Content-Security-Policy violation (a blocked script, style, image or connection). An
    HTTP error status the test provokes (401 without the token) is not a problem."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error" and not message.text.startswith(
            "Failed to load resource: the server responded with a status of"
        ):
            problems.append(f"console: {message.text}")

    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", console)
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) => console.error("
        "`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`))"
    )
    return page, problems


def wait_text(page: Any, selector: str, text: str | re.Pattern[str], timeout: float = 30) -> None:
    """Wait until an element matching selector shows text (a substring, or a pattern).

    Through Playwright's locators: its wait_for_function evaluates strings with eval, which the
    page's Content-Security-Policy rightly forbids."""
    page.locator(selector).filter(has_text=text).first.wait_for(timeout=timeout * 1000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium here: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def test_payload_matches_the_documented_schema(run: Run) -> None:
    snap = Snapshot.model_validate(run.get("/api/snapshot"))  # extra fields are refused too
    assert [s.stage for s in snap.throughput.stages] == ["gather", "preprocess", "train", "infer"]
    assert {b.topic for b in snap.backlog} >= {"raw-transactions", "features-ready"}
    assert snap.cluster.mode == "local" and snap.cluster.metrics_api == "not in a cluster"
    assert snap.cluster.detail  # said in words, not shown as zeros
    assert all(w.cpu_millicores is None and w.memory_bytes is None for w in snap.workers)
    assert snap.controls.enabled and not snap.controls.scale_available
    history = History.model_validate(run.get("/api/history"))
    assert history.points and history.points[-1].at <= snap.at + 1
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Dashboard payload") :]
    for name in Snapshot.model_fields:
        assert f"`{name}`" in section, f"README does not document snapshot field {name!r}"


def test_page_updates_from_the_websocket_shows_reasons_and_refuses_without_token(
    run: Run, browser: Any
) -> None:
    frames: list[dict[str, Any]] = []
    page, problems = open_page(browser)
    page.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda payload: frames.append(json.loads(payload))),
    )
    page.goto(run.base + "/")  # no token in the URL: the page holds none
    wait_text(page, "#ws-status", "live")
    wait_until("scoring", lambda: run.get("/api/snapshot")["throughput"]["end_to_end_rows_per_s"])

    # The numbers follow the WebSocket: each shown value is the one of a frame just received.
    shown: set[str] = set()
    for _ in range(6):
        page.wait_for_timeout(1500)
        text = page.text_content("#e2e-rate") or ""
        pending = page.text_content("#backlog-raw-transactions-pending") or ""
        recent = frames[-3:]
        assert any(
            abs(_number(text) - f["throughput"]["end_to_end_rows_per_s"]) <= 1 for f in recent
        ), (text, [f["throughput"]["end_to_end_rows_per_s"] for f in recent])
        assert any(int(_number(pending)) == _pending(f, "raw-transactions") for f in recent)
        shown.add(text)
    assert len(frames) >= 6 and len(shown) >= 2, "the page did not change with new frames"
    for frame in frames:
        Snapshot.model_validate(frame)

    # An alert with its reason codes, as the payload has them.
    page.wait_for_selector("#alerts tbody tr .reason", timeout=120_000)
    chip = page.text_content("#alerts tbody tr .reason") or ""
    alerts = [a for f in frames for a in f["detection"]["recent_alerts"]]
    features = {r["feature"] for a in alerts for r in a["reasons"]}
    assert chip.split(" ")[0] in features
    assert all(len(a["reasons"]) == 3 for a in alerts)
    # Recall is over the labeled frauds (alerted or not), and its caption counts those.
    wait_text(page, "#recall-caption", re.compile(r"^of [\d,]+ labeled frauds / "), 120)

    # Locally the Scale buttons are off, saying why; only Pause is offered while running.
    assert all(page.is_disabled(f"#scale-{stage}-button") for stage in ("gather", "infer"))
    assert "Kubernetes API" in (page.text_content("#scale-hint") or "")
    assert "Kubernetes API" in (page.get_attribute("#scale-infer-button", "title") or "")
    assert page.is_disabled("#resume-button") and page.is_enabled("#pause-button")

    # Controls without the token: refused by the server, said on the page, nothing changes.
    page.click("#pause-button")
    page.wait_for_selector("#control-result.error")
    assert "token is required" in (page.text_content("#control-result") or "")
    assert not (run.data / "control" / "generation.json").exists()
    page.click("#retrain-button")
    wait_text(page, "#control-result", "token")
    assert not (run.data / "control" / "train-now").exists()

    # With the token the same button works.
    page.fill("#token-input", run.token)
    page.press("#token-input", "Enter")
    page.click("#pause-button")
    page.wait_for_selector("#control-result.ok")
    assert json.loads((run.data / "control" / "generation.json").read_text())["paused"] is True
    wait_text(page, "#warnings li", "paused")
    assert page.is_disabled("#pause-button")
    page.click("#resume-button")  # waits for the button to be enabled by the paused snapshot
    wait_text(page, "#control-result", "running")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert problems == []  # the Content-Security-Policy blocked nothing the page needs
    page.close()


def _pending(frame: dict[str, Any], topic: str) -> int:
    return next(b["pending"] for b in frame["backlog"] if b["topic"] == topic)


def test_pages_of_other_origins_and_rebound_names_cannot_read_the_stream(
    run: Run, browser: Any
) -> None:
    port = urllib.parse.urlsplit(run.base).port
    stream = f"ws://127.0.0.1:{port}/ws"
    page, problems = open_page(browser)
    page.goto(run.base + "/")
    assert page.evaluate(READ_STREAM, stream) == "read snapshot"  # its own origin: served
    # A page of another site open in the same browser: the handshake is refused (403).
    page.route("http://attacker.test/", lambda route: route.fulfill(body="<p>hi</p>"))
    page.goto("http://attacker.test/")
    assert page.evaluate(READ_STREAM, stream) == "closed 1006"
    assert [p for p in problems if "Unexpected response code: 403" in p], problems
    # DNS rebinding: rebind.test now points at the dashboard; its Host is refused (400).
    answer = page.goto(f"http://rebind.test:{port}/api/snapshot")
    assert answer is not None and answer.status == 400
    assert "'rebind.test' is not allowed" in answer.text()
    assert "dashboard.allowed_hosts" in answer.text()
    assert page.evaluate(READ_STREAM, f"ws://rebind.test:{port}/ws") == "closed 1006"
    assert [p for p in problems if "Unexpected response code: 400" in p], problems
    page.close()


# Latency (ms) -> what a tile shows: ms below 1 s, then s, min, h, d; at most 3 digits.
DURATIONS = {
    0: "0 ms",
    0.42: "0.4 ms",
    12.3: "12 ms",
    999.4: "999 ms",
    999.6: "1.0 s",
    4_500: "4.5 s",
    99_400: "99 s",
    99_600: "1.7 min",
    4_693_742: "78 min",  # what the tiles showed as "4,693,742 ms" after a long pause
    5_970_000: "1.7 h",
    7_200_000: "2.0 h",
    360_000_000: "4.2 d",
    34_560_000_000: "400 d",
    106_617_600_000: "1,234 d",
}
# Renders the tiles from a snapshot with these latencies; what each tile shows, and whether
# it fits inside its tile.
RENDER_LATENCY = """(ms) => {
  renderTiles({latency: {window_s: 30, rows: 1, p50_ms: ms, p95_ms: ms, p99_ms: ms}});
  return ["p50", "p95", "p99"].map((q) => {
    const value = document.querySelector(`#latency-${q}`).closest(".tile-value");
    return [value.textContent, value.scrollWidth <= value.clientWidth];
  });
}"""


@pytest.mark.parametrize("width", [1280, 700])
def test_latency_tiles_grow_their_unit_and_never_overflow(
    run: Run, browser: Any, width: int
) -> None:
    page, problems = open_page(browser)
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(run.base + "/")
    wait_text(page, "#ws-status", "live")
    shown = page.evaluate(
        "(values) => values.map((ms) => fmtDuration(ms).join(' '))", list(DURATIONS)
    )
    assert dict(zip(DURATIONS, shown, strict=True)) == DURATIONS
    for ms, text in DURATIONS.items():
        # The page draws each snapshot within one task: nothing redraws between these lines.
        tiles = page.evaluate(RENDER_LATENCY, ms)
        assert tiles == [[text, True]] * 3, (ms, tiles)
    assert problems == []
    page.close()


def test_controls_need_the_right_token(run: Run) -> None:
    assert run.post("/api/control/retrain", {}, None)[0] == 401
    status, body = run.post("/api/control/retrain", {}, "not-the-token")
    assert (status, body) == (401, {"error": "wrong token"})
    status, body = run.post("/api/control/generation", {"rate": -5}, run.token)
    assert status == 422 and "rate" in body["error"]
    status, body = run.post("/api/control/scale", {"stage": "infer", "replicas": 2}, run.token)
    assert status == 409 and "Kubernetes" in body["error"]
    status, body = run.post("/api/control/generation", {"rate": 3000}, run.token)
    assert status == 200 and body["ok"]
    snap = wait_until(
        "the rate to show",
        lambda: (s := run.get("/api/snapshot"))["controls"]["generation_rate"] == 3000 and s,
        10,
    )
    assert not snap["controls"]["generation_paused"]


def test_without_a_configured_token_the_dashboard_is_read_only(run: Run, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fraudpipe", "worker", "--stage=dashboard",
         "--data-dir", str(run.data)],
        env=_env() | {"FRAUDPIPE_DASHBOARD__PORT": str(port), "FRAUDPIPE_METRICS__PORT": "0"},
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        snap = wait_until("the read-only dashboard", lambda: _snapshot_or_none(base), 30)
        assert snap["controls"]["enabled"] is False
        status, body = post_json(base + "/api/control/retrain", {}, run.token)
        assert status == 403 and "read-only" in body["error"]
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_a_stopped_pipeline_shows_a_stall_and_rates_fall_to_zero(run: Run, browser: Any) -> None:
    page, _ = open_page(browser)
    page.goto(run.base + "/")
    wait_text(page, "#ws-status", "live")
    wait_until("scoring", lambda: run.get("/api/snapshot")["throughput"]["end_to_end_rows_per_s"])
    # Stop every stage worker in its tracks (the dashboard and the supervisor keep running).
    frozen = [w["pid"] for w in read_status(run.data / "status")]
    assert {w["stage"] for w in read_status(run.data / "status")} == {
        "gather", "preprocess", "train", "infer",
    }  # fmt: skip
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        snap = wait_until(
            "rates to fall to zero",
            lambda: (
                (s := run.get("/api/snapshot"))["throughput"]["end_to_end_rows_per_s"] == 0
                and all(st["rows_per_s"] == 0 for st in s["throughput"]["stages"])
                and s
            ),
            60,
        )
        messages = [w["message"] for w in snap["warnings"] if w["level"] == "critical"]
        assert any("no live worker" in m for m in messages), messages
        wait_text(page, "#e2e-rate", re.compile(r"^0\.0$"))
        wait_text(page, "#warnings li.critical", "no live worker")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-stalled.png"), full_page=True)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    wait_until(
        "scoring to resume",
        lambda: run.get("/api/snapshot")["throughput"]["end_to_end_rows_per_s"] > 0,
        90,
    )
    page.close()


def test_live_quality_shows_the_champion_and_a_shadow_beside_it(run: Run, browser: Any) -> None:
    """A version put in shadow is scored on the champion's rows; as their labels arrive the
    payload, the page and /metrics show both models' live figures on the same rows, and the
    champion's beside its holdout's."""
    registry = ModelRegistry(run.data / "models")
    if len(registry.versions()) < 2:
        assert run.post("/api/control/retrain", {}, run.token)[0] == 200
    wait_until("a second model version", lambda: len(registry.versions()) >= 2, 180)
    other = next(v for v in reversed(registry.versions()) if v != registry.current())
    if registry.shadow() is None:  # train may have put a losing challenger there already
        fraudpipe("model", "shadow", other, "--data-dir", str(run.data), check=True)

    def measured() -> Any:
        q = Snapshot.model_validate(run.get("/api/snapshot")).quality
        done = q.shadow is not None and q.shadow.average_precision is not None
        return q if done and q.champion.average_precision is not None else None

    q = wait_until("live figures of the champion and the shadow", measured, 180)
    # (train puts each challenger that loses in shadow: the version may have moved on since)
    assert q.shadow is not None and q.shadow.version in registry.versions()
    assert q.shadow.frauds >= q.min_frauds and q.shadow.champion_average_precision is not None
    assert q.champion.holdout_average_precision is not None
    page, problems = open_page(browser)
    page.goto(run.base + "/")
    live = re.compile(r"^AP 0\.\d{3} · AUC 0\.\d{3} over .*; holdout AP 0\.\d{3}")
    wait_text(page, "#model-live", live, 60)
    beside = re.compile(r"vs champion AP 0\.\d{3} · AUC 0\.\d{3}, same ")
    wait_text(page, "#model-shadow", beside, 60)

    def exposed() -> str:
        with urllib.request.urlopen(run.base + "/metrics", timeout=10) as resp:
            return resp.read().decode()

    gauges = (  # the exposition sorts labels by name
        r'fraudpipe_quality_average_precision\{role="shadow",source="live",version="[^"]+"\} 0\.',
        r'fraudpipe_quality_roc_auc\{role="champion",source="holdout",version="[^"]+"\} 0\.',
        r'fraudpipe_quality_labeled_rows\{role="champion",version="[^"]+"\} [1-9]',
    )
    wait_until("the quality gauges", lambda: all(re.search(g, exposed()) for g in gauges), 60)
    assert problems == []
    page.close()
