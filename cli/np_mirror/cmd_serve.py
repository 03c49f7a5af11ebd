"""`np-mirror serve`: the mirror as a local Neuronpedia (same read API, plus pages)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from .errors import fail
from .options import DbOpt


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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

    path = db if db is not None else default_db_path()
    if not path.exists():
        raise fail(f"no mirror at {path} (run `np-mirror sync` first, or pass --db)")
    if any(not h.strip() for h in allowed_host):
        raise fail("--allowed-host takes a host name, got an empty one")
    hosts = list(DEFAULT_ALLOWED_HOSTS) + list(allowed_host)
    if allow_remote and not _is_loopback(host) and host not in ("0.0.0.0", "::"):
        hosts.append(host)
    app = create_app(path, allowed_hosts=hosts)
    typer.echo(f"np-mirror: serving {path} on http://{host}:{port} (Ctrl-C to stop)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
