"""A small on-disk cache (diskcache) for metadata responses: model lists and source sets.

These change rarely and are asked for at the start of every sync; caching them for a day
spares the API budget and lets a rerun of a complete source send no request at all.
The key is the server and the request, never the API key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Optional

from .paths import http_cache_dir

DEFAULT_TTL_S = 24 * 3600.0


class MetaCache:
    def __init__(self, directory: Optional[Path] = None, ttl_s: float = DEFAULT_TTL_S, enabled: bool = True) -> None:
        self.directory = Path(directory) if directory is not None else http_cache_dir()
        self.ttl_s = ttl_s
        self.enabled = enabled
        self._cache: Any = None

    def _open(self) -> Any:
        if self._cache is None:
            import diskcache

            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = diskcache.Cache(str(self.directory), size_limit=64 * 1024 * 1024)
        return self._cache

    async def get_or_fetch(self, key: str, fetch: Callable[[], Awaitable[Any]], *, refresh: bool = False) -> Any:
        """The cached JSON-able value for `key`, or `await fetch()` stored for `ttl_s`."""
        if not self.enabled:
            return await fetch()
        cache = self._open()
        if not refresh:
            hit = cache.get(key, default=None)
            if hit is not None:
                return hit
        value = await fetch()
        if value is not None:
            cache.set(key, value, expire=self.ttl_s)
        return value

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
