"""Which failures are worth another attempt, and how long to wait between attempts.

Transient faults (connection resets, timeouts, 5xx, truncated or malformed bodies) are
retried with full-jitter exponential backoff, a bounded number of times. 400/401/404 are
answers, not faults: never retried; nor, for search, a route's own 500 "Unknown Error". 429 is not handled here at all: it goes to the
`Pacer` as a cooldown for every request (see `pacing.py`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from ..errors import InvalidOptionError, NPTransportError, RouteError, ServerError

__all__ = ["RetryPolicy", "RETRYABLE", "is_retryable"]

RETRYABLE = (NPTransportError, ServerError)


def is_retryable(exc: BaseException, *, route_errors: bool = True) -> bool:
    """Transport faults and 5xx; a route's own "Unknown Error" answer only if `route_errors`."""
    return isinstance(exc, RETRYABLE) and (route_errors or not isinstance(exc, RouteError))


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient faults: `max_attempts` tries in all, waits drawn from U(0, min(cap, base·2ⁿ)).

    `deadline_s` bounds the total time spent on one request, retries included.
    `max_rate_limited` bounds how many 429 cooldowns one request sits through.
    """

    max_attempts: int = 5
    initial_wait_s: float = 0.5
    max_wait_s: float = 30.0
    deadline_s: Optional[float] = None
    max_rate_limited: int = 3

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidOptionError("max_attempts must be >= 1", option="max_attempts")

    def retrying(
        self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, *, route_errors: bool = True
    ) -> AsyncRetrying:
        """`route_errors=False` for calls whose "Unknown Error" is an answer (search: an unknown
        model or set) and whose budget is too small to spend on retries."""
        stop = stop_after_attempt(self.max_attempts)
        if self.deadline_s is not None:
            stop = stop | stop_after_delay(self.deadline_s)
        return AsyncRetrying(
            retry=retry_if_exception(lambda e: is_retryable(e, route_errors=route_errors)),
            wait=wait_random_exponential(multiplier=self.initial_wait_s, max=self.max_wait_s),
            stop=stop,
            sleep=sleep,
            reraise=True,
        )

    @classmethod
    def none(cls) -> "RetryPolicy":
        return cls(max_attempts=1, max_rate_limited=0)
