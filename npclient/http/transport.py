"""A connection pool split into small shards.

httpcore's pool re-scans every connection on each request and response, so its cost per
request grows with the pool's size: at 32 connections it cost 0.8–1.6 ms of CPU per
request, at 8 about 0.2 ms (benchmarks/RESULTS.md, encode/httpcore#1035). Several pools of
at most 8 connections, used in turn, keep that cost flat at any concurrency.

The shards share one TLS context: building one loads the CA bundle, ~40 ms each.
"""

from __future__ import annotations

import itertools
import math

import httpx

SHARD_CONNECTIONS = 8


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, connections: int, *, per_shard: int = SHARD_CONNECTIONS) -> None:
        shards = max(1, math.ceil(connections / per_shard))
        size = math.ceil(connections / shards)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        tls = httpx.create_ssl_context()
        self._shards = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(shards)]
        self._turn = itertools.cycle(range(shards))

    @property
    def shards(self) -> int:
        return len(self._shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._shards[next(self._turn)].handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()
