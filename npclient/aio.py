"""The event loop np-mirror runs on: uvloop where it is installed, asyncio's otherwise.

The client spends most of its CPU in the event loop and the HTTP stack; uvloop cut the
client's CPU per request by ~13% in one measurement (3.41 -> 2.96 ms, see
benchmarks/RESULTS.md). The library itself never picks a loop: these helpers are for
entry points (the CLI, `BlockingClient`, benchmarks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop when available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
