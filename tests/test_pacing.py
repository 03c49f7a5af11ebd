import asyncio
import bisect

import pytest

from npclient import Budget, Pacer
from npclient.testing.clock import FakeClock


def max_in_window(times, window):
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


async def test_sequential_requests_respect_the_window_and_the_rate():
    clock = FakeClock()
    pacer = Pacer(Budget(limit=100, window_s=10.0, burst=10), clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(1000):
        async with pacer.slot():
            sent.append(clock())
    assert max_in_window(sent, 10.0) <= 100
    # 1,000 requests at 10/s after a burst of 10 take about 99 s, not less.
    assert 95 <= sent[-1] - sent[0] <= 110
    # the first ten went back to back (the burst), then the pace is even
    assert sent[9] - sent[0] == 0


async def test_concurrent_requests_share_one_budget():
    clock = FakeClock()
    pacer = Pacer(Budget(limit=50, window_s=5.0, burst=50), clock=clock, sleep=clock.sleep)
    sent, done = [], []

    async def one(latency):
        async with pacer.slot():
            sent.append(clock())
            await clock.sleep(latency)
        done.append(clock())

    await asyncio.gather(*(one(0.05 * (i % 7)) for i in range(400)))
    assert len(sent) == 400
    # The server stamps arrival somewhere between send and done; with slots held until
    # done + window, even the latest arrivals cannot crowd a window.
    assert max_in_window(sent, 5.0) <= 50
    assert max_in_window(done, 5.0) <= 50


async def test_cooldown_blocks_every_request_until_it_ends():
    clock = FakeClock()
    pacer = Pacer(Budget(limit=1000, window_s=60.0, burst=1000), cooldown_s=600.0, clock=clock, sleep=clock.sleep)
    t429 = clock()
    assert pacer.on_rate_limited(None) == 600.0
    sent = []

    async def one():
        async with pacer.slot():
            sent.append(clock())

    await asyncio.gather(*(one() for _ in range(20)))
    assert min(sent) >= t429 + 600.0
    assert pacer.rate_limited == 1


async def test_retry_after_is_honoured_when_sent():
    clock = FakeClock()
    pacer = Pacer(Budget(limit=10, window_s=1.0), cooldown_s=600.0, clock=clock, sleep=clock.sleep)
    assert pacer.on_rate_limited(7.0) == 7.0
    start = clock()
    async with pacer.slot():
        assert clock() - start == pytest.approx(7.0)


async def test_server_remaining_tightens_our_budget():
    clock = FakeClock()
    pacer = Pacer(Budget(limit=100, window_s=60.0, burst=100), clock=clock, sleep=clock.sleep)
    async with pacer.slot():
        pass
    assert pacer.remaining == 99
    pacer.observe_remaining(10)  # someone else on our IP used the rest
    assert pacer.remaining == 10
    pacer.observe_remaining(50)  # never loosens
    assert pacer.remaining == 10
    for _ in range(10):
        async with pacer.slot():
            pass
    start = clock()
    async with pacer.slot():
        pass
    assert clock() - start >= 59.0  # waited for the window to slide


def test_budget_validation_and_rate():
    assert Budget.per_second(5).rate == pytest.approx(5.0)
    with pytest.raises(ValueError):
        Budget(limit=0, window_s=1)
    with pytest.raises(ValueError):
        Budget.per_second(0)
    assert "Budget(limit=22500" in repr(Pacer())
