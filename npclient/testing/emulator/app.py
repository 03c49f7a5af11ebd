"""Assemble the emulator: routes plus the middleware that plays the network's part.

For every non-control request the middleware, in order: logs its arrival, charges the
rate-limit buckets (as Neuronpedia's edge middleware does, before any route runs), sleeps
the configured latency, answers 429 if refused, then draws a deterministic fault and
either replaces the route's answer or damages it on the way out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import EmulatorConfig
from .faults import HTML_500, HTML_502, JSON_500
from .routes import api_routes, control_routes, not_found_html
from .state import EmulatorState, RequestRecord

__all__ = ["create_app", "AppHooks", "EmulatedConnectionReset"]

ConnectionCloser = Callable[[Any, bool], bool]
_CORS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, POST"),
    (b"access-control-allow-headers", b"Content-Type"),
]


class EmulatedConnectionReset(ConnectionResetError):
    """Raised in-process (no socket to break) where a server would reset the connection."""


@dataclass
class AppHooks:
    """What the hosting server lends the app: a way to break the current connection.

    `connection_closer(client, hard)` closes the connection of `client` (scope["client"]);
    `hard=True` resets it (RST), `hard=False` closes it after flushing. It returns False when
    it could not find the connection.
    """

    connection_closer: ConnectionCloser | None = None


def _client_ip(scope: Scope) -> str:
    """middleware.ts keys every bucket by `ipAddress(request)` (@vercel/functions: `x-real-ip`)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-real-ip":
            return value.decode("latin-1").strip()
    client = scope.get("client")
    return str(client[0]) if client else "127.0.0.1"


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_whole(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


class EmulatorMiddleware:
    def __init__(self, app: ASGIApp, state: EmulatorState, hooks: AppHooks) -> None:
        self.app = app
        self.state = state
        self.hooks = hooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator"):
            await self.app(scope, receive, send)
            return
        arrival = time.monotonic()
        body = await _read_body(receive)
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        record = self.state.log.add(RequestRecord(
            t=arrival,
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            body=body,
            json=parsed,
            client=_client_ip(scope),
        ))
        try:
            await self._handle(scope, receive, send, record)
        finally:
            record.done = True

    async def _handle(self, scope: Scope, receive: Receive, send: Send, rec: RequestRecord) -> None:
        rt = self.state.runtime
        decision = rt.limiter.hit(rec.client, rec.path) if rt.limiter else None
        if rt.latency_s > 0:
            await asyncio.sleep(rt.latency_s)
        is_api = rec.path.lower().startswith("/api")
        if decision is not None and not decision.allowed:
            assert rt.limiter is not None
            rec.limited = True
            rec.status = 429
            # No Retry-After and no x-limit-remaining: the real 429 carries neither.
            await _send_whole(send, 429, orjson.dumps(rt.limiter.rejection_body(decision)),
                              [(b"content-type", b"application/json")])
            return
        extra = list(_CORS) if is_api else []
        if decision is not None and decision.remaining is not None and is_api:
            extra.append((b"x-limit-remaining", str(decision.remaining).encode()))

        fault = None
        if is_api:
            key_path = rec.path + ("?" + rec.query if rec.query else "")
            fault = rt.faults.decide(rec.method, key_path, rec.body)
        rec.fault = fault
        if fault == "slow":
            await asyncio.sleep(rt.faults.config.slow_s)
        elif fault == "reset":
            await self._reset(scope, receive, send)
            return
        elif fault in ("json500", "html500", "html502"):
            if fault == "json500":
                status, body, headers = 500, JSON_500, [(b"content-type", b"application/json"), *extra]
            elif fault == "html500":
                status, body, headers = 500, HTML_500, [(b"content-type", b"text/html; charset=utf-8"), *extra]
            else:  # a gateway's page: none of the app's headers
                status, body, headers = 502, HTML_502, [(b"content-type", b"text/html"), (b"server", b"cloudflare")]
            rec.status = status
            await _send_whole(send, status, body, headers)
            return

        try:
            status, headers, body = await self._call_route(scope, rec.body)
        except Exception:
            rec.status = 500  # an emulator bug: Starlette answers 500 and the server logs it
            raise
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"] + extra
        if fault == "truncated":
            rec.status = status
            await self._truncate(scope, receive, send, status, headers, body)
            return
        if fault == "malformed":
            status, body = 200, _malformed(body)
        rec.status = status
        await _send_whole(send, status, body, headers)

    async def _call_route(self, scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the route with the already-read body and capture its whole answer."""
        delivered = False
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, replay, capture)
        return int(start["status"]), list(start.get("headers", [])), b"".join(chunks)

    async def _await_disconnect(self, receive: Receive) -> None:
        """Let the server notice the broken connection, so it neither logs nor answers 500."""
        try:
            async with asyncio.timeout(2.0):
                while (await receive())["type"] != "http.disconnect":
                    pass
        except TimeoutError:
            pass

    async def _reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        closer = self.hooks.connection_closer
        if closer is not None and closer(scope.get("client"), True):
            await self._await_disconnect(receive)
            return
        raise EmulatedConnectionReset("emulated connection reset (no socket in-process)")

    async def _truncate(
        self, scope: Scope, receive: Receive, send: Send, status: int,
        headers: list[tuple[bytes, bytes]], body: bytes,
    ) -> None:
        declared = max(len(body), 1)
        cut = min(len(body) // 2, declared - 1)
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(declared).encode()), *headers],
        })
        closer = self.hooks.connection_closer
        if closer is None:
            await send({"type": "http.response.body", "body": body[:cut], "more_body": False})
            return
        await send({"type": "http.response.body", "body": body[:cut], "more_body": True})
        if closer(scope.get("client"), False):
            await self._await_disconnect(receive)


def _malformed(body: bytes) -> bytes:
    """A prefix of the real body (never valid JSON), served with an honest length."""
    out = body[: max(1, len(body) * 2 // 3)]
    try:
        orjson.loads(out)
    except orjson.JSONDecodeError:
        return out
    return out + b"\x00}"


def create_app(config: EmulatorConfig | EmulatorState | None = None, *, hooks: AppHooks | None = None) -> Starlette:
    """A Starlette app serving Neuronpedia's read API from `config` (or a shared state).

    `app.state.emulator` is the `EmulatorState`; `app.state.hooks` the `AppHooks`.
    """
    state = config if isinstance(config, EmulatorState) else EmulatorState(config)
    hooks = hooks or AppHooks()
    app = Starlette(
        routes=[*api_routes(), *control_routes()],
        middleware=[Middleware(EmulatorMiddleware, state=state, hooks=hooks)],
        exception_handlers={404: not_found_html},
    )
    app.state.emulator = state
    app.state.hooks = hooks
    return app
