"""The failed-secret throttle on a real redis-server: a burst of concurrent guesses gets no more
than the limit checked, and the right secret from that address is refused too."""

from __future__ import annotations

import asyncio

import pytest

from gateway.api.throttle import SecretThrottle
from gateway.errors import RateLimitError
from gateway.redis.client import connect


async def test_a_burst_of_concurrent_guesses_gets_only_the_limit_checked(redis_url: str) -> None:
    redis = connect(redis_url)
    try:
        throttle = SecretThrottle(redis, max_failures=10, window_s=60)
        outcomes = await asyncio.gather(
            *(throttle.attempt("203.0.113.9", ok=False) for _ in range(200)), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, RateLimitError)]
        assert len(refused) == 190 and all(o is None for o in outcomes if o not in refused)
        assert 59 <= int(refused[0].headers["retry-after"]) <= 60
        with pytest.raises(RateLimitError):  # the right secret from that address, too
            await throttle.attempt("203.0.113.9", ok=True)
        await throttle.attempt("203.0.113.10", ok=True)  # another address: not affected
    finally:
        await redis.aclose()
