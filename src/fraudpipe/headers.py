"""The security headers on every answer of fraudpipe's web servers (docs/security.md).

Two servers answer HTTP: the dashboard (a page, its JS/CSS, JSON, a WebSocket) and every
worker's metrics port (/metrics, /healthz: plain text). Both forbid framing, MIME sniffing and
referrers; the Content-Security-Policy is what each needs and no more: the page loads its own
script, style and favicon (a data: URL) and talks to its own origin (fetch and WebSocket); the
metrics port loads nothing at all.
"""

from __future__ import annotations

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
NOTHING_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def security_headers(policy: str) -> dict[str, str]:
    """The headers every answer carries, with this Content-Security-Policy."""
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
