"""The dashboard's web port refuses what a hostile page in the operator's browser could send.

A real uvicorn server (the dashboard's own configuration) in this process, asked over real
sockets: wrong Host (DNS rebinding) -> 400 naming the setting; a foreign Origin on the WebSocket
or a control -> 403; every answer carries the security headers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from fraudpipe.config import load_settings
from fraudpipe.dashboard.cluster import ClusterView
from fraudpipe.dashboard.payload import Snapshot
from fraudpipe.dashboard.server import Dashboard
from fraudpipe.headers import PAGE_POLICY

TOKEN = "s3cret"
SECURITY = {
    "content-security-policy": PAGE_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Served:
    port: int
    data: Path

    @property
    def own(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(
        self, path: str, host: str | None = None, method: str = "GET", **headers: str
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            body = b"{}" if method == "POST" else None
            sent = {
                "Host": host or self.own,
                **{k.replace("_", "-"): v for k, v in headers.items()},
            }
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def websocket(self, host: str | None = None, **headers: str) -> Any:
        """A WebSocket handshake to /ws with this Host (over a socket to the server)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return connect(
            f"ws://{host or self.own}/ws",
            sock=sock,
            origin=headers.pop("origin", None),  # type: ignore[arg-type]
            additional_headers={k.replace("_", "-"): v for k, v in headers.items()},
            open_timeout=30,
        )


def _wait(what: str, predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def _serve(data: Path, allowed_hosts: list[str]) -> Iterator[Served]:
    settings = load_settings(
        overrides={
            "data_dir": data,
            "dashboard.port": 0,
            "dashboard.token": TOKEN,
            "dashboard.allowed_hosts": allowed_hosts,
        }
    )
    server = Dashboard(settings, ClusterView(env={})).server()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait("the dashboard to listen", lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(port, data)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    allowed = ["localhost", "127.0.0.1", "[::1]", ".example.com", "*.corp.test"]
    with _serve(tmp_path, allowed) as s:
        yield s


def _refused_host(answer: Answer, host: str) -> None:
    assert answer.status == 400, (answer.status, answer.body)
    error = answer.json()["error"]
    assert f"host {host!r} is not allowed" in error
    assert "dashboard.allowed_hosts" in error and "FRAUDPIPE_DASHBOARD__ALLOWED_HOSTS" in error


PATHS = ["/", "/static/app.js", "/api/snapshot", "/api/history", "/metrics", "/healthz", "/nope"]


@pytest.mark.parametrize(
    "host",
    [
        "evil.test",  # a rebinding name pointed at the dashboard's address
        "evil.test:{port}",
        "evilexample.com",  # ends like an allowed domain, is not one
        "example.com.evil.test",
        "127.0.0.2:{port}",
        "corp.test",  # *.corp.test: its subdomains, not the domain itself
        "evilcorp.test",
    ],
)
def test_a_host_outside_the_allow_list_is_refused_on_every_path(served: Served, host: str) -> None:
    host = host.format(port=served.port)
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    for path in PATHS:
        _refused_host(served.request(path, host=host), name)
    with pytest.raises(InvalidStatus) as err:
        served.websocket(host=host, origin=f"http://{host}")
    _refused_host(Answer(err.value.response.status_code, {}, err.value.response.body), name)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "127.0.0.1:18080",  # kubectl port-forward 18080:80: the local port, not the server's
        "localhost:{port}",
        "LOCALHOST",
        "[::1]:8080",
        "example.com",  # .example.com: the domain itself ...
        "fraud.example.com",  # ... and its subdomains
        "fraud.example.com.",
        "dash.corp.test",
    ],
)
def test_allowed_hosts_are_served_whatever_the_port(served: Served, host: str) -> None:
    answer = served.request("/api/history", host=host.format(port=served.port))
    assert answer.status == 200, answer.body
    assert "points" in answer.json()


def test_the_concrete_listen_address_is_allowed_without_being_listed(tmp_path: Path) -> None:
    with _serve(tmp_path, ["localhost"]) as s:  # listening on 127.0.0.1
        assert s.request("/api/history").status == 200
        assert s.request("/api/history", host=f"localhost:{s.port}").status == 200
        _refused_host(s.request("/api/history", host=f"[::1]:{s.port}"), "[::1]")


def test_a_malformed_host_is_refused(served: Served) -> None:
    for host in ("127.0.0.1:notaport", "user@127.0.0.1", "127.0.0.1/x", "[::1"):
        answer = served.request("/api/history", host=host)
        assert answer.status == 400, (host, answer.body)
        assert answer.json()["error"].startswith("a Host header naming the dashboard is required")


def test_the_websocket_serves_its_own_origin_and_refuses_others(served: Served) -> None:
    own = f"http://{served.own}"
    with served.websocket(origin=own) as ws:  # what the page does
        Snapshot.model_validate_json(ws.recv(timeout=30))
    with served.websocket() as ws:  # no Origin: not a browser; the alerts are its to read
        Snapshot.model_validate_json(ws.recv(timeout=30))
    # Behind a TLS proxy the browser's origin is https; the proxy says so.
    with served.websocket(
        host="fraud.example.com", origin="https://fraud.example.com", x_forwarded_proto="https"
    ) as ws:
        Snapshot.model_validate_json(ws.recv(timeout=30))
    for origin, host in [
        ("http://evil.test", None),  # a page on another site
        (f"http://localhost:{served.port}", None),  # an allowed host is not the same origin
        (f"http://127.0.0.1:{served.port + 1}", None),
        (f"https://{served.own}", None),  # same host and port, other scheme
        ("https://fraud.example.com", "fraud.example.com"),  # https claimed, http served
        ("null", None),  # a sandboxed frame
    ]:
        with pytest.raises(InvalidStatus) as err:
            served.websocket(host=host, origin=origin)
        assert err.value.response.status_code == 403, origin
        error = json.loads(err.value.response.body)["error"]
        assert f"origin {origin!r} is not this dashboard's own" in error


def test_controls_from_another_origin_are_refused_even_with_the_token(served: Served) -> None:
    auth = f"Bearer {TOKEN}"
    flag = served.data / "control" / "train-now"
    answer = served.request(
        "/api/control/retrain", method="POST", Authorization=auth, Origin="http://evil.test"
    )
    assert answer.status == 403 and "evil.test" in answer.json()["error"]
    assert not flag.exists()
    # Without the token a foreign origin learns nothing more than 403.
    answer = served.request("/api/control/retrain", method="POST", Origin="http://evil.test")
    assert answer.status == 403
    # The page itself (its own origin) and scripts (no Origin) still need only the token.
    answer = served.request(
        "/api/control/retrain", method="POST", Origin=f"http://{served.own}", Authorization=auth
    )
    assert answer.status == 200 and flag.exists(), answer.body
    flag.unlink()
    answer = served.request("/api/control/retrain", method="POST", Authorization=auth)
    assert answer.status == 200 and flag.exists(), answer.body
    assert served.request("/api/control/retrain", method="POST").status == 401


def _secured(answer: Answer, cache: str = "no-store") -> None:
    for name, value in SECURITY.items():
        assert answer.headers.get(name) == value, (name, answer.status, answer.headers)
    assert answer.headers.get("cache-control") == cache, answer.headers


def test_every_answer_carries_the_security_headers(served: Served) -> None:
    page = served.request("/")
    assert page.status == 200 and b"<html" in page.body
    _secured(page, cache="no-cache")  # revalidated, so an upgrade's page is seen at once
    for path in ("/static/app.js", "/static/app.css", "/api/history", "/metrics", "/healthz"):
        answer = served.request(path)
        assert answer.status == 200, path
        _secured(answer)
    _wait("the first snapshot", lambda: served.request("/api/snapshot").status == 200)
    _secured(served.request("/api/snapshot"))
    _secured(served.request("/nope"))  # 404
    _secured(served.request("/api/control/retrain"))  # 405: GET on a POST route
    _secured(served.request("/api/control/retrain", method="POST"))  # 401
    _secured(served.request("/api/history", host="evil.test"))  # 400
    _secured(served.request("/api/history", Origin="http://evil.test"))  # 403
    with pytest.raises(InvalidStatus) as err:
        served.websocket(origin="http://evil.test")
    denial = err.value.response
    _secured(Answer(denial.status_code, {k.lower(): v for k, v in denial.headers.raw_items()}, b""))
