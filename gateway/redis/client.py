"""One Redis client for the gateway: a plain server, or a Redis Cluster when the URL says
`redis+cluster://` (or `rediss+cluster://`). Every key of a team or a route carries a hash tag,
so each script touches a single slot and runs unchanged on a cluster."""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias

import redis.exceptions
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterPipeline

RedisClient: TypeAlias = Redis | RedisCluster

# What "Redis is unreachable" looks like to a caller: fail closed, retry, or spool.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class _WaitingCluster(RedisCluster):
    """redis-py's cluster client refuses a command (MaxConnectionsError) once a node's pool of
    `max_connections` is in use, where the plain client's BlockingConnectionPool waits for one: 300
    admissions at once for one team got 64 through and 236 refused as "accounting store
    unreachable" (503). Here a command, or a pipeline, first waits for one of `max_connections`
    permits; a permit holds at most one connection to each node, so no node's pool runs out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.permits = asyncio.Semaphore(int(kwargs.get("max_connections") or 64))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permits:
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:  # as RedisCluster.pipeline refuses it
            raise redis.exceptions.RedisClusterException("shard_hint is deprecated in cluster mode")
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]  # as RedisCluster.pipeline makes one


class _WaitingPipeline(ClusterPipeline):
    def __init__(self, client: _WaitingCluster, transaction: bool | None = None) -> None:
        super().__init__(client, transaction)
        self._permits = client.permits

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self._permits:
            return await super().execute(raise_on_error, allow_redirections)


def connect(url: str, max_connections: int = 64) -> RedisClient:
    """A client whose pool holds at most `max_connections` per process (per node on a cluster):
    with thousands of requests in flight, commands wait briefly for a connection instead of
    opening thousands of them."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in CLUSTER_SCHEMES:
        return _WaitingCluster.from_url(
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
