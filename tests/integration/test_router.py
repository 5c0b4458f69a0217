"""Routing decisions over a real redis-server's shared route health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.breaker import BreakerConfig, RouteHealth
from gateway.catalog import Route, RoutingPolicy, load_catalog
from gateway.router import Router
from providers.base import ProviderHealth

CFG = BreakerConfig(consecutive_failures=2, cooldown_s=0.2)
POLICY = RoutingPolicy(latency_target_s=30.0)


@pytest.fixture
async def health(redis_url: str) -> AsyncIterator[RouteHealth]:
    client = Redis.from_url(redis_url)
    yield RouteHealth(client, CFG, cache_s=0)
    await client.aclose()


@pytest.fixture
def routes() -> tuple[Route, ...]:
    return load_catalog(Path(__file__).resolve().parents[2] / "pricing.yaml").models["hidream-i1-full"].routes


def gpu(wait: float = 1.0, *, healthy: bool = True, saturated: bool = False) -> dict[tuple[str, str], ProviderHealth]:
    return {
        ("hidream-i1-full", "local_gpu"): ProviderHealth(healthy, expected_wait_s=wait, saturated=saturated),
        ("hidream-i1-full", "fal"): ProviderHealth(True),
    }


async def _plan(
    health: RouteHealth,
    routes: tuple[Route, ...],
    probes: dict[tuple[str, str], ProviderHealth],
    *,
    policy: RoutingPolicy = POLICY,
    pinned: str | None = None,
) -> list[tuple[str, str]]:
    plan = await Router(health).plan(routes, probes, width=1024, height=1024, n=1, policy=policy, pinned=pinned)
    return [(p.route.provider, p.reason) for p in plan]


async def test_owned_gpus_first_while_their_wait_is_within_target(
    health: RouteHealth, routes: tuple[Route, ...]
) -> None:
    assert await _plan(health, routes, gpu(5.0)) == [("local_gpu", "cheapest_healthy"), ("fal", "fallback_after_error")]


async def test_spill_over_to_fal_when_the_queue_wait_passes_the_target_and_drain_back(
    health: RouteHealth, routes: tuple[Route, ...]
) -> None:
    assert await _plan(health, routes, gpu(45.0)) == [
        ("fal", "spillover_queue_full"),
        ("local_gpu", "fallback_after_error"),
    ]
    assert (await _plan(health, routes, gpu(0.0, saturated=True)))[:1] == [("fal", "spillover_queue_full")]
    assert (await _plan(health, routes, gpu(2.0)))[0] == ("local_gpu", "cheapest_healthy")


async def test_open_breaker_removes_a_route_until_its_trial(health: RouteHealth, routes: tuple[Route, ...]) -> None:
    for _ in range(2):
        await health.record("local_gpu", "hidream-i1-full", False, None)
    assert await _plan(health, routes, gpu()) == [("fal", "failover_unhealthy")]
    await asyncio.sleep(0.25)
    assert await _plan(health, routes, gpu()) == [("local_gpu", "half_open_trial"), ("fal", "fallback_after_error")]
    # while that trial is out, nobody else is sent there
    assert await _plan(health, routes, gpu()) == [("fal", "failover_unhealthy")]
    await health.record("local_gpu", "hidream-i1-full", True, 3.0)
    assert (await _plan(health, routes, gpu()))[0] == ("local_gpu", "cheapest_healthy")


async def test_unready_worker_is_not_a_candidate(health: RouteHealth, routes: tuple[Route, ...]) -> None:
    assert await _plan(health, routes, gpu(healthy=False)) == [("fal", "failover_unhealthy")]


async def test_pinned_provider_is_the_only_route(health: RouteHealth, routes: tuple[Route, ...]) -> None:
    assert await _plan(health, routes, gpu(), pinned="fal") == [("fal", "pinned")]


async def test_fastest_policy_follows_observed_latency(health: RouteHealth, routes: tuple[Route, ...]) -> None:
    for _ in range(5):
        await health.record("local_gpu", "hidream-i1-full", True, 20.0)
        await health.record("fal", "hidream-i1-full", True, 4.0)
    fastest = RoutingPolicy(kind="fastest")
    assert (await _plan(health, routes, gpu(0.0), policy=fastest))[0] == ("fal", "fastest_healthy")
    assert (await _plan(health, routes, gpu(0.0)))[0] == ("local_gpu", "cheapest_healthy")


async def test_peer_baselines_ignore_queues_and_cost(health: RouteHealth, routes: tuple[Route, ...]) -> None:
    router = Router(health)

    async def first(kind: str) -> str:
        plan = await router.plan(routes, gpu(500.0), width=1024, height=1024, n=1, policy=RoutingPolicy(kind=kind))  # type: ignore[arg-type]
        return f"{plan[0].route.provider}:{plan[0].reason}"

    assert await first("priority") == "local_gpu:priority"  # a 500 s queue does not matter to it
    assert {await first("round_robin") for _ in range(4)} == {"local_gpu:round_robin", "fal:round_robin"}
    with router.attempt(routes[0]):
        assert await first("least_busy") == "fal:least_busy"
    assert await first("least_busy") == "local_gpu:least_busy"


async def test_drains_back_to_the_gpu_once_its_queue_clears_despite_slow_past_attempts(
    health: RouteHealth, routes: tuple[Route, ...]
) -> None:
    for _ in range(20):  # during a peak, attempts there included long queue waits
        await health.record("local_gpu", "hidream-i1-full", True, 100.0)
    probes = {
        ("hidream-i1-full", "local_gpu"): ProviderHealth(True, expected_wait_s=1.0, service_s=5.0),
        ("hidream-i1-full", "fal"): ProviderHealth(True),
    }
    assert (await _plan(health, routes, probes))[0] == ("local_gpu", "cheapest_healthy")
    # without the worker's own measure of one job, the past waits would count against it
    stale = {**probes, ("hidream-i1-full", "local_gpu"): ProviderHealth(True, expected_wait_s=1.0)}
    assert (await _plan(health, routes, stale))[0] == ("fal", "latency_over_target")


async def test_baselines_give_an_open_route_its_trial_after_the_cooldown(
    health: RouteHealth, routes: tuple[Route, ...]
) -> None:
    for _ in range(2):
        await health.record("local_gpu", "hidream-i1-full", False, None)
    assert (await _plan(health, routes, gpu(), policy=RoutingPolicy(kind="priority")))[0][0] == "fal"
    await asyncio.sleep(0.25)
    assert (await _plan(health, routes, gpu(), policy=RoutingPolicy(kind="priority")))[0] == ("local_gpu", "priority")
