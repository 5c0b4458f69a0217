"""What failed secrets are counted against, and a throttle that cannot reach Redis."""

from __future__ import annotations

import pytest

from gateway.api.throttle import SecretThrottle, client_bucket
from gateway.redis.client import connect


@pytest.mark.parametrize(
    ("host", "bucket"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # the same subscriber
        ("::ffff:203.0.113.9", "203.0.113.9"),  # an IPv4 client on a dual-stack socket
        ("testclient", "testclient"),
        (None, "unknown"),
    ],
)
def test_an_ipv6_client_is_counted_by_its_64_and_ipv4_by_its_address(host: str | None, bucket: str) -> None:
    assert client_bucket(host) == bucket


async def test_without_redis_the_throttle_lets_the_secret_check_decide() -> None:
    redis = connect("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        throttle = SecretThrottle(redis, max_failures=1, window_s=60)
        for _ in range(3):
            await throttle.attempt("203.0.113.9", ok=False)  # raises nothing
        await throttle.attempt("203.0.113.9", ok=True)
    finally:
        await redis.aclose()
