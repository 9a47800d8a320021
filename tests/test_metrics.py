"""Every worker's metrics port: /metrics, /healthz, and the security headers on every answer."""

from __future__ import annotations

import http.client
import socket

from fraudpipe.headers import NOTHING_POLICY
from fraudpipe.metrics import Health, Metrics, serve

EXPECTED = {
    "content-security-policy": NOTHING_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_metrics_port_answers_with_security_headers_even_its_errors() -> None:
    metrics = Metrics()
    metrics.rows.labels("infer").inc(3)
    port = serve(metrics, Health(stale_after_s=30), "127.0.0.1", 0)
    answers = {path: _get(port, path) for path in ("/metrics", "/healthz", "/nope")}
    status, _, body = answers["/metrics"]
    assert status == 200 and b'fraudpipe_rows_total{stage="infer"} 3.0' in body
    assert answers["/healthz"][:3:2] == (200, b"ok\n")
    assert answers["/nope"][0] == 404
    for path, (_, headers, _) in answers.items():
        assert {k: headers.get(k) for k in EXPECTED} == EXPECTED, path
    # A method the server does not serve: http.server's own error answer, same headers.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"BREW /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(4096):
            raw += chunk
    head = raw.split(b"\r\n\r\n", 1)[0].decode().lower()
    assert head.startswith("http/1.0 501"), head
    for name, value in EXPECTED.items():
        assert f"{name}: {value.lower()}" in head, name
