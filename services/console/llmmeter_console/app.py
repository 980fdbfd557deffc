"""The console's HTTP face: pages, the drawer's JSON, the live tail as Server-Sent Events, exports.

Handlers only parse the URL, pick the caller's key, call `data` and render; every number
they show came from the query or alerts service through the client package.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from llmmeter.errors import LlmmeterError, NotFoundError, RpcError
from llmmeter.v1 import query_pb2
from llmmeter_console import alert_forms, data, formats
from llmmeter_console.backend import Backend, Backends
from llmmeter_console.settings import ConsoleSettings
from llmmeter_console.window import CHOICES, View, parse_view

_COOKIE = "llmmeter_key"
_STATIC = Path(__file__).parent / "static"


def find_chartjs(settings: ConsoleSettings) -> Path | None:
    """Chart.js as `make install` left it in `.tools/` (or where the settings say)."""
    if settings.chartjs_file is not None:
        return settings.chartjs_file
    relative = Path(".tools/node_modules/chart.js/dist/chart.umd.js")
    for folder in (Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents):
        if (folder / relative).is_file():
            return folder / relative
    return None


def create_app(settings: ConsoleSettings) -> Starlette:
    """The console application (what `python -m llmmeter_console` serves, and the tests start)."""
    backends = Backends(settings)
    env = Environment(loader=PackageLoader("llmmeter_console"), autoescape=select_autoescape())
    formats.register(env)
    chartjs = find_chartjs(settings)
    fixed_key = settings.api_key.get_secret_value() if settings.api_key else None

    def key_of(request: Request) -> str | None:
        return fixed_key or request.cookies.get(_COOKIE)

    def render(name: str, request: Request, **context: Any) -> HTMLResponse:
        page = env.get_template(name).render(path=request.url.path, choices=CHOICES,
                                             signed_in=bool(request.cookies.get(_COOKIE)), **context)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    def page(name: str, fetch: Callable[[Backend, View, Request], Awaitable[dict[str, Any]]],
             default_group: str = "model") -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            key = key_of(request)
            if key is None:
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            try:
                view = parse_view(dict(request.query_params), default_group)
            except ValueError as exc:
                return render("error.html", request, message=str(exc), status=400)
            try:
                content = await fetch(await backends.get(key), view, request)
            except LlmmeterError as exc:
                return render("error.html", request, message=_explain(exc), view=view)
            return render(name, request, view=view, **content)
        return handler

    async def detail(request: Request) -> Response:
        key = key_of(request)
        if key is None:
            return JSONResponse({"error": "sign in first"}, status_code=401)
        try:
            found = await data.request_detail(await backends.get(key), request.path_params["request_id"])
        except NotFoundError:
            return JSONResponse({"error": "no such request"}, status_code=404)
        except LlmmeterError as exc:
            return JSONResponse({"error": _explain(exc)}, status_code=502)
        return JSONResponse(found)

    async def tail(request: Request) -> Response:
        """New requests as Server-Sent Events, relayed from the query service's TailRequests stream."""
        key = key_of(request)
        if key is None:
            return PlainTextResponse("sign in first", status_code=401)
        backend = await backends.get(key)
        stream = backend.query.tail_requests(query_pb2.TailRequestsRequest(
            filter=request.query_params.get("filter", "")))

        async def events() -> AsyncIterator[str]:
            yield ": connected\n\n"
            try:
                async for item in stream:
                    row = formats.row_dict(item.request)
                    yield f"data: {json.dumps(row)}\n\n"
            except LlmmeterError as exc:
                yield f"event: failure\ndata: {json.dumps(_explain(exc))}\n\n"
            finally:
                await stream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def export(request: Request) -> Response:
        """What /metrics shows, as the aggregate export's CSV."""
        key = key_of(request)
        if key is None:
            return PlainTextResponse("sign in first", status_code=401)
        try:
            view = parse_view(dict(request.query_params))
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        backend = await backends.get(key)
        chunks = backend.query.export_aggregates(query_pb2.ExportAggregatesRequest(
            group_by=[view.group], granularity=data.granularity(view), **view.window()))  # type: ignore[arg-type]

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield chunk.data

        return StreamingResponse(body(), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="llmmeter-{view.group}.csv"'})

    async def alert_action(request: Request) -> Response:
        """Create or update a rule, delete one, create or delete a silence; back to /alerts with the
        outcome (or the alerts service's refusal, naming the field) shown."""
        key = key_of(request)
        if key is None:
            return RedirectResponse("/login?next=/alerts", status_code=303)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        action = request.path_params["action"]
        backend = await backends.get(key)
        try:
            done = await alert_forms.apply(backend.alerts, action, form)
        except (ValueError, LlmmeterError) as exc:
            message = _explain(exc) if isinstance(exc, LlmmeterError) else str(exc)
            return RedirectResponse(f"/alerts?{urlencode({'error': message})}", status_code=303)
        return RedirectResponse(f"/alerts?{urlencode({'done': done})}", status_code=303)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return render("login.html", request, next=request.query_params.get("next", "/usage"))
        form = parse_qs((await request.body()).decode(errors="replace"))  # a urlencoded form of two fields
        api_key = form.get("api_key", [""])[0].strip()
        target = form.get("next", ["/usage"])[0]
        target = target if target.startswith("/") and not target.startswith("//") else "/usage"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(_COOKIE, api_key, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(_COOKIE)
        return response

    async def chart_js(request: Request) -> Response:
        if chartjs is None:
            return PlainTextResponse("Chart.js is not installed: run `make install`", status_code=404)
        return FileResponse(chartjs, media_type="text/javascript")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def root(request: Request) -> Response:
        return RedirectResponse("/usage", status_code=307)

    async def fetch_usage(b: Backend, view: View, request: Request) -> dict[str, Any]:
        return await data.usage(b, view, request.query_params.get("page_token", ""))

    async def fetch_logs(b: Backend, view: View, request: Request) -> dict[str, Any]:
        return await data.logs(b, view, request.query_params.get("page_token", ""))

    async def fetch_metrics(b: Backend, view: View, request: Request) -> dict[str, Any]:
        return {**await data.metrics(b, view), "groups": data.GROUPS}

    async def fetch_analytics(b: Backend, view: View, request: Request) -> dict[str, Any]:
        return await data.analytics(b, view)

    async def fetch_alerts(b: Backend, view: View, request: Request) -> dict[str, Any]:
        return {**await data.alerts(b), "metrics": alert_forms.RULE_METRICS,
                "comparisons": list(alert_forms.COMPARISONS),
                "done": request.query_params.get("done", ""), "failed": request.query_params.get("error", "")}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await backends.close()

    app = Starlette(routes=[
        Route("/", root),
        Route("/usage", page("usage.html", fetch_usage)),
        Route("/logs", page("logs.html", fetch_logs)),
        Route("/metrics", page("metrics.html", fetch_metrics)),
        Route("/analytics", page("analytics.html", fetch_analytics)),
        Route("/alerts", page("alerts.html", fetch_alerts)),
        Route("/alerts/{action}", alert_action, methods=["POST"]),
        Route("/api/requests/{request_id:path}", detail),
        Route("/api/tail", tail),
        Route("/export/aggregates.csv", export),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/vendor/chart.umd.js", chart_js),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
    ], lifespan=lifespan)
    return app


def _explain(exc: LlmmeterError) -> str:
    """A service failure as a line for a person, with what to do about the usual ones."""
    if isinstance(exc, RpcError) and exc.code.name == "UNAUTHENTICATED":
        return ("The services refused the console's API key: sign in with a valid key, or set "
                "LLMMETER_CONSOLE_API_KEY.")
    if isinstance(exc, RpcError) and exc.code.name == "PERMISSION_DENIED":
        return f"This key may not see this page: {exc.details}"
    return str(exc)

