"""Routes: the pages (one static shell, routed in the browser), ``/api/...`` JSON for each
page (so the dashboard is scriptable), the event stream, and the bundled chart library."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from blackboard.blackboard import Blackboard
from blackboard.errors import BlackboardError, ConfigError, StoreError, TraceError
from blackboard.logs import get_logger
from blackboard.shell.dashboard import dlq, traces
from blackboard.shell.dashboard.audit import AuditLog
from blackboard.shell.dashboard.auth import change_refusal, may_read
from blackboard.shell.dashboard.events import stream
from blackboard.shell.dashboard.sampler import Sampler
from blackboard.shell.dashboard.settings import DashboardSettings

log = get_logger("dashboard")

STATIC = Path(__file__).parent / "static"
Endpoint = Callable[[Request], Awaitable[Response]]


class JSON(JSONResponse):
    """JSON rendered by orjson (datetimes, NaN-free numbers)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def plotly_js() -> Path:
    """The ``plotly.min.js`` bundled in the installed ``plotly`` package.

    Raises:
        ConfigError: plotly is not installed or ships no bundle.
    """
    spec = importlib.util.find_spec("plotly")  # found, not imported: only its file is served
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the dashboard needs plotly: pip install plotly")
    path = Path(spec.submodule_search_locations[0]) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise ConfigError(f"plotly ships no bundled plotly.min.js at {path}")
    return path


@dataclass
class Dashboard:
    """What the routes share: the board, settings, sampler and audit log."""

    board: Blackboard
    settings: DashboardSettings
    sampler: Sampler
    audit: AuditLog


def _error(exc: BlackboardError) -> JSON:
    """Our error as a JSON answer: bad input 400, missing traces 404, store trouble 503."""
    status = 500
    if isinstance(exc, ConfigError):
        status = 400
    elif isinstance(exc, TraceError):
        status = 404
    elif isinstance(exc, StoreError):
        status = 503
    return JSON({"error": str(exc)}, status_code=status)


def _reader(dash: Dashboard, fn: Endpoint) -> Endpoint:
    """Refuse reads off loopback without the key; turn our errors into JSON answers."""

    @functools.wraps(fn)
    async def wrapped(request: Request) -> Response:
        if not may_read(dash.settings, request):
            return JSON({"error": "a valid API key is required to read"}, status_code=401)
        try:
            return await fn(request)
        except BlackboardError as exc:
            return _error(exc)
        except ValueError as exc:  # a query parameter that is not a number
            return JSON({"error": f"bad request: {exc}"}, status_code=400)

    return wrapped


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"the request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError("the request body must be a JSON object")
    return doc


def create_app(board: Blackboard, settings: DashboardSettings) -> Starlette:
    """The dashboard as an ASGI application over an open ``board``.

    Raises:
        ConfigError: plotly's bundle is missing.
    """
    dash = Dashboard(board, settings, Sampler(board, settings), AuditLog(settings.audit_log))
    chart_js = plotly_js()

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def plotly(request: Request) -> Response:
        return FileResponse(chart_js, media_type="text/javascript")

    async def overview(request: Request) -> Response:
        return JSON(dash.sampler.overview())

    async def group(request: Request) -> Response:
        doc = dash.sampler.group(request.path_params["group"])
        if doc is None:
            return JSON({"error": "no such group (yet)"}, status_code=404)
        return JSON(doc)

    async def topics(request: Request) -> Response:
        return JSON({"topics": dash.sampler.topics()})

    async def events(request: Request) -> Response:
        return StreamingResponse(
            stream(dash.sampler),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def dlq_list(request: Request) -> Response:
        return JSON(await run_in_threadpool(dlq.listing, board, dict(request.query_params)))

    async def dlq_show(request: Request) -> Response:
        ident = request.path_params["ident"]
        found = await run_in_threadpool(dlq.details, board, ident)
        if not found:
            return JSON({"error": f"no dead letter with id {ident}"}, status_code=404)
        return JSON({"dead_letters": found})

    def action(name: str, run: Callable[[Blackboard, dict[str, Any]], dict[str, Any]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            client = _client(request)
            try:
                body = await _body(request)
            except ConfigError as exc:
                return JSON({"error": str(exc)}, status_code=400)
            request_doc = {k: body.get(k) for k in ("ids", "type", "agent", "stage", "since")}
            request_doc = {k: v for k, v in request_doc.items() if v} | {
                "all": body.get("all") is True,
                "dry_run": bool(body.get("dry_run")),
            }
            refusal = change_refusal(settings, request)
            if refusal is not None:
                dash.audit.append(
                    name, outcome="refused", client=client, request=request_doc, error=refusal
                )
                log.warning("dashboard action refused", action=name, client=client)
                return JSON({"error": refusal}, status_code=401 if settings.api_key else 403)
            try:
                result = await run_in_threadpool(run, board, body)
            except BlackboardError as exc:
                dash.audit.append(
                    name, outcome="error", client=client, request=request_doc, error=str(exc)
                )
                return _error(exc)
            outcome = "dry_run" if result.get("dry_run") else "ok"
            dash.audit.append(name, outcome=outcome, client=client, request=request_doc, **result)
            log.info("dashboard action", action=name, outcome=outcome, client=client)
            return JSON(result)

        return endpoint

    async def audit(request: Request) -> Response:
        limit = int(request.query_params.get("limit", "100"))
        return JSON({"audit": await run_in_threadpool(dash.audit.tail, max(1, limit))})

    async def runs(request: Request) -> Response:
        return JSON({"runs": await run_in_threadpool(traces.list_runs, settings.traces)})

    async def run_report(request: Request) -> Response:
        given = request.query_params.get("bucket_ms")
        bucket = float(given) if given else None
        doc = await run_in_threadpool(
            traces.run_report, settings.traces, request.path_params["run"], bucket
        )
        return JSON(doc)

    async def compare(request: Request) -> Response:
        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not a or not b:
            raise ConfigError("compare needs two runs: ?a=RUN&b=RUN")
        rows = await run_in_threadpool(traces.compare, settings.traces, a, b)
        return JSON({"a": a, "b": b, "rows": rows})

    def read(fn: Endpoint) -> Endpoint:
        return _reader(dash, fn)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(dash.sampler.sample)  # pages have data from the start
        except Exception as exc:  # the pages say so; sampling retries every interval
            log.warning("first sample failed", error=str(exc), error_type=type(exc).__name__)
        task = asyncio.create_task(dash.sampler.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    routes = [
        *(Route(p, page) for p in ("/", "/topics", "/dlq", "/runs", "/groups/{group:path}")),
        Route("/vendor/plotly.min.js", plotly),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/api/overview", read(overview)),
        Route("/api/groups/{group:path}", read(group)),
        Route("/api/topics", read(topics)),
        Route("/api/events", read(events)),
        Route("/api/dlq", read(dlq_list)),
        Route("/api/dlq/replay", action("replay", dlq.replay), methods=["POST"]),
        Route("/api/dlq/purge", action("purge", dlq.purge), methods=["POST"]),
        Route("/api/dlq/{ident:path}", read(dlq_show)),
        Route("/api/audit", read(audit)),
        Route("/api/runs/compare", read(compare)),
        Route("/api/runs/{run}", read(run_report)),
        Route("/api/runs", read(runs)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.dashboard = dash
    return app
