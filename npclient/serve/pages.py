"""Server-rendered pages: the mirror's sources and features, readable offline.

URLs follow Neuronpedia's (`/{model}/{source}` and `/{model}/{source}/{index}`), so a link
copied from the site works on the mirror. Templates are Jinja2 with autoescaping on:
tokens and explanations are untrusted text and are shown, never run. Everything the pages
load (CSS, JS) is served from `/static`; no CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..tokens import visible_token
from .feature_page import DEFAULT_WINDOW, MAX_WINDOW, feature_context
from .reader import _INT_RE, MirrorReader, PageReads, _stored_index, _valid_source
from .source_page import SourceQuery, source_context

__all__ = ["page_routes", "render_error", "visible_token", "TEMPLATES"]

TEMPLATES = Path(__file__).parent / "templates"
_ENV = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(default=True, default_for_string=True))


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_ENV.get_template(name).render(**context), status_code=status)


def render_error(status: int, message: str) -> HTMLResponse:
    return render("error.html", status=status, title=f"{status}", message=message)


def _reader(request: Request) -> MirrorReader:
    return request.app.state.reader  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- handlers


async def index_page(request: Request) -> Response:
    rows = await run_in_threadpool(_reader(request).mirror.status)
    return render("index.html", title="np-mirror", sources=rows)


def _jump(rd: MirrorReader, model_id: str, source_id: str, text: str) -> tuple[str, str]:
    """(feature URL, "") for a jump-box index the source can hold, else ("", why not)."""
    index = _stored_index(text.strip())
    if index is None:
        return "", f"{text.strip()[:40]!r} is not a feature index (a whole number, 0 or more)"
    size = PageReads(rd).source_size(model_id, source_id)
    if size is not None and index >= size:
        return "", f"feature {index} is beyond this source, which has {size:,} features (0..{size - 1})"
    return f"/{model_id}/{source_id}/{index}", ""


async def source_page(request: Request) -> Response:
    model_id, source_id = request.path_params["model_id"], request.path_params["source_id"]
    if model_id == "static" or _valid_source(model_id, source_id) is None:
        return render_error(404, "This page could not be found.")
    query = SourceQuery.parse(request.query_params)
    rd = _reader(request)
    jump = request.query_params.get("index")
    if jump is not None:
        target, why = await run_in_threadpool(_jump, rd, model_id, source_id, jump)
        if target:
            return RedirectResponse(target, status_code=303)
        query = SourceQuery(page=query.page, sort=query.sort, order=query.order, q=query.q, umap=query.umap,
                            jump_error=why)
    ctx = await run_in_threadpool(source_context, rd, model_id, source_id, query)
    if ctx is None:
        return render_error(404, f"The mirror has no source {model_id}/{source_id}.")
    return render("source.html", **ctx)


async def feature_page(request: Request) -> Response:
    model_id, source_id = request.path_params["model_id"], request.path_params["source_id"]
    index = _stored_index(request.path_params["index"])
    if model_id == "static" or _valid_source(model_id, source_id) is None or index is None:
        return render_error(404, "This page could not be found.")
    raw_window = request.query_params.get("window", "")
    n = int(raw_window) if _INT_RE.fullmatch(raw_window) and len(raw_window) < 4 else DEFAULT_WINDOW
    ctx = await run_in_threadpool(feature_context, _reader(request), model_id, source_id, index, min(n, MAX_WINDOW))
    if ctx is None:
        return render_error(404, f"The mirror has no feature {model_id}/{source_id}/{index}.")
    return render("feature.html", **ctx)


def page_routes() -> list[Route]:
    return [
        Route("/", index_page, methods=["GET"]),
        Route("/{model_id}/{source_id}", source_page, methods=["GET"]),
        Route("/{model_id}/{source_id}/{index}", feature_page, methods=["GET"]),
    ]
