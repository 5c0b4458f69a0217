"""Failed attempts at the gateway's own secrets (the admin key, the metrics token), counted per
client address in Redis, so that every worker process and replica shares one count: a limit kept
per process would be multiplied by the processes (4 workers on 3 replicas: 12 times the limit).

Past the limit an address is refused with 429 until its window ends, whatever it sends, the right
secret included: were the right one let through, 429 against 200 would tell a guesser which guess
was right at full speed, and the throttle would slow nothing.
"""

from __future__ import annotations

import ipaddress
import logging

from gateway.errors import RateLimitError
from gateway.redis.client import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)

PREFIX = "gw:authfail:"

# One failure, atomically: the window starts at an address's first failure and is not extended,
# and no count is ever left without an expiry (which would shut the address out for good).
COUNT_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def client_bucket(host: str | None) -> str:
    """What failures are counted against: an IPv6 client by its /64 (one subscriber is usually
    handed a whole /64, so counting single addresses would not hold anybody back), else the address."""
    if not host:
        return "unknown"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an address (a test client's name, a Unix socket)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{addr}/64", strict=False))
    return str(addr)


class SecretThrottle:
    def __init__(self, redis: RedisClient, *, max_failures: int, window_s: int) -> None:
        self._redis = redis
        self._max = max_failures
        self._window_ms = window_s * 1000
        self._count_failure = redis.register_script(COUNT_FAILURE)

    async def check(self, client: str) -> None:
        """Raise RateLimitError when `client` (a client_bucket) is past its failures.

        Redis unreachable: let the caller on to the secret check (fail open). Nobody outside can
        take Redis down at will, and /metrics must keep answering Prometheus during an outage,
        which is exactly when it is needed."""
        key = PREFIX + client
        try:
            count = await self._redis.get(key)
            if count is None or int(count) < self._max:
                return
            left_ms = int(await self._redis.pttl(key))
        except REDIS_ERRORS:
            log.warning("failed-secret throttle unavailable (Redis unreachable); not applied")
            return
        if left_ms <= 0:
            return  # the window ended between the two reads
        retry_s = -(-left_ms // 1000)
        raise RateLimitError(
            f"Too many failed attempts at the admin key or metrics token from your address; retry in {retry_s} s.",
            headers={"retry-after": str(retry_s)},
        )

    async def failed(self, client: str) -> None:
        try:
            await self._count_failure(keys=[PREFIX + client], args=[self._window_ms])
        except REDIS_ERRORS:
            log.warning("failed-secret throttle unavailable (Redis unreachable); a failure went uncounted")
