"""A virtual clock for pacing and retry tests: hours of waiting in no wall time."""

from __future__ import annotations

import asyncio


class FakeClock:
    """`clock()` reads virtual time; `await clock.sleep(dt)` moves it forward.

    Concurrent sleepers that start at the same virtual time and sleep the same span wake at
    the same virtual time (the clock moves to the latest target, not the sum of sleeps).
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        target = self.now + max(0.0, seconds)
        self.slept.append(seconds)
        await asyncio.sleep(0)
        self.now = max(self.now, target)
