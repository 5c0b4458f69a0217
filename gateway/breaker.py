"""Per-route health shared by every gateway process through Redis: a circuit breaker fed by the
outcome of each attempt, and observed latency (EWMA and a high percentile).

Reads are cached for a fraction of a second per process so the request path stays cheap; every
state change is one atomic script, so all processes see the same breaker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from gateway.keys import as_str
from gateway.redis_client import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    window: int = 20  # outcomes kept for the failure ratio
    min_samples: int = 10  # outcomes needed before the ratio counts
    failure_ratio: float = 0.5
    consecutive_failures: int = 5
    cooldown_s: float = 10.0  # open -> a trial request allowed
    trial_s: float = 120.0  # a trial that has not reported back by then is presumed lost
    latency_samples: int = 200
    ewma_weight: float = 0.2


@dataclass(frozen=True, slots=True)
class RouteStats:
    state: str  # closed | open | half_open
    opened_ms: int | None
    ewma_s: float | None
    p95_s: float | None
    samples: int


CLOSED = RouteStats("closed", None, None, None, 0)


def route_key(provider: str, model: str) -> str:
    return f"gw:{{route:{provider}:{model}}}:"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class RouteHealth:
    def __init__(self, redis: RedisClient, config: BreakerConfig | None = None, cache_s: float = 0.5) -> None:
        self._r = redis
        self.config = config or BreakerConfig()
        self._cache_s = cache_s
        self._cache: dict[tuple[str, str], tuple[float, RouteStats]] = {}
        text = resources.files("gateway").joinpath("scripts")
        self._record = redis.register_script(text.joinpath("route_record.lua").read_text(encoding="utf-8"))
        self._trial = redis.register_script(text.joinpath("route_trial.lua").read_text(encoding="utf-8"))

    async def stats(self, routes: Sequence[tuple[str, str]]) -> dict[tuple[str, str], RouteStats]:
        now = time.monotonic()
        out: dict[tuple[str, str], RouteStats] = {}
        stale = []
        for route in routes:
            cached = self._cache.get(route)
            if cached and now - cached[0] < self._cache_s:
                out[route] = cached[1]
            else:
                stale.append(route)
        if stale:
            try:
                async with self._r.pipeline(transaction=False) as pipe:
                    for provider, model in stale:
                        k = route_key(provider, model)
                        pipe.hmget(k + "state", ["state", "opened_ms", "ewma_ms"])
                        pipe.lrange(k + "latency", 0, -1)
                    replies = await pipe.execute()
            except REDIS_ERRORS:
                log.warning("route health unavailable; treating routes as closed")
                return {**out, **{r: CLOSED for r in stale}}
            for i, route in enumerate(stale):
                fields, latencies = replies[2 * i], replies[2 * i + 1]
                samples = [float(v) / 1000 for v in latencies]
                stats = RouteStats(
                    state=as_str(fields[0]) if fields[0] else "closed",
                    opened_ms=int(fields[1]) if fields[1] else None,
                    ewma_s=float(fields[2]) / 1000 if fields[2] else None,
                    p95_s=percentile(samples, 0.95) if samples else None,
                    samples=len(samples),
                )
                self._cache[route] = (now, stats)
                out[route] = stats
        return out

    async def record(self, provider: str, model: str, ok: bool, latency_s: float | None) -> str | None:
        c = self.config
        k = route_key(provider, model)
        try:
            state = await self._record(
                keys=[k + "state", k + "outcomes", k + "latency"],
                args=[
                    1 if ok else 0,
                    round(latency_s * 1000) if latency_s is not None else -1,
                    c.window, c.min_samples, c.failure_ratio, c.consecutive_failures, c.latency_samples, c.ewma_weight,
                ],
            )  # fmt: skip
        except REDIS_ERRORS:
            return None
        self._cache.pop((provider, model), None)
        return as_str(state) if state is not None else None

    async def try_trial(self, provider: str, model: str) -> bool:
        """True when this caller may send the one trial request to an open route."""
        c = self.config
        try:
            got = await self._trial(
                keys=[route_key(provider, model) + "state"], args=[int(c.cooldown_s * 1000), int(c.trial_s * 1000)]
            )
        except REDIS_ERRORS:
            return False
        self._cache.pop((provider, model), None)
        return got is not None and as_str(got) == "trial"
