"""Per-route health shared by every gateway process through Redis: a circuit breaker fed by the
outcome of each attempt, and observed latency (EWMA and a high percentile).

The request path touches Redis here only when something changes: reads are cached per process and
refreshed in the background once stale, and successes on a closed route (nearly every request) are
batched and written by a background flush a few times a second. Failures, and any outcome on a
route that is not closed, are written at once: every state change is one atomic script, so all
processes see the same breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from gateway.periodic import raise_if_cancelling
from gateway.redis.client import REDIS_ERRORS, RedisClient, as_str
from gateway.redis.scripts import ScriptClient, register

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
    # A failure the request itself may have caused counts only once this many teams saw one on the
    # route within corroboration_s of each other: one team's requests never open it for all.
    corroborating_teams: int = 2
    corroboration_s: float = 60.0


@dataclass(frozen=True, slots=True)
class RouteStats:
    state: str  # closed | open | half_open
    opened_ms: int | None
    ewma_s: float | None
    p95_s: float | None
    samples: int


CLOSED = RouteStats("closed", None, None, None, 0)

RouteKey = tuple[str, str]  # (provider, model)
Trial = Literal["trial", "open", "closed"]


def route_key(provider: str, model: str) -> str:
    return f"gw:{{route:{provider}:{model}}}:"


def _now_ms() -> int:
    return int(time.time() * 1000)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class RouteHealth:
    """`scripts`: the lean pipelined client (gateway/redis/scripts.py) where the URL allows it. The
    background flush and the refresh after it run a few times a second whatever the load, and
    through redis-py each cost about as much CPU as a whole request's admission and settlement."""

    def __init__(
        self,
        redis: RedisClient,
        config: BreakerConfig | None = None,
        cache_s: float = 0.5,
        *,
        scripts: ScriptClient | None = None,
    ) -> None:
        self._r = redis
        self.config = config or BreakerConfig()
        self._cache_s = cache_s
        self._cache: dict[RouteKey, tuple[float, RouteStats]] = {}
        self._refreshing: asyncio.Task[dict[RouteKey, RouteStats]] | None = None
        self._pending: dict[RouteKey, list[int]] = {}  # batched successes: latency ms per outcome
        self._pending_at: dict[RouteKey, int] = {}  # when the latest batched success happened (ms)
        text = resources.files("gateway.routing").joinpath("scripts")
        self._record = register(redis, scripts, text.joinpath("route_record.lua").read_text(encoding="utf-8"))
        self._trial = register(redis, scripts, text.joinpath("route_trial.lua").read_text(encoding="utf-8"))
        # One script a route on the lean client; a pipeline of two reads on redis-py (a cluster's
        # pipeline sends each route's to its own node).
        self._read = (
            None
            if scripts is None
            else register(redis, scripts, text.joinpath("route_read.lua").read_text(encoding="utf-8"))
        )

    async def stats(self, routes: Sequence[RouteKey], *, fresh: bool = False) -> dict[RouteKey, RouteStats]:
        """Each route's shared state. A route this process has never read (or whose cache an outcome
        just invalidated) is read now; one that is merely stale is answered from the cache and
        refreshed in the background, so the request path does not wait on Redis for it.
        `fresh=True` (a person looking: the admin page) reads every route from Redis now, since a
        stale answer is what another process wrote up to a refresh ago, or longer when idle."""
        if fresh:
            return await self._fetch(list(routes))
        now = time.monotonic()
        out: dict[RouteKey, RouteStats] = {}
        missing: list[RouteKey] = []
        stale: list[RouteKey] = []
        for route in routes:
            cached = self._cache.get(route)
            if cached is None or self._cache_s <= 0:  # cache_s=0: always read (tests, tools)
                missing.append(route)
                continue
            out[route] = cached[1]
            if now - cached[0] >= self._cache_s:
                stale.append(route)
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._fetch(stale))
        if missing:
            out.update(await self._fetch(missing))
        return out

    async def _fetch(self, stale: Sequence[RouteKey]) -> dict[RouteKey, RouteStats]:
        now = time.monotonic()
        out: dict[RouteKey, RouteStats] = {}
        if stale:
            try:
                replies = await self._read_routes(stale)
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

    async def _read_routes(self, routes: Sequence[RouteKey]) -> list[Any]:
        """For each route, its [state, opened_ms, ewma_ms] and its latency list, one after the other."""
        if self._read is None:
            async with self._r.pipeline(transaction=False) as pipe:
                for provider, model in routes:
                    k = route_key(provider, model)
                    pipe.hmget(k + "state", ["state", "opened_ms", "ewma_ms"])
                    pipe.lrange(k + "latency", 0, -1)
                return list(await pipe.execute())
        keys = [(route_key(*r) + "state", route_key(*r) + "latency") for r in routes]
        if len(keys) == 1:
            read = [await self._read(keys=keys[0])]
        else:  # sent in one event-loop turn, they leave in one write
            read = await asyncio.gather(*(self._read(keys=k) for k in keys))
        out: list[Any] = []
        for reply in read:
            out += [reply[:3], reply[3]]
        return out

    async def record(
        self, provider: str, model: str, ok: bool, latency_s: float | None, *, suspect_team: str | None = None
    ) -> str | None:
        """Write one outcome now (after any batched successes of the route, to keep their order);
        returns the route's state after it, or None when Redis is unreachable. `suspect_team`: for a
        failure the request itself may have caused, the team that sent it (see BreakerConfig)."""
        await self._flush_route((provider, model))
        latency = [round(latency_s * 1000) if latency_s is not None else -1]
        return await self._write((provider, model), ok, latency, _now_ms(), suspect_team=suspect_team)

    async def succeeded(self, provider: str, model: str, latency_s: float) -> None:
        """A success: batched for the background flush while the route is known to be closed
        (nothing to change but counters), written at once otherwise (it may close the breaker)."""
        route = (provider, model)
        cached = self._cache.get(route)
        if cached is not None and cached[1].state == "closed":
            self._pending.setdefault(route, []).append(round(latency_s * 1000))
            self._pending_at[route] = _now_ms()
            return
        await self.record(provider, model, True, latency_s)

    async def flush(self) -> None:
        for route in list(self._pending):
            await self._flush_route(route)

    async def flush_forever(self, interval_s: float = 0.25) -> None:
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush()
                raise_if_cancelling()  # a cancel lost in the Redis client still ends it (gateway/periodic.py)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())

    async def _flush_route(self, route: RouteKey) -> None:
        latencies = self._pending.pop(route, None)
        at = self._pending_at.pop(route, 0)
        if latencies:
            await self._write(route, True, latencies, at, batch=True)

    async def _write(
        self,
        route: RouteKey,
        ok: bool,
        latencies_ms: Sequence[int],
        at_ms: int,
        *,
        batch: bool = False,
        suspect_team: str | None = None,
    ) -> str | None:
        c = self.config
        k = route_key(*route)
        try:
            state = await self._record(
                keys=[k + "state", k + "outcomes", k + "latency", k + "suspects"],
                args=[
                    1 if ok else 0,
                    " ".join(str(v) for v in latencies_ms),
                    c.window, c.min_samples, c.failure_ratio, c.consecutive_failures, c.latency_samples, c.ewma_weight,
                    at_ms, suspect_team or "", int(c.corroboration_s * 1000), c.corroborating_teams,
                ],
            )  # fmt: skip
        except REDIS_ERRORS:
            return None
        cached = self._cache.get(route)
        if batch and cached is not None:
            # Successes on a closed route move only the latency figures: keep answering from the
            # cache and let the next read refresh it in the background.
            self._cache[route] = (0.0, cached[1])
        else:
            self._cache.pop(route, None)  # the state may have changed: the next read waits for it
        return as_str(state) if state is not None else None

    async def try_trial(self, provider: str, model: str) -> Trial:
        """Ask for the one trial request to a route this process last saw open: "trial" when this
        caller may send it, "open" when not (cooling down, or another caller holds the trial), and
        "closed" when the breaker has closed since this process read it (the route is usable)."""
        c = self.config
        try:
            got = await self._trial(
                keys=[route_key(provider, model) + "state"], args=[int(c.cooldown_s * 1000), int(c.trial_s * 1000)]
            )
        except REDIS_ERRORS:
            return "open"
        self._cache.pop((provider, model), None)
        answer = as_str(got) if got is not None else None
        if answer == "trial":
            return "trial"
        return "closed" if answer == "closed" else "open"
