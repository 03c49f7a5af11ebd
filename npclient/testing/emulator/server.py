"""Serve the emulator over real loopback: uvicorn in a daemon thread (moto's ThreadedMotoServer)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from .app import AppHooks, create_app
from .config import EmulatorConfig
from .state import EmulatorState

__all__ = ["EmulatorServer", "ThreadedServer"]


class ThreadedServer:
    """An ASGI app served by uvicorn in a daemon thread on a loopback address.

    Subclasses set `self.app` before `start()`. Start and stop take well under a second.
    """

    thread_name = "npclient-server"

    def __init__(self, host: str, port: int, *, timeout_keep_alive: int = 30) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"{type(self).__name__} only binds loopback addresses")
        self.host = host
        self._port = port
        self._keep_alive = timeout_keep_alive
        self.app: Any = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> "ThreadedServer":
        if self._thread is not None:
            raise RuntimeError("server already started")
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self._port,
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            limit_concurrency=None,
            backlog=2048,
            timeout_keep_alive=self._keep_alive,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, name=self.thread_name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError(f"{type(self).__name__} failed to start")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{type(self).__name__} did not start in time")
            time.sleep(0.002)
        self._port = server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # connections that would not close: force it
            self._server.force_exit = True
            self._thread.join(timeout)
        self._thread = None
        self._server = None

    def __enter__(self) -> "ThreadedServer":
        return self.start() if self._thread is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ fault support

    def _close_connection(self, client: Any, hard: bool) -> bool:
        """Find the uvicorn connection serving `client` and break it (runs on the server loop)."""
        server = self._server
        if server is None or client is None:
            return False
        want = tuple(client)
        for proto in list(server.server_state.connections):
            if getattr(proto, "client", None) != want:
                continue
            transport: asyncio.Transport | None = getattr(proto, "transport", None)
            if transport is None:
                return False
            if hard:
                sock = transport.get_extra_info("socket")
                if sock is not None:  # linger 0: close sends RST, the peer sees a reset
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                transport.abort()
            else:
                transport.close()
            return True
        return False


class EmulatorServer(ThreadedServer):
    """`with EmulatorServer() as srv: httpx.get(srv.url + "/api/...")`.

    Binds 127.0.0.1 on an ephemeral port by default; start and stop take well under a
    second, so a test session can run many. `state` is shared with the app: inspect
    `srv.state.requests`, call `srv.state.reset()`, change `srv.state.faults`.
    """

    thread_name = "npclient-emulator"

    def __init__(
        self,
        config_or_state: EmulatorConfig | EmulatorState | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        timeout_keep_alive: int = 30,
    ) -> None:
        super().__init__(host, port, timeout_keep_alive=timeout_keep_alive)
        self.state = (
            config_or_state if isinstance(config_or_state, EmulatorState) else EmulatorState(config_or_state)
        )
        self.hooks = AppHooks(connection_closer=self._close_connection)
        self.app = create_app(self.state, hooks=self.hooks)
