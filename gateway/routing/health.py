"""Free active probes of every configured route (a worker's /ready, fal's reachability), run in the
background so that neither the request path nor /ready waits on an upstream; and, for the router,
each probe brought up to the moment by providers that can estimate their queues without I/O."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

from gateway.catalog import Catalog, Route
from gateway.metrics import Metrics
from gateway.periodic import repeat
from gateway.routing.breaker import RouteHealth, RouteStats
from providers.base import ImageProvider, ProviderHealth, QueueEstimator, RouteTarget

log = logging.getLogger(__name__)

RouteId = tuple[str, str]  # (model, provider)
BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class RouteView:
    """One route's health as an operator reads it (GET /admin/routes)."""

    model: str
    provider: str
    provider_configured: bool  # False: the provider has no key or URL here; never probed
    probe: ProviderHealth | None  # None: not probed (yet)
    stats: RouteStats | None  # the shared breaker and latency; None when not probed


class HealthBoard:
    def __init__(
        self,
        catalog: Catalog,
        providers: Mapping[str, ImageProvider],
        *,
        metrics: Metrics | None = None,
        route_health: RouteHealth | None = None,
        interval_s: float = 2.0,
        probe_timeout_s: float = 5.0,
    ) -> None:
        self._metrics = metrics
        self._route_health = route_health
        self._providers = providers
        self._interval_s = interval_s
        self._timeout_s = probe_timeout_s
        self._current: dict[RouteId, ProviderHealth] = {}
        self._refreshed = False
        self.use(catalog)

    def use(self, catalog: Catalog) -> None:
        """Probe the routes of `catalog` from the next round on (pricing.yaml was reloaded)."""
        self._all_routes = [r for m in catalog.models.values() for r in m.routes]
        self._routes = [r for r in self._all_routes if r.provider in self._providers]
        self._estimated: dict[RouteId, tuple[QueueEstimator, RouteTarget]] = {
            (r.model, r.provider): (p, r.target)
            for r in self._routes
            if isinstance(p := self._providers[r.provider], QueueEstimator)
        }

    def current(self) -> Mapping[RouteId, ProviderHealth]:
        """The last probe of each route (empty before the first round), with the queue wait of
        routes whose provider can estimate it brought up to now: a probe round is up to one
        interval old, and at a peak many jobs are sent in that time."""
        return _LiveProbes(self._current, self._estimated)

    async def refresh(self) -> None:
        results = await asyncio.gather(*(self._probe(r) for r in self._routes))
        self._current = {(r.model, r.provider): h for r, h in zip(self._routes, results, strict=True)}
        self._refreshed = True
        await self._export()

    async def _export(self) -> None:
        """Probe results and breaker states as gauges, for the Providers dashboard."""
        m = self._metrics
        if m is None:
            return
        for (model, provider), h in self._current.items():
            m.route_healthy.labels(provider, model).set(1 if h.healthy else 0)
            if h.queue_depth is not None:
                m.queue_depth.labels(provider, model).set(h.queue_depth)
            if h.expected_wait_s is not None:
                m.expected_wait.labels(provider, model).set(h.expected_wait_s)
        if self._route_health is not None:
            stats = await self._route_health.stats([(r.provider, r.model) for r in self._routes])
            for (provider, model), st in stats.items():
                m.breaker_state.labels(provider, model).set(BREAKER_LEVELS.get(st.state, 0))

    async def snapshot(self) -> dict[str, dict[str, ProviderHealth]]:
        """model -> provider -> health, probing once if no round has run yet."""
        if not self._refreshed:
            await self.refresh()
        out: dict[str, dict[str, ProviderHealth]] = {}
        for (model, provider), health in self._current.items():
            out.setdefault(model, {})[provider] = health
        return out

    async def views(self) -> list[RouteView]:
        """Every route of the catalog, as the router sees it now: its last probe (with the live
        queue wait) and its shared breaker and latency figures. Routes whose provider is not
        configured are listed too, with neither."""
        if not self._refreshed:
            await self.refresh()
        probes = self.current()
        configured = [(r.provider, r.model) for r in self._routes]
        stats = await self._route_health.stats(configured, fresh=True) if self._route_health is not None else {}
        return [
            RouteView(
                model=r.model,
                provider=r.provider,
                provider_configured=r.provider in self._providers,
                probe=probes.get((r.model, r.provider)),
                stats=stats.get((r.provider, r.model)),
            )
            for r in self._all_routes
        ]

    async def run_forever(self) -> None:
        await repeat(self.refresh, self._interval_s, "probe round")

    async def _probe(self, route: Route) -> ProviderHealth:
        try:
            return await asyncio.wait_for(self._providers[route.provider].probe(route.target), self._timeout_s)
        except Exception as exc:  # a failing probe marks the route unhealthy, nothing more
            return ProviderHealth(healthy=False, detail=f"probe failed: {type(exc).__name__}")


class _LiveProbes(Mapping[RouteId, ProviderHealth]):
    """A read-only view of the last probes; a route's live wait is asked for only when it is read
    (the router reads the few routes of one model)."""

    __slots__ = ("_estimated", "_probes")

    def __init__(
        self,
        probes: Mapping[RouteId, ProviderHealth],
        estimated: Mapping[RouteId, tuple[QueueEstimator, RouteTarget]],
    ) -> None:
        self._probes = probes
        self._estimated = estimated

    def __getitem__(self, key: RouteId) -> ProviderHealth:
        health = self._probes[key]
        estimator = self._estimated.get(key)
        if estimator is None or not health.healthy or health.expected_wait_s is None:
            return health
        wait = estimator[0].expected_wait_now(estimator[1])
        if wait is None or wait == health.expected_wait_s:
            return health
        if math.isinf(wait):  # down since the probe (a job could not reach it): not until the next one
            return replace(health, healthy=False, detail="no worker reachable since the last probe")
        return health.with_wait(wait)

    def __iter__(self) -> Iterator[RouteId]:
        return iter(self._probes)

    def __len__(self) -> int:
        return len(self._probes)
