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

# One attempt, atomically: a failure is counted (the window starts at an address's first failure
# and is not extended; no count is left without an expiry, which would shut the address out for
# good); a success only reads the count. Returns the count after the attempt and the window's
# time left (ms). The same one round trip either way, so timing does not tell a right key from
# a wrong one either; and the decision is taken on the count this very attempt made, so a burst
# of concurrent guesses gets no more than the limit checked.
ATTEMPT = """
local n
if ARGV[1] == '1' then
  n = redis.call('INCR', KEYS[1])
  if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
else
  n = tonumber(redis.call('GET', KEYS[1]) or '0')
end
return {n, redis.call('PTTL', KEYS[1])}
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
        self._max = max_failures
        self._window_ms = window_s * 1000
        self._attempt = redis.register_script(ATTEMPT)

    async def attempt(self, client: str, *, ok: bool) -> None:
        """Record one attempt of `client` (a client_bucket), right (`ok`) or wrong; raise
        RateLimitError when the address already had its failures in this window, whatever it sent.

        Redis unreachable: the secret check alone decides (fail open). Nobody outside can take
        Redis down at will, and /metrics must keep answering Prometheus during an outage, which is
        exactly when it is needed."""
        try:
            count, left_ms = await self._attempt(keys=[PREFIX + client], args=[0 if ok else 1, self._window_ms])
        except REDIS_ERRORS:
            log.warning("failed-secret throttle unavailable (Redis unreachable); not applied")
            return
        failures_before = int(count) - (0 if ok else 1)
        if failures_before < self._max or int(left_ms) <= 0:
            return
        retry_s = -(-int(left_ms) // 1000)
        raise RateLimitError(
            f"Too many failed attempts at the admin key or metrics token from your address; retry in {retry_s} s.",
            headers={"retry-after": str(retry_s)},
        )
