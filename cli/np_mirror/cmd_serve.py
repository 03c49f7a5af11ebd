"""`np-mirror serve`: the mirror as a local Neuronpedia (same read API, plus pages)."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Annotated

import typer

from .common import resolve_db
from .errors import EXIT_FAILURES, fail
from .options import DbOpt


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, made before anything is announced; a port that is taken
    is one line and exit 1 (the request is sound, something else holds the port: as with a
    busy mirror), naming the port and what to do. uvicorn then serves on this very socket."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise fail(f"port {port} on {host} is already in use (another server?); choose a free one with --port",
                       EXIT_FAILURES) from None
        if exc.errno == errno.EACCES:
            raise fail(f"port {port} on {host} needs privileges; choose one above 1023 with --port", EXIT_FAILURES) from None
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_FAILURES) from None
    return sock


def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (3000 is where the official `neuronpedia` client looks with USE_LOCALHOST=true).")] = 3000,
    db: DbOpt = None,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow binding a non-loopback address (the API has no authentication).")] = False,
    allowed_host: Annotated[list[str], typer.Option("--allowed-host", help="Extra Host header names to answer (repeatable; loopback names are always allowed).", show_default=False)] = [],  # noqa: B006
) -> None:
    """Serve the mirror read-only over HTTP until Ctrl-C.

    Same routes and JSON as Neuronpedia (/api/feature/..., /api/features, /api/model/list,
    /api/source-set/..., /api/explanation/search, keyword-ranked: no embeddings offline),
    decoder rows of attached weights under /api/np-mirror/decoder/..., and pages at
    /{model}/{source} and /{model}/{source}/{index}. Bad requests get 400/404/405 with a JSON
    body, never 500. The database is opened per request and let go of shortly after, so `sync`
    can still write to it while this runs.
    """
    if not _is_loopback(host) and not allow_remote:
        raise fail(f"refusing to serve on {host}: not a loopback address (pass --allow-remote to expose the mirror)")
    if not 0 <= port <= 65535:
        raise fail(f"--port must be 0..65535, got {port}")
    import uvicorn

    from npclient.paths import default_db_path
    from npclient.serve import DEFAULT_ALLOWED_HOSTS, create_app

    db = resolve_db(db)
    path = db if db is not None else default_db_path()
    if not path.exists():
        raise fail(f"no mirror at {path} (run `np-mirror sync` first, or pass --db)")
    if any(not h.strip() for h in allowed_host):
        raise fail("--allowed-host takes a host name, got an empty one")
    hosts = list(DEFAULT_ALLOWED_HOSTS) + list(allowed_host)
    if allow_remote and not _is_loopback(host) and host not in ("0.0.0.0", "::"):
        hosts.append(host)
    sock = _listen(host, port)
    try:
        app = create_app(path, allowed_hosts=hosts)
        bound = sock.getsockname()[1]  # the real port, where --port 0 asked for any
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        typer.echo(f"np-mirror: serving {path} on http://{shown}:{bound} (Ctrl-C to stop)", err=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=bound, log_level="warning", access_log=False))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn stops cleanly, then passes the signal on: the normal end
            pass
    finally:
        sock.close()
