"""The dashboard's web server (Starlette on uvicorn): the page, the payload, the controls.

- ``GET /``: the page (its JS and CSS ship in the package: it works offline).
- ``GET /api/snapshot``: the latest snapshot; ``GET /api/history``: the charts' starting points.
- ``WS /ws``: one snapshot per second.
- ``POST /api/control/{scale,generation,retrain}``: need ``Authorization: Bearer <token>``
  (``dashboard.token``); without a configured token the dashboard is read-only (403).
- ``GET /metrics`` (Prometheus) and ``GET /healthz``, also served on the metrics port as by
  every worker, for the chart's probes.

Every request passes :class:`~fraudpipe.dashboard.guard.Guard` first (Host and Origin checks,
security headers).

The snapshot is built once a second in a worker thread, whatever the number of viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

from fraudpipe import control
from fraudpipe.config import STAGES, Settings
from fraudpipe.dashboard import payload
from fraudpipe.dashboard.cluster import ClusterView, ScaleError
from fraudpipe.dashboard.collect import Collector
from fraudpipe.dashboard.guard import Guard, allowed_hosts
from fraudpipe.layout import Layout
from fraudpipe.logs import get_logger
from fraudpipe.metrics import Health, serve

STATIC = Path(__file__).parent / "static"
INTERVAL_S = 1.0
MAX_REPLICAS = 100


class _Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.viewers = Gauge("fraudpipe_dashboard_viewers", "Open WebSockets.", registry=r)
        self.snapshot_seconds = Histogram(
            "fraudpipe_dashboard_snapshot_seconds", "Time to build one snapshot.", registry=r
        )
        self.controls = Counter(
            "fraudpipe_dashboard_controls",
            "Control requests, by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        # The snapshot's quality (dashboard.quality): role champion or shadow, and the
        # champion again over the shadow's rows (champion_on_shadow_rows); source live (the
        # newest labeled rows) or holdout (its manifest). Absent while not measured.
        labels = ["role", "version", "source"]
        self.roc_auc = Gauge("fraudpipe_quality_roc_auc", "ROC AUC of a model.", labels, registry=r)
        self.average_precision = Gauge(
            "fraudpipe_quality_average_precision", "Average precision of a model.", labels,
            registry=r,
        )  # fmt: skip
        self.labeled_rows = Gauge(
            "fraudpipe_quality_labeled_rows",
            "Labeled live rows behind a model's live figures.",
            ["role", "version"],
            registry=r,
        )

    def observe(self, quality: payload.Quality) -> None:
        """The gauges of the latest snapshot's quality; unknown figures are left out."""
        for gauge in (self.roc_auc, self.average_precision, self.labeled_rows):
            gauge.clear()
        c, s = quality.champion, quality.shadow
        figures: list[tuple[str, str | None, str, float | None, float | None]] = [
            ("champion", c.version, "live", c.roc_auc, c.average_precision),
            ("champion", c.version, "holdout", c.holdout_roc_auc, c.holdout_average_precision),
        ]
        rows = [("champion", c.version, c.rows)]
        if s is not None:
            figures += [
                ("shadow", s.version, "live", s.roc_auc, s.average_precision),
                (
                    "champion_on_shadow_rows",
                    c.version,
                    "live",
                    s.champion_roc_auc,
                    s.champion_average_precision,
                ),
            ]
            rows.append(("shadow", s.version, s.rows))
        for role, version, source, auc, ap in figures:
            if version is None:
                continue
            if auc is not None:
                self.roc_auc.labels(role, version, source).set(auc)
            if ap is not None:
                self.average_precision.labels(role, version, source).set(ap)
        for role, version, n in rows:
            if version is not None:
                self.labeled_rows.labels(role, version).set(n)


class Dashboard:
    def __init__(self, settings: Settings, cluster: ClusterView | None = None) -> None:
        self.settings = settings
        self.layout = Layout(settings.data_dir)
        self.cluster = cluster or ClusterView()
        self.collector = Collector(settings, self.cluster)
        self.metrics = _Metrics()
        self.health = Health(stale_after_s=30.0)
        self.latest: payload.Snapshot | None = None
        self.viewers: set[WebSocket] = set()
        self.log = get_logger("dashboard")
        self._changed = asyncio.Event()

    # -- the snapshot loop -----------------------------------------------------------------------

    async def refresh_forever(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                self.latest = await asyncio.to_thread(self.collector.snapshot)
                self.metrics.observe(self.latest.quality)
                self.health.tick()
            except Exception as exc:  # keep serving the last good snapshot, and say why
                self.log.error("dashboard.snapshot_failed", error=repr(exc))
            self.metrics.snapshot_seconds.observe(time.perf_counter() - started)
            if self.latest is not None:
                message = self.latest.model_dump_json()
                for ws in list(self.viewers):
                    with contextlib.suppress(Exception):
                        await ws.send_text(message)
            await asyncio.sleep(max(0.0, INTERVAL_S - (time.perf_counter() - started)))

    # -- routes ----------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def snapshot(self, request: Request) -> Response:
        if self.latest is None:
            return JSONResponse({"error": "no snapshot yet: starting"}, status_code=503)
        return Response(self.latest.model_dump_json(), media_type="application/json")

    async def history(self, request: Request) -> Response:
        doc = payload.History(points=list(self.collector.history))
        return Response(doc.model_dump_json(), media_type="application/json")

    async def websocket(self, ws: WebSocket) -> None:
        await ws.accept()
        self.viewers.add(ws)
        self.metrics.viewers.set(len(self.viewers))
        try:
            if self.latest is not None:
                await ws.send_text(self.latest.model_dump_json())
            while True:
                await ws.receive_text()  # the page sends nothing; this notices it leaving
        except WebSocketDisconnect:
            pass
        finally:
            self.viewers.discard(ws)
            self.metrics.viewers.set(len(self.viewers))

    async def prometheus(self, request: Request) -> Response:
        return PlainTextResponse(generate_latest(self.metrics.registry).decode())

    async def healthz(self, request: Request) -> Response:
        ok, why = self.health.check()
        return PlainTextResponse(why, status_code=200 if ok else 503)

    # -- controls --------------------------------------------------------------------------------

    def _refusal(self, request: Request) -> JSONResponse | None:
        token = self.settings.dashboard.token
        if token is None:
            return JSONResponse(
                {"error": "controls are disabled: no dashboard token is configured (read-only)"},
                status_code=403,
            )
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not given[7:]:
            return JSONResponse(
                {"error": "a token is required: Authorization: Bearer <token>"}, status_code=401
            )
        if not hmac.compare_digest(given[7:].encode(), token.get_secret_value().encode()):
            return JSONResponse({"error": "wrong token"}, status_code=401)
        return None

    async def control(self, request: Request) -> Response:
        action = request.path_params["action"]
        refused = self._refusal(request)
        if refused is not None:
            self.metrics.controls.labels(action, "refused").inc()
            return refused
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            message = await asyncio.to_thread(self._act, action, body)
        except ScaleError as exc:
            self.metrics.controls.labels(action, "failed").inc()
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (ValueError, TypeError, KeyError) as exc:
            self.metrics.controls.labels(action, "invalid").inc()
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=422)
        self.metrics.controls.labels(action, "ok").inc()
        self.log.info("dashboard.control", action=action, request=body, result=message)
        return JSONResponse({"ok": True, "message": message})

    def _act(self, action: str, body: dict[str, Any]) -> str:
        if action == "retrain":
            control.request_training(self.layout)
            return "retraining requested: train starts at its next step"
        if action == "generation":
            paused, rate = body.get("paused"), body.get("rate")
            if paused is None and rate is None:
                raise ValueError("give 'paused' (true/false) and/or 'rate' (rows/s > 0)")
            if paused is not None and not isinstance(paused, bool):
                raise ValueError("'paused' must be true or false")
            if rate is not None and (isinstance(rate, bool) or not float(rate) > 0):
                raise ValueError("'rate' must be a number of rows/s above 0")
            new = control.set_generation(
                self.layout, paused=paused, rate=None if rate is None else float(rate)
            )
            state = "paused" if new.paused else "running"
            return f"generation {state}, rate {new.rate or self.settings.gather.rate:g} rows/s"
        if action == "scale":
            stage, replicas = body["stage"], body["replicas"]
            if stage not in STAGES:
                raise ValueError(f"'stage' must be one of {', '.join(STAGES)}")
            if isinstance(replicas, bool) or not isinstance(replicas, int):
                raise ValueError("'replicas' must be a whole number")
            most = 1 if stage in ("gather", "train") else MAX_REPLICAS  # singletons: 0 or 1
            if not 0 <= replicas <= most:
                raise ValueError(f"'replicas' for {stage} must be 0..{most}")
            return self.cluster.scale(stage, replicas)
        raise ValueError(f"unknown action {action!r}: scale, generation or retrain")

    # -- the app ---------------------------------------------------------------------------------

    def app(self) -> ASGIApp:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            task = asyncio.create_task(self.refresh_forever())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        starlette = Starlette(
            routes=[
                Route("/", self.page),
                Route("/api/snapshot", self.snapshot),
                Route("/api/history", self.history),
                Route("/api/control/{action}", self.control, methods=["POST"]),
                Route("/metrics", self.prometheus),
                Route("/healthz", self.healthz),
                WebSocketRoute("/ws", self.websocket),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ],
            lifespan=lifespan,
        )
        return Guard(starlette, allowed_hosts(self.settings.dashboard))

    def server(self) -> uvicorn.Server:
        """The web server on dashboard.host:port (not started)."""
        d = self.settings.dashboard
        config = uvicorn.Config(
            self.app(),
            host=d.host,
            port=d.port,
            log_level="warning",
            access_log=False,
            ws="websockets-sansio",
            # The Guard reads X-Forwarded-Proto itself; nothing else here uses the client's
            # address or scheme, so uvicorn rewrites neither.
            proxy_headers=False,
        )
        return uvicorn.Server(config)


def run_dashboard(settings: Settings) -> int:
    """`fraudpipe worker --stage=dashboard`: serve until SIGTERM/SIGINT."""
    dash = Dashboard(settings)
    d = settings.dashboard
    serve(dash.metrics, dash.health, settings.metrics.host, settings.metrics.port)
    server = dash.server()
    dash.log.info(
        "dashboard.started",
        url=f"http://{d.host}:{d.port}/",
        controls="enabled" if d.token is not None else "read-only (no token)",
        cluster=dash.cluster.mode,
        allowed_hosts=allowed_hosts(d),
    )
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    server.run()
    return 0
