"""`np-mirror serve`: the mirror as a local Neuronpedia (same read API, plus pages).

`create_app(mirror_path)` is a Starlette ASGI app; run it with uvicorn (see
`cli/np_mirror/cmd_serve.py`). It is read-only, opens the database per request and
lets go of it shortly after (so a sync in another process can still write), checks the
`Host` header, and never builds SQL from request text. The API follows `npclient.wire`
(Neuronpedia's contract, shared with the client and the emulator) and answers bad input
with 400/404/405/413 and a JSON body, never 500; `api.py` lists which routes it serves.
"""

from .app import DEFAULT_ALLOWED_HOSTS, create_app

__all__ = ["create_app", "DEFAULT_ALLOWED_HOSTS"]
