"""The ASGI app (Starlette) and the server (uvicorn) of ``ablator serve``.

Every route is a GET: the dashboard reads the store and nothing else (operator commands stay in
the CLI). The page is static (``static/index.html``, ``dashboard.js``, ``dashboard.css`` and a
vendored Chart.js, so nothing is fetched from the internet); it asks ``/api/*`` for JSON.

An optional access token guards every route, for shared machines: ``Authorization: Bearer
TOKEN``, or ``?token=TOKEN`` once (the server then sets an HttpOnly cookie and redirects to the
same URL without it). Tokens are compared in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import contextlib
import hmac
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec

from ablator.errors import AblatorError, extra_hint
from ablator.serve.trial import trial_detail
from ablator.serve.view import NotReady, StoreView

try:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise AblatorError(
        f"ablator serve needs the 'serve' extra ({exc.name} is missing): "
        + extra_hint("serve", ["starlette>=0.40", "uvicorn>=0.30"])
    ) from None

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "ablator_token"
TOKEN_ENV = "ABLATOR_SERVE_TOKEN"
#: Scripts only from this server; styles also inline (Chart.js sizes its canvas with them).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class ServeOptions:
    """How ``ablator serve`` listens. ``token``: required on every request when set."""

    host: str = "127.0.0.1"
    port: int = 8050
    token: str | None = None
    interval: float = 5.0


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        msgspec.json.encode(data),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class _TokenGate:
    """ASGI middleware: every request carries the token (header, cookie, or ``?token=`` once)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    def _ok(self, given: str | None) -> bool:
        assert self.token is not None
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        query = request.query_params.get("token")
        if query is not None and self._ok(query):
            # Trade the token in the URL for a cookie, so that it leaves the address bar.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, query, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        if self._ok(bearer) or self._ok(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(
            "ablator serve: this dashboard needs its access token: open the URL that `ablator serve` "
            "printed (it ends in ?token=...), or send 'Authorization: Bearer TOKEN'.\n",
            status_code=401,
        )
        await response(scope, receive, send)


class _Headers:
    """ASGI middleware: a Content-Security-Policy (and friends) on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)  # type: ignore[arg-type]


def create_app(view: StoreView, *, token: str | None = None, start: bool = True) -> Starlette:
    """The dashboard over ``view``. ``start``: run its background refresher while serving."""

    def endpoint(make: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            from starlette.concurrency import run_in_threadpool

            view.touched()
            try:
                # Polars and store reads block: off the event loop, in Starlette's thread pool.
                return _json(await run_in_threadpool(make, request))
            except NotReady as exc:
                return _json({"error": str(exc), "ready": False}, status=503)
            except AblatorError as exc:
                return _json({"error": str(exc)}, status=400)

        return handle

    def trials(request: Request) -> Any:
        q = request.query_params
        filters = {k[2:]: v for k, v in q.multi_items() if k.startswith("f.") and v}
        return view.trials(
            status=q.get("status") or None,
            filters=filters,
            metric=q.get("metric") or None,
            sort=q.get("sort") or "index",
            descending=q.get("desc") in ("1", "true"),
            offset=_int(q.get("offset"), 0),
            limit=_int(q.get("limit"), 100),
        )

    def trial(request: Request) -> Any:
        snap = view.require()
        index = _int(request.path_params["index"], -1)
        log = request.query_params.get("log")
        return snap.cached(
            ("trial", index, log),
            lambda: trial_detail(view.store, snap.results, index, log_epoch=_int(log, -1) if log else None),
        )

    async def index(request: Request) -> Response:
        view.touched()
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start:
            view.start()
        try:
            yield
        finally:
            if start:
                view.stop()

    routes = [
        Route("/", index),
        Route("/api/state", endpoint(lambda r: view.state())),
        Route("/api/progress", endpoint(lambda r: view.progress())),
        Route("/api/columns", endpoint(lambda r: view.columns())),
        Route("/api/trials", endpoint(trials)),
        Route(
            "/api/curves",
            endpoint(
                lambda r: view.curves(r.query_params.get("metric") or None, r.query_params.get("group") or "")
            ),
        ),
        Route(
            "/api/effects",
            endpoint(
                lambda r: view.effects(
                    r.query_params.get("metric") or None,
                    value=r.query_params.get("value") or "best",
                    adjust=r.query_params.get("adjust") or "holm",
                )
            ),
        ),
        Route("/api/trial/{index:int}", endpoint(trial)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(_Headers), Middleware(_TokenGate, token=token)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise AblatorError(f"expected a whole number, got {value!r}") from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or StoreError-like advice."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AblatorError(f"serve: cannot resolve --host {host!r}: {exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise AblatorError(
            f"serve: cannot listen on {host}:{port} ({exc.strerror}); choose another --port (0: any free one)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(view: StoreView, options: ServeOptions, *, announce: Callable[[str], None] | None = None) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    import uvicorn

    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if options.token:
        url += f"?token={options.token}"
    (announce or (lambda s: print(s, flush=True)))(url)
    app = create_app(view, token=options.token)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.should_exit and not server.started:  # pragma: no cover - uvicorn reported why
        print("ablator serve: the server did not start", file=sys.stderr)


__all__ = ["COOKIE", "TOKEN_ENV", "ServeOptions", "bind", "create_app", "serve"]
