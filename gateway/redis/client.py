"""One Redis client for the gateway: a plain server, or a Redis Cluster when the URL says
`redis+cluster://` (or `rediss+cluster://`). Every key of a team or a route carries a hash tag,
so each script touches a single slot and runs unchanged on a cluster."""

from __future__ import annotations

from typing import TypeAlias

import redis.exceptions
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

RedisClient: TypeAlias = Redis | RedisCluster

# What "Redis is unreachable" looks like to a caller: fail closed, retry, or spool.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def connect(url: str, max_connections: int = 64) -> RedisClient:
    """A client whose pool holds at most `max_connections` per process (per node on a cluster):
    with thousands of requests in flight, commands wait briefly for a connection instead of
    opening thousands of them."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in CLUSTER_SCHEMES:
        return RedisCluster.from_url(
            f"{CLUSTER_SCHEMES[scheme]}://{rest}", socket_timeout=5, socket_connect_timeout=2,
            max_connections=max_connections,
        )  # fmt: skip
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, socket_timeout=5, socket_connect_timeout=2,
        health_check_interval=10,
    )  # fmt: skip
    return Redis.from_pool(pool)


def as_str(value: bytes | str) -> str:
    """A reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else value
