"""The ASGI app: Neuronpedia's read API and the pages, over one read-only mirror."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import MirrorReader, api_routes, json_response
from .pages import page_routes, render_error

__all__ = ["create_app", "DEFAULT_ALLOWED_HOSTS"]

#: Host names (any port) a loopback server answers to; anything else is refused with 400,
#: so a web page elsewhere cannot reach the mirror through DNS rebinding.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")
STATIC = Path(__file__).parent / "static"
_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class _SecurityHeaders:
    """A strict CSP (scripts only from /static) and nosniff on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if not scope["path"].startswith("/api/"):
                    headers.append((b"content-security-policy", _CSP))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return json_response({"error": "Not Found"}, 404)
    return render_error(404, "This page could not be found.")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return json_response({"error": "Method Not Allowed"}, 405)
    return render_error(405, "Method not allowed.")


def create_app(
    mirror_path: str | Path,
    *,
    allowed_hosts: Sequence[str] = DEFAULT_ALLOWED_HOSTS,
    linger_s: float = 0.5,
    wait_s: float = 30.0,
) -> Starlette:
    """A read-only Neuronpedia over the mirror at `mirror_path`.

    The database is opened per request and released `linger_s` after the last one, so a
    sync in another process gets the file between requests. Requests whose `Host` header
    is not in `allowed_hosts` (names, any port; "*" allows all) get 400.
    """
    reader = MirrorReader(mirror_path, linger_s=linger_s, wait_s=wait_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            reader.close()

    app = Starlette(
        routes=[
            *api_routes(),
            Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
            *page_routes(),
        ],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
            Middleware(_SecurityHeaders),
        ],
        exception_handlers={404: _not_found, 405: _method_not_allowed},
        lifespan=lifespan,
    )
    app.state.reader = reader
    return app
