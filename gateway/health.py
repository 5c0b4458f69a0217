"""Free active probes of every configured route (a worker's /ready, fal's reachability), run in the
background so that neither the request path nor /ready waits on an upstream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gateway.breaker import RouteHealth
from gateway.catalog import Catalog, Route
from gateway.metrics import Metrics
from providers.base import ImageProvider, ProviderHealth

log = logging.getLogger(__name__)

RouteId = tuple[str, str]  # (model, provider)
BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}


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
        self._routes = [r for m in catalog.models.values() for r in m.routes if r.provider in providers]
        self._providers = providers
        self._interval_s = interval_s
        self._timeout_s = probe_timeout_s
        self._current: dict[RouteId, ProviderHealth] = {}
        self._refreshed = False

    def current(self) -> Mapping[RouteId, ProviderHealth]:
        """The last probe of each route (empty before the first round)."""
        return self._current

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

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a probe round must never stop the loop
                log.exception("probe round failed")
            await asyncio.sleep(self._interval_s)

    async def _probe(self, route: Route) -> ProviderHealth:
        try:
            return await asyncio.wait_for(self._providers[route.provider].probe(route.target), self._timeout_s)
        except Exception as exc:  # a failing probe marks the route unhealthy, nothing more
            return ProviderHealth(healthy=False, detail=f"probe failed: {type(exc).__name__}")
