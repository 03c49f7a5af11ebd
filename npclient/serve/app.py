"""The ASGI app: Neuronpedia's read API and the pages, over one read-only mirror."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import wire
from ..errors import InvalidOptionError, MirrorBusyError, MirrorNotFound
from .api import MirrorReader, api_routes, json_response
from .pages import page_routes, render_error

__all__ = ["create_app", "DEFAULT_ALLOWED_HOSTS", "host_of"]

#: Host names (any port) a loopback server answers to; anything else is refused with 400,
#: so a web page elsewhere cannot reach the mirror through DNS rebinding.
DEFAULT_ALLOWED_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")
_PORT = re.compile(r"[0-9]{1,5}")


def host_of(header: Optional[str]) -> Optional[str]:
    """The lower-cased host name of a `Host` header (`[::1]:3000` -> `::1`), or None if malformed."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        name, rest = header[1:end], header[end + 1:]
    else:
        name, sep, port = header.partition(":")
        rest = sep + port
    if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
        return None
    return name or None


class _HostCheck:
    """Refuse a `Host` header not in `allowed` (names, any port; "*" allows any, "*.example.com" a
    domain) with a 400 JSON body, before anything else runs."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        names = {h.lower() for h in allowed}
        self.allow_any = "*" in names
        self.exact = {h.strip("[]") for h in names if not h.startswith("*")}
        self.suffixes = tuple(h[1:] for h in names if h.startswith("*."))

    def allows(self, header: Optional[str]) -> bool:
        if self.allow_any:
            return True
        host = host_of(header)
        return host is not None and (host in self.exact or (bool(self.suffixes) and host.endswith(self.suffixes)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allow_any:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        if self.allows(header):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        shown = (header or "")[:100]
        text = (f"Invalid host header {shown!r}: np-mirror serve answers only to {', '.join(sorted(self.exact))} "
                "(add names with --allowed-host)")
        await json_response(wire.error_envelope(text), 400)(scope, receive, send)


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


def _is_api(request: Request) -> bool:
    path = request.url.path
    return path == "/api" or path.startswith("/api/")


def _headers(exc: Exception) -> dict[str, str]:
    return dict(getattr(exc, "headers", None) or {})


async def _not_found(request: Request, exc: Exception) -> Response:
    if _is_api(request):
        text = f"no API route {request.url.path[:200]}"
        return json_response({"error": "Not Found", "message": text}, 404)
    return render_error(404, "This page could not be found.")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    headers = _headers(exc)  # Starlette's 405 carries `Allow`
    if _is_api(request):
        text = f"{request.method[:20]} is not allowed on {request.url.path[:200]}; allowed: {headers.get('Allow', '')}"
        return json_response({"error": "Method Not Allowed", "message": text}, 405, headers=headers)
    response = render_error(405, "Method not allowed.")
    response.headers.update(headers)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Any other HTTPException Starlette raises (e.g. a redirect-less 4xx from a mount)."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if _is_api(request):
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        return json_response(wire.error_envelope(str(detail)), status, headers=_headers(exc))
    return render_error(status, str(getattr(exc, "detail", "Error")))


async def _busy(request: Request, exc: Exception) -> Response:
    """The mirror stayed locked by a writer past `wait_s`: the server is busy, the request was fine."""
    text = f"the mirror is busy: {exc}"
    if _is_api(request):
        return json_response(wire.error_envelope(text), 503, headers={"Retry-After": "5"})
    response = render_error(503, text)
    response.headers["Retry-After"] = "5"
    return response


def _check_startup(mirror_path: str | Path, allowed_hosts: Sequence[str], linger_s: float, wait_s: float) -> None:
    """Refuse, before serving anything, what would make every request fail or the host check wrong."""
    if not Path(mirror_path).exists():
        raise MirrorNotFound(f"no mirror at {mirror_path} (run `np-mirror sync` first, or serve an existing mirror)")
    if isinstance(allowed_hosts, (str, bytes)):
        raise InvalidOptionError(f"allowed_hosts takes a list of host names, not the string {allowed_hosts!r}",
                                 option="allowed_hosts")
    empty = [h for h in allowed_hosts if not str(h).strip()]
    if empty:
        raise InvalidOptionError("allowed_hosts holds an empty host name", option="allowed_hosts")
    for name, value in (("linger_s", linger_s), ("wait_s", wait_s)):
        if not value >= 0:
            raise InvalidOptionError(f"{name} must be >= 0 seconds, got {value}", option=name)


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
    is not in `allowed_hosts` (names, any port; "*" allows all) get 400 with a JSON body.
    Startup errors: `MirrorNotFound` when no file is at `mirror_path`, `InvalidOptionError`
    for an `allowed_hosts` that is one string or holds an empty name, or a negative time.
    """
    _check_startup(mirror_path, allowed_hosts, linger_s, wait_s)
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
            Middleware(_HostCheck, allowed=list(allowed_hosts)),
            Middleware(_SecurityHeaders),
        ],
        exception_handlers={404: _not_found, 405: _method_not_allowed, HTTPException: _http_error,
                            MirrorBusyError: _busy},
        lifespan=lifespan,
    )
    app.state.reader = reader
    return app
