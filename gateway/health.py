"""Route health from free probes (a worker's /ready, fal's reachability), cached briefly so that
/ready does not probe upstreams on every call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from gateway.catalog import Catalog, Route
from providers.base import ImageProvider, ProviderHealth


class HealthBoard:
    def __init__(self, catalog: Catalog, providers: Mapping[str, ImageProvider], ttl_s: float = 5.0) -> None:
        self._catalog = catalog
        self._providers = providers
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, ProviderHealth]] = {}

    async def snapshot(self) -> dict[str, dict[str, ProviderHealth]]:
        """model -> provider -> health, for every configured route."""
        routes = [r for m in self._catalog.models.values() for r in m.routes if r.provider in self._providers]
        results = await asyncio.gather(*(self._probe(r) for r in routes))
        out: dict[str, dict[str, ProviderHealth]] = {}
        for route, health in zip(routes, results, strict=True):
            out.setdefault(route.model, {})[route.provider] = health
        return out

    async def _probe(self, route: Route) -> ProviderHealth:
        key = (route.model, route.provider)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached and now - cached[0] < self._ttl_s:
            return cached[1]
        try:
            health = await asyncio.wait_for(self._providers[route.provider].probe(route.target), timeout=5.0)
        except Exception as exc:  # a failing probe marks the route unhealthy, never fails /ready itself
            health = ProviderHealth(healthy=False, detail=f"probe failed: {type(exc).__name__}")
        self._cache[key] = (now, health)
        return health
