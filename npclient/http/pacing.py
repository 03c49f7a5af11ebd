"""Client-side pacing: stay under Neuronpedia's sliding-window budget instead of bouncing off it.

Neuronpedia counts requests per client IP in a 60-minute sliding window and answers 429
without `Retry-After`; a short backoff after a 429 only burns more budget. So the client
paces itself below the budget and, after a 429, every request sits out a long cooldown.

Two rules together bound what the server can ever see:
- a sliding-window log in which a slot is held from the moment a request is sent until
  `window` seconds after its response arrived (the server stamps a request at arrival, which
  lies in between, so its window can never count more than ours);
- a token bucket (`burst` tokens, refilled at `limit / window` per second) so the budget is
  spread out rather than spent in the first seconds.

That guarantee is exact against a true sliding window. Neuronpedia's limiter (Upstash) only
approximates one, from two fixed windows, and can count up to `burst` more than a true window
would; so keep `limit + burst` at or under the server's limit. The default (22,500 + 50 of
25,000) does; `--rate` at the server's full rate would not.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional


from ..errors import InvalidOptionError

__all__ = ["Budget", "Pacer", "DEFAULT_BUDGET", "DEFAULT_COOLDOWN_S"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Neuronpedia's per-IP limit for /api is 25,000 requests per 60 minutes; we use 90% of it.
SERVER_LIMIT_PER_HOUR = 25_000
DEFAULT_COOLDOWN_S = 600.0


@dataclass(frozen=True)
class Budget:
    """At most `limit` requests in any `window_s` seconds, at most `burst` back to back."""

    limit: int
    window_s: float
    burst: Optional[int] = None

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window_s <= 0:
            raise InvalidOptionError(f"a budget needs limit >= 1 and window_s > 0, got {self}", option="budget")
        if self.burst is not None and self.burst < 1:
            raise InvalidOptionError(f"burst must be >= 1, got {self.burst}", option="burst")

    @property
    def rate(self) -> float:
        """Sustained requests per second."""
        return self.limit / self.window_s

    @classmethod
    def per_second(cls, rate: float, *, burst: Optional[int] = None) -> "Budget":
        """A budget of `rate` requests per second (the CLI's `--rate`), over a 10 s window."""
        if rate <= 0:
            raise InvalidOptionError(f"rate must be > 0, got {rate}", option="rate")
        window = 10.0
        return cls(limit=max(1, int(rate * window)), window_s=window, burst=burst or max(1, int(rate)))


DEFAULT_BUDGET = Budget(limit=int(SERVER_LIMIT_PER_HOUR * 0.9), window_s=3600.0, burst=50)


class Pacer:
    """One shared budget for every in-flight request of a client (or of one endpoint).

    Use as `async with pacer.slot(): send()`. `clock` and `sleep` are injectable so tests
    can run hours of pacing in no wall time.
    """

    def __init__(
        self,
        budget: Budget = DEFAULT_BUDGET,
        *,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        name: str = "api",
    ) -> None:
        self.budget = budget
        self.cooldown_s = cooldown_s
        self.name = name
        self._clock = clock
        self._sleep = sleep
        self._in_flight = 0
        self._expiries: deque[tuple[float, int]] = deque()  # (expires_at, cost), sorted
        self._held = 0  # total cost in _expiries
        self._burst = float(budget.burst if budget.burst is not None else budget.limit)
        self._tokens = self._burst
        self._refilled_at = clock()
        self._cooldown_until = 0.0
        self._blocked_until: dict[int, float] = {}  # waiter -> when it expects to go on
        self._released: Optional[asyncio.Event] = None
        self.sent = 0
        self.rate_limited = 0

    def __repr__(self) -> str:
        return (
            f"Pacer(name={self.name!r}, budget={self.budget!r}, cooldown_s={self.cooldown_s}, "
            f"remaining={self.remaining})"
        )

    # ---- state -------------------------------------------------------------------------
    def _purge(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            self._held -= self._expiries.popleft()[1]

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._refilled_at)
        self._tokens = min(self._burst, self._tokens + elapsed * self.budget.rate)
        self._refilled_at = now

    @property
    def remaining(self) -> int:
        """Requests that could still be sent in the current window."""
        self._purge(self._clock())
        return max(0, self.budget.limit - self._held - self._in_flight)

    @property
    def cooldown_left(self) -> float:
        return max(0.0, self._cooldown_until - self._clock())

    def waiting_until(self) -> Optional[float]:
        """When (on this pacer's clock) the next request held back by the budget or a 429
        cooldown may go; None when nothing waits longer than a moment. Progress displays
        turn this into "rate limit: waiting until HH:MM"."""
        now = self._clock()
        pending = [t for t in self._blocked_until.values() if t - now > 1.0]
        return min(pending) if pending else None

    # ---- acquiring ---------------------------------------------------------------------
    def slot(self, cost: int = 1) -> "_Slot":
        return _Slot(self, cost)

    async def acquire(self, cost: int = 1) -> None:
        """Wait until `cost` requests may be sent, then hold them until `release`."""
        if cost > self.budget.limit:
            raise InvalidOptionError(f"cost {cost} exceeds the whole budget {self.budget.limit}", option="cost")
        me = id(asyncio.current_task()) if _in_task() else id(self)
        try:
            while True:
                now = self._clock()
                if now < self._cooldown_until:
                    await self._wait(me, self._cooldown_until - now)
                    continue  # the cooldown may have been extended while we slept
                self._purge(now)
                self._refill(now)
                if self._held + self._in_flight + cost > self.budget.limit:
                    if self._expiries:
                        await self._wait(me, self._expiries[0][0] - now)
                    else:
                        await self._wait_for_release()
                    continue
                if self._tokens < cost - 1e-9:
                    # at least 1 ms, so float rounding can never turn this into a busy loop
                    await self._sleep(max((cost - self._tokens) / self.budget.rate, 1e-3))
                    continue
                self._tokens = max(self._tokens, float(cost))
                self._tokens -= cost
                self._in_flight += cost
                self.sent += cost
                return
        finally:
            self._blocked_until.pop(me, None)

    async def _wait(self, me: int, seconds: float) -> None:
        seconds = max(seconds, 1e-3)
        self._blocked_until[me] = self._clock() + seconds
        await self._sleep(seconds)

    async def _wait_for_release(self) -> None:
        if self._released is None:
            self._released = asyncio.Event()
        self._released.clear()
        await self._released.wait()

    def release(self, cost: int = 1) -> None:
        """The response arrived (or the attempt ended): the slot now ages out of the window."""
        now = self._clock()
        self._in_flight -= cost
        self._expiries.append((now + self.budget.window_s, cost))
        self._held += cost
        if self._released is not None:
            self._released.set()

    # ---- feedback from the server ------------------------------------------------------
    def observe_remaining(self, server_remaining: int) -> None:
        """Tighten to the server's `x-limit-remaining` (another process may share our IP).

        What the server has counted and we have not is held as phantom slots for a whole
        window: we cannot know when the server will forget them, so we assume the latest.
        """
        deficit = self.remaining - max(0, server_remaining)
        if deficit > 0:
            now = self._clock()
            self._expiries.append((now + self.budget.window_s, deficit))
            self._held += deficit

    def on_rate_limited(self, retry_after: Optional[float] = None) -> float:
        """A 429: every request waits out the cooldown (or the server's `Retry-After`)."""
        self.rate_limited += 1
        wait = self.cooldown_s if retry_after is None else max(0.0, retry_after)
        self._cooldown_until = max(self._cooldown_until, self._clock() + wait)
        return wait


def _in_task() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:
        return False


class _Slot:
    def __init__(self, pacer: Pacer, cost: int) -> None:
        self._pacer = pacer
        self._cost = cost

    async def __aenter__(self) -> "_Slot":
        await self._pacer.acquire(self._cost)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._pacer.release(self._cost)
