"""Which requests the dashboard's web port serves, and the headers on every answer.

An ASGI middleware in front of the whole app (so Starlette's own 404/405/500 answers pass it):

- **Host**: the Host header must name an allowed host (``dashboard.allowed_hosts``, plus the
  listen address when it is a concrete one), or the request is refused with 400. A page that
  rebinds its own DNS name to the dashboard's address sends its own name as Host, so it cannot
  read the API or the WebSocket through the operator's browser.
- **Origin**: a request that carries an Origin (browsers send one with every WebSocket
  handshake, every cross-origin fetch and every POST) must come from the dashboard's own
  origin: same scheme, host and port as the request itself, or it is refused with 403. A page on
  another origin open in the same browser cannot read the live alerts over ``/ws`` nor post a
  control. Requests without Origin (curl, Prometheus, scripts) pass; controls still need the
  token. Behind a TLS-terminating proxy the scheme is the proxy's ``X-Forwarded-Proto``, from
  any client: a page cannot set that header on a WebSocket, nor on a fetch to another origin
  without a preflight, which this check refuses.
- **Headers**: every answer, refusals included, gets fraudpipe's security headers
  (:mod:`fraudpipe.headers`) and ``Cache-Control: no-store`` unless it set its own.

A refused WebSocket handshake gets the same JSON answer as HTTP (ASGI's WebSocket denial
response, which every uvicorn WebSocket implementation supports).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fraudpipe.config import DashboardSettings
from fraudpipe.headers import PAGE_POLICY, security_headers

DEFAULT_PORT = {"http": 80, "https": 443}
_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")
_HINT = (
    "add it to dashboard.allowed_hosts (environment FRAUDPIPE_DASHBOARD__ALLOWED_HOSTS, "
    "chart value dashboard.allowedHosts)"
)


def allowed_hosts(settings: DashboardSettings) -> list[str]:
    """The configured hosts, plus the listen address when it names one interface."""
    extra = [] if settings.host.lower() in _ANY_ADDRESS else [settings.host.lower()]
    return [*settings.allowed_hosts, *extra]


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether a host name (lowercase, no port, IPv6 without brackets) matches an entry:
    `*`, `.example.com` (it and its subdomains), `*.example.com` (subdomains) or a name."""
    host = host.rstrip(".")
    for entry in allowed:
        entry = entry.rstrip(".")
        if entry == "*":
            return True
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif entry.startswith("."):
            if host == entry[1:] or host.endswith(entry):
                return True
        elif host == entry.strip("[]"):
            return True
    return False


def _authority(text: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of `host[:port]` reached over `scheme`; None if it is anything more."""
    try:
        parts = urllib.parse.urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.netloc != text or parts.username is not None:
        return None
    return parts.hostname, port if port is not None else DEFAULT_PORT[scheme]


def _origin(text: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin header value; None for `null` or anything odd."""
    scheme, sep, authority = text.partition("://")
    found = _authority(authority, scheme) if sep and scheme in DEFAULT_PORT else None
    return None if found is None else (scheme, *found)


def _scheme(scope: Scope, headers: Headers) -> str:
    """http or https: what the browser used (a TLS proxy in front says so in a header)."""
    forwarded = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if forwarded in DEFAULT_PORT:
        return forwarded
    return "https" if scope.get("scheme") in ("https", "wss") else "http"


class Guard:
    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = allowed
        self.security = security_headers(PAGE_POLICY)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        """The answer to a request this port does not serve, or None to serve it."""
        headers = Headers(scope=scope)
        scheme = _scheme(scope, headers)
        given = headers.get("host", "")
        authority = _authority(given, scheme)
        if authority is None:
            return JSONResponse(
                {"error": f"a Host header naming the dashboard is required, got {given!r}"},
                status_code=400,
            )
        host, port = authority
        if not host_allowed(host, self.allowed):
            name = f"[{host}]" if ":" in host else host  # as an entry would name it
            return JSONResponse(
                {"error": f"host {name!r} is not allowed to reach this dashboard: {_HINT}"},
                status_code=400,
            )
        origin = headers.get("origin")
        if origin is not None and _origin(origin) != (scheme, host, port):
            own = f"{scheme}://{given}"
            return JSONResponse(
                {
                    "error": f"origin {origin!r} is not this dashboard's own ({own}): "
                    "requests from other sites are refused"
                },
                status_code=403,
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                headers = MutableHeaders(scope=message)
                for name, value in self.security.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        refused = self.refusal(scope)
        if refused is None:
            await self.app(scope, receive, send_with_headers)
        else:  # on a WebSocket handshake this is the denial response
            await refused(scope, receive, send_with_headers)
