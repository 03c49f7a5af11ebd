"""The async Neuronpedia client: one pooled connection, paced below the server's budget.

Every request goes through `_send`, the one place where pacing (`Pacer`), retries
(`RetryPolicy`) and concurrency bounds happen; httpx failures and error statuses become
`NPError`s through `errors.py`, the mapping the export bucket's client (`s3.py`) uses too.
Tests point `base_url` at the emulator, or pass `transport=` to run it in-process; nothing
patches httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Awaitable, Callable, Literal, Optional, Union

import httpx
import orjson

from .. import wire
from ..errors import (
    InvalidIdError,
    InvalidOptionError,
    NotFound,
    NPError,
    NPTransportError,
    PayloadError,
    RateLimited,
    RouteError,
    ServerError,
)
from ..ids import FeatureId, FeatureIdLike, SourceSetId
from ..models import Feature, ModelInfo, SearchPage, SearchResult, SourceSetInfo, VectorInfo
from .errors import TRANSPORT_ERRORS, raise_for_status, transport_error
from .pacing import DEFAULT_BUDGET, DEFAULT_COOLDOWN_S, Budget, Pacer
from .retry import RetryPolicy
from .transport import ShardedTransport

__all__ = [
    "NeuronpediaClient",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TIMEOUT",
    "ENDPOINT_BUDGETS",
    "FeatureResult",
    "resolve_base_url",
]

log = logging.getLogger("npclient.client")

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
#: Requests in flight at most. In flight is not rate: the `Pacer` alone decides how often a
#: request starts, so this only has to cover latency. At 50 ms a request, 32 left the one
#: event-loop thread idle a fifth of the time; 64 kept it busy (benchmarks/RESULTS.md).
DEFAULT_CONCURRENCY = 64
#: Features per `POST /api/features`. The endpoint is unbounded server-side; a feature with
#: 20+ activations is ~40 kB, so 25 keeps a response near 1 MB.
DEFAULT_BATCH_SIZE = 25
MAX_BATCH_SIZE = 200
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
#: Buckets with their own, much tighter, per-hour limits on Neuronpedia (90% of each), keyed
#: by the bucket's endpoint in middleware.ts: `/api/explanation/search` matches by prefix, so
#: search, search-all, search-model and search-release share its 200 an hour.
ENDPOINT_BUDGETS: Mapping[str, Budget] = {
    "/api/explanation/search": Budget(limit=180, window_s=3600.0, burst=5),
    "/api/search-all": Budget(limit=1440, window_s=3600.0, burst=10),
    "/api/activation/new": Budget(limit=900, window_s=3600.0, burst=10),
}

FeatureResult = Union[Feature, NPError]
#: Turns a 2xx body into the value a call returns; raises an `NPError` for a bad body.
Decode = Callable[[bytes, str], Any]
Sleep = Callable[[float], Awaitable[None]]


def resolve_base_url(base_url: Optional[str] = None) -> str:
    """The site root, from the argument, `NEURONPEDIA_BASE_URL`, or the public site."""
    url = (base_url or os.environ.get("NEURONPEDIA_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
    if url.endswith("/api"):  # a common slip: the root is wanted, `/api` is added per route
        url = url[: -len("/api")]
    if not url.startswith(("http://", "https://")):
        raise InvalidOptionError(f"base URL must start with http:// or https://, got {url!r}", option="base_url")
    return url


class NeuronpediaClient:
    """Async client for Neuronpedia's public API.

    `budget=None` turns pacing off (for a local server only); `concurrency` bounds the
    requests in flight. The API key, from the argument or `NEURONPEDIA_API_KEY`, is sent
    as `x-api-key` and appears in no repr, log line or error.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
        budget: Optional[Budget] = DEFAULT_BUDGET,
        endpoint_budgets: Optional[Mapping[str, Budget]] = None,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        retry: RetryPolicy = RetryPolicy(),
        batch_size: int = DEFAULT_BATCH_SIZE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if concurrency < 1:
            raise InvalidOptionError("concurrency must be >= 1", option="concurrency")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise InvalidOptionError(f"batch_size must be within 1..{MAX_BATCH_SIZE}", option="batch_size")
        self.base_url = resolve_base_url(base_url)
        key = api_key if api_key is not None else os.environ.get("NEURONPEDIA_API_KEY")
        headers = {"accept": "application/json", "user-agent": "np-mirror (npclient)"}
        if key:
            headers["x-api-key"] = key
        self._has_key = bool(key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            transport=transport if transport is not None else ShardedTransport(concurrency),
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=True,
        )
        self.concurrency = concurrency
        self.retry = retry
        self.batch_size = batch_size
        self._sleep = sleep
        self._clock = clock
        self._semaphore = asyncio.Semaphore(concurrency)
        self.pacer: Optional[Pacer] = (
            Pacer(budget, cooldown_s=cooldown_s, clock=clock, sleep=sleep) if budget is not None else None
        )
        budgets = ENDPOINT_BUDGETS if endpoint_budgets is None else endpoint_budgets
        self.endpoint_pacers: dict[str, Pacer] = {
            path: Pacer(b, cooldown_s=cooldown_s, clock=clock, sleep=sleep, name=path)
            for path, b in budgets.items()
        } if budget is not None else {}
        self._paced_prefixes = tuple(self.endpoint_pacers)
        self._post_supported = True
        self.requests_sent = 0

    def __repr__(self) -> str:
        return (
            f"NeuronpediaClient(base_url={self.base_url!r}, api_key={'set' if self._has_key else 'unset'}, "
            f"concurrency={self.concurrency}, pacer={self.pacer!r}, retry={self.retry!r})"
        )

    def waiting(self) -> Optional[tuple[float, str]]:
        """(wall-clock time, reason) until which requests are held back by the budget or a 429
        cooldown, or None. Progress lines show it as "rate limit: waiting until HH:MM"."""
        now_mono, now_wall = self._clock(), time.time()
        for pacer in ([self.pacer] if self.pacer else []) + list(self.endpoint_pacers.values()):
            until = pacer.waiting_until()
            if until is not None:
                reason = "429 cooldown" if pacer.cooldown_left > 0 else "rate limit"
                return now_wall + (until - now_mono), reason
        return None

    async def __aenter__(self) -> "NeuronpediaClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- the one request path --------------------------------------------------------------
    def _pacers_for(self, path: str) -> list[Pacer]:
        """The shared budget, then the tight bucket this path is charged to (if we pace it).

        The bucket is the one whose count `x-limit-remaining` reports (`wire.limit_bucket`), so
        the last pacer here is always the one to tighten from that header.
        """
        pacers = [self.pacer] if self.pacer is not None else []
        if self.endpoint_pacers and path.lower().startswith(self._paced_prefixes):
            bucket = self.endpoint_pacers.get(wire.limit_bucket(path))
            if bucket is not None:
                pacers.append(bucket)
        return pacers

    async def _send(
        self, method: str, path: str, *, json: Any = None, decode: Optional[Decode] = None, retry_route_errors: bool = True
    ) -> Any:
        """Send one API call; return its body decoded (JSON by default) or raise an `NPError`.

        Decoding happens inside the retry loop, so a truncated or malformed body
        (`NPTransportError` from `decode`) is fetched again like any transient fault.
        """
        async for attempt in self.retry.retrying(self._sleep, route_errors=retry_route_errors):
            with attempt:
                return await self._send_once_through_cooldowns(method, path, json, decode or _decode_json)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _send_once_through_cooldowns(self, method: str, path: str, json: Any, decode: Decode) -> Any:
        pacers = self._pacers_for(path)
        cooldowns = 0
        while True:
            try:
                async with self._semaphore, contextlib.AsyncExitStack() as stack:
                    for pacer in pacers:
                        await stack.enter_async_context(pacer.slot())
                    content = await self._send_once(method, path, json, pacers)
                return decode(content, self.base_url + path)
            except RateLimited as exc:
                target = self._pacer_for_429(pacers, exc)
                if target is None or cooldowns >= self.retry.max_rate_limited:
                    raise
                cooldowns += 1
                waited = target.on_rate_limited(exc.retry_after)
                log.warning("429 from %s: pausing %s requests for %.0f s", path, target.name, waited)

    def _pacer_for_429(self, pacers: list[Pacer], exc: RateLimited) -> Optional[Pacer]:
        """A tight endpoint's own 429 cools that endpoint; anything else cools every request."""
        try:
            endpoint = orjson.loads(exc.body).get("endpoint") if exc.body else None
        except (orjson.JSONDecodeError, AttributeError):
            endpoint = None
        for pacer in pacers[1:]:
            if endpoint and str(endpoint).rstrip("/") == pacer.name:
                return pacer
        return pacers[0] if pacers else None

    async def _send_once(self, method: str, path: str, json: Any, pacers: list[Pacer]) -> bytes:
        url = self.base_url + path
        self.requests_sent += 1
        try:
            if json is None:
                response = await self._http.request(method, path)
            else:
                response = await self._http.request(
                    method, path, content=orjson.dumps(json), headers={"content-type": "application/json"}
                )
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, url) from None
        log.debug("%s %s -> %s", method, path, response.status_code)
        raise_for_status(response, url)
        remaining = response.headers.get("x-limit-remaining")
        if remaining is not None and remaining.strip().lstrip("-").isdigit() and pacers:
            # The header counts the last bucket charged: a search reports the 200/h search
            # bucket, never the 25,000/h one, so it must not shrink the feature budget.
            if len(pacers) == 1:  # no tight bucket of ours matches: the header counts `/api`
                target: Optional[Pacer] = pacers[0] if wire.limit_bucket(path) in ("/", "/api") else None
            else:
                target = pacers[-1]
            if target is not None:
                target.observe_remaining(int(remaining))
        return response.content

    # ---- features ------------------------------------------------------------------------
    async def get_feature(self, feature: FeatureIdLike) -> Feature:
        """`GET /api/feature/{model}/{source}/{index}`: the full feature, untrimmed."""
        fid = FeatureId.coerce(feature)
        return await self._send(  # type: ignore[no-any-return]
            "GET", f"/api/feature/{fid.model_id}/{fid.source}/{fid.index}", decode=_decode_feature
        )

    async def get_features(
        self,
        features: Iterable[FeatureIdLike],
        *,
        method: Literal["post", "get"] = "post",
        max_acts: Optional[int] = None,
    ) -> list[FeatureResult]:
        """Many features, in input order; a feature that failed is its `NPError`, not a raise."""
        ids = [FeatureId.coerce(f) for f in features]
        results: dict[FeatureId, FeatureResult] = {}
        async for fid, result in self.iter_features(ids, method=method, max_acts=max_acts):
            results[fid] = result
        return [results[fid] for fid in ids]

    async def iter_features(
        self,
        features: Iterable[FeatureIdLike],
        *,
        method: Literal["post", "get"] = "post",
        max_acts: Optional[int] = None,
    ) -> AsyncIterator[tuple[FeatureId, FeatureResult]]:
        """Yield `(id, Feature | NPError)` as they complete, at most `concurrency` at a time.

        `post` batches ids into `POST /api/features` (one request for many features is far
        kinder to the per-IP budget; its explanations come trimmed) and falls back to GET
        for what a batch did not return; `get` uses the untrimmed single-feature endpoint.
        """
        ids = list(dict.fromkeys(FeatureId.coerce(f) for f in features))  # validate all first
        size = self.batch_size if method == "post" else 1
        batches = [ids[i : i + size] for i in range(0, len(ids), size)]
        if not batches:
            return
        pending: asyncio.Queue[list[FeatureId]] = asyncio.Queue()
        for batch in batches:
            pending.put_nowait(batch)
        done: asyncio.Queue[Optional[list[tuple[FeatureId, FeatureResult]]]] = asyncio.Queue()

        async def worker() -> None:
            try:
                while True:
                    try:
                        batch = pending.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    await done.put(await self._fetch_batch(batch, method, max_acts))
            finally:
                await done.put(None)

        workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(batches)))]
        try:
            running = len(workers)
            while running:
                item = await done.get()
                if item is None:
                    running -= 1
                    continue
                for pair in item:
                    yield pair
            for task in workers:
                task.result()  # surface a bug in a worker rather than hang or drop it
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _fetch_batch(
        self, batch: Sequence[FeatureId], method: str, max_acts: Optional[int]
    ) -> list[tuple[FeatureId, FeatureResult]]:
        found: dict[FeatureId, FeatureResult] = {}
        if method == "post" and self._post_supported:
            try:
                found = await self._post_features(batch, max_acts)
            except NotFound:
                # A deploy without the batch route: use GETs from now on.
                self._post_supported = False
                log.warning("POST /api/features is not available here; falling back to GET")
            except NPError as exc:
                log.info("POST /api/features failed (%s); fetching that batch by GET", exc)
        missing = [fid for fid in batch if fid not in found]
        if missing:
            fetched = await asyncio.gather(*(self._get_or_error(fid) for fid in missing))
            found.update(zip(missing, fetched))
        return [(fid, found[fid]) for fid in batch]

    async def _post_features(
        self, batch: Sequence[FeatureId], max_acts: Optional[int]
    ) -> dict[FeatureId, FeatureResult]:
        body = []
        for fid in batch:
            item: dict[str, Any] = {"modelId": fid.model_id, "layer": fid.source, "index": fid.index}
            if max_acts is not None:
                item["maxActsToReturn"] = max_acts
            body.append(item)
        items = await self._send("POST", "/api/features", json=body)
        if not isinstance(items, list):
            raise NPTransportError("POST /api/features did not return a list", url=self.base_url + "/api/features")
        wanted = set(batch)
        out: dict[FeatureId, FeatureResult] = {}
        for raw in items:
            if not isinstance(raw, dict):
                continue
            try:
                feature = Feature.from_raw(raw)
            except ValueError:
                continue  # a malformed item is fetched again by GET
            if feature.id in wanted:
                out[feature.id] = feature
        return out

    async def _get_or_error(self, fid: FeatureId) -> FeatureResult:
        try:
            return await self.get_feature(fid)
        except NPError as exc:
            return exc

    # ---- listings, search, vectors ---------------------------------------------------------
    async def list_models(self) -> list[ModelInfo]:
        """`POST /api/model/list`: every model with its source sets and sources."""
        body = await self._send("POST", "/api/model/list", json={})
        if not isinstance(body, list):
            raise NPTransportError("model list is not a list", url=self.base_url + "/api/model/list")
        return [ModelInfo.model_validate(m) for m in body if isinstance(m, dict)]

    async def get_source_set(self, model_id: str, set_name: Optional[str] = None) -> Optional[SourceSetInfo]:
        """`GET /api/source-set/{model}/{set}`; `None` when Neuronpedia has no such set."""
        sid = SourceSetId.parse(model_id) if set_name is None else SourceSetId(model_id, set_name)
        try:
            body = await self._send("GET", f"/api/source-set/{sid.model_id}/{sid.set_name}")
        except NotFound:
            return None
        return SourceSetInfo.model_validate(body) if isinstance(body, dict) else None

    async def search_explanations(
        self,
        model_id: str,
        layers: Sequence[str],
        query: str,
        *,
        max_results: Optional[int] = 100,
    ) -> list[SearchResult]:
        """Semantic search over explanations, following pages (20 each) up to `max_results`.

        The endpoint has its own small budget (200/h on Neuronpedia), so pages are paced
        separately from feature fetches.
        """
        if len(query) < wire.SEARCH_MIN_QUERY:
            raise InvalidIdError(f"search query must be at least {wire.SEARCH_MIN_QUERY} characters, got {query!r}")
        results: list[SearchResult] = []
        offset = 0
        while max_results is None or len(results) < max_results:
            try:
                body = await self._send(
                    "POST",
                    wire.SEARCH_PATH,
                    json={"modelId": model_id, "layers": list(layers), "query": query, "offset": offset},
                    retry_route_errors=False,
                )
            except RouteError as exc:
                raise RouteError(exc.status_code, exc.url, exc.body + " (Neuronpedia answers this for an unknown "
                                 "model or source set, or when its embedding service fails; not retried against "
                                 "the 200-an-hour search budget)") from None
            page = SearchPage.model_validate(body)
            results.extend(page.results)
            # Neuronpedia sets hasMore and nextOffset only on a full page of 20.
            if not page.has_more or not page.results or page.next_offset is None or page.next_offset <= offset:
                break
            offset = page.next_offset
        return results if max_results is None else results[:max_results]

    async def get_vector(self, model_id: str, source: str, index: int | str) -> VectorInfo:
        """`POST /api/vector/get`: a stored vector (steering vectors; SAE features have none)."""
        fid = FeatureId(model_id, source, index)  # type: ignore[arg-type]
        try:
            body = await self._send(
                "POST", wire.VECTOR_GET_PATH, json={"modelId": fid.model_id, "source": fid.source, "index": str(fid.index)}
            )
        except ServerError as exc:
            # app/api/vector/get/route.tsx: with no stored vector it asks an inference server,
            # which fails for SAE features, and answers its 500 envelope.
            raise NotFound(404, exc.url, f"no stored vector for {fid} (Neuronpedia answered {exc.status_code})") from None
        vector = body.get("vector") if isinstance(body, dict) else None
        if not isinstance(vector, dict):
            raise NotFound(404, self.base_url + "/api/vector/get", f"no stored vector for {fid}")
        return VectorInfo.model_validate(vector)


def _decode_json(content: bytes, url: str) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        raise NPTransportError(f"malformed JSON body ({len(content)} bytes)", url=url) from None


def _decode_feature(content: bytes, url: str) -> Feature:
    """One pass from bytes to `Feature`; the slower diagnosis runs only for a bad body."""
    try:
        return Feature.from_json(content)
    except ValueError as exc:
        reason = str(exc)[:200]
    body = _decode_json(content, url)  # not JSON at all: transient, retried
    if body is None:
        # Neuronpedia answers an unknown feature with 404, but some deploys send `null`.
        raise NotFound(404, url, "null body")
    if not isinstance(body, dict):
        raise NPTransportError("feature body is not a JSON object", url=url)
    raise PayloadError(f"unparseable feature at {url}: {reason}")
