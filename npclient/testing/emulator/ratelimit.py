"""Per-IP sliding-window buckets, modelled on Neuronpedia's middleware.

What the real middleware does (apps/webapp/middleware.ts with @upstash/ratelimit):
- every matching bucket is charged in list order ('/', '/api', then endpoint prefixes);
  the first one that refuses stops the walk, so the broader buckets before it were
  already charged for the refused request, while the refusing bucket itself is not
  (Upstash's sliding window only increments on success);
- `x-limit-remaining` is the remaining count of the last bucket that was charged;
- the 429 body names the refusing bucket and always says `remainingRequests: 0`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import RateLimitConfig

__all__ = ["LimitDecision", "RateLimiter"]


@dataclass(frozen=True)
class LimitDecision:
    allowed: bool
    remaining: int | None  # for x-limit-remaining; None when no bucket matched
    endpoint: str = ""  # the refusing bucket when not allowed
    limit: int = 0


class _Upstash:
    """Upstash `slidingWindow`: two fixed windows, the previous one weighted by time left."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str, now: float) -> int:
        """Charge one request; return remaining, or -1 when refused (nothing charged)."""
        cur = math.floor(now / self.window)
        in_cur = self.counts.get((key, cur), 0)
        in_prev = self.counts.get((key, cur - 1), 0)
        frac = (now % self.window) / self.window
        prev_weighted = math.floor((1.0 - frac) * in_prev)
        if prev_weighted + in_cur >= self.limit:
            return -1
        self.counts[(key, cur)] = in_cur + 1
        if len(self.counts) > 4096:  # drop windows that can no longer matter
            self.counts = {k: v for k, v in self.counts.items() if k[1] >= cur - 1}
        return self.limit - (in_cur + 1 + prev_weighted)


class _Log:
    """Exact sliding log: at most `limit` accepted requests in any `window` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.hits: dict[str, deque[float]] = {}

    def hit(self, key: str, now: float) -> int:
        q = self.hits.setdefault(key, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) >= self.limit:
            return -1
        q.append(now)
        return self.limit - len(q)


class RateLimiter:
    """Thread-safe bucket set; `clock` is injectable so tests can drive time."""

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._build()

    def _build(self) -> None:
        algo = _Upstash if self.config.algorithm == "upstash" else _Log
        self._buckets = [
            (endpoint, exact, limit, algo(limit, self.config.window_s))
            for endpoint, limit, exact in self.config.buckets()
        ]

    def reset(self) -> None:
        with self._lock:
            self._build()

    @staticmethod
    def _matches(path: str, endpoint: str, exact: bool) -> bool:
        if exact:
            return path == endpoint or path.startswith(endpoint + "/")
        return path.startswith(endpoint)

    def hit(self, ip: str, path: str) -> LimitDecision:
        """Charge the request at `path` from `ip` and say whether it may proceed."""
        path = path.lower()
        if any(path.startswith(p) for p in self.config.unlimited_prefixes):
            return LimitDecision(True, None)
        remaining: int | None = None
        with self._lock:
            now = self.clock()
            for endpoint, exact, limit, bucket in self._buckets:
                if not self._matches(path, endpoint, exact):
                    continue
                left = bucket.hit(ip, now)
                if left < 0:
                    return LimitDecision(False, 0, endpoint, limit)
                remaining = left
        return LimitDecision(True, remaining)

    def rejection_body(self, decision: LimitDecision) -> dict[str, object]:
        """The 429 JSON body, worded as the real middleware words it."""
        window = self.config.window_label
        return {
            "endpoint": decision.endpoint,
            "limitPerWindow": decision.limit,
            "requestWindow": window,
            "remainingRequests": 0,
            "error": (
                f"Rate limit exceeded for this endpoint. The limit for this endpoint "
                f"({decision.endpoint}) is {decision.limit} requests per {window}. "
                "Contact johnny@neuronpedia.org to increase your rate limit."  # lib/env.ts CONTACT_EMAIL_ADDRESS default
            ),
        }
