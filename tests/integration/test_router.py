"""Routing decisions over a real redis-server's shared route health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.catalog import Catalog, Route, RoutingPolicy, load_catalog
from gateway.routing.breaker import BreakerConfig, RouteHealth
from gateway.routing.health import HealthBoard
from gateway.routing.router import Router
from providers.base import ImageRequest, ImageResult, ProviderHealth, RouteTarget
from providers.local_gpu import LocalGpuProvider
from tests.contract.cases.local_gpu import make_request
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import running_worker, wait_until
from worker.jobs import JobSpec

CFG = BreakerConfig(consecutive_failures=2, cooldown_s=0.2)
POLICY = RoutingPolicy(latency_target_s=30.0)


@pytest.fixture
async def health(redis_url: str) -> AsyncIterator[RouteHealth]:
    client = Redis.from_url(redis_url)
    yield RouteHealth(client, CFG, cache_s=0)
    await client.aclose()


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(Path(__file__).resolve().parents[2] / "pricing.yaml")


@pytest.fixture
def routes(catalog: Catalog) -> tuple[Route, ...]:
    return catalog.models["hidream-i1-full"].routes


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


async def _state(health: RouteHealth, provider: str) -> str:
    return (await health.stats([(provider, "hidream-i1-full")]))[(provider, "hidream-i1-full")].state


async def _open(health: RouteHealth, provider: str) -> None:
    for _ in range(CFG.consecutive_failures):
        await health.record(provider, "hidream-i1-full", False, None)


@pytest.fixture
async def no_cooldown(redis_url: str) -> AsyncIterator[RouteHealth]:
    """Route health whose open breakers grant their trial at once (no waiting in the test)."""
    client = Redis.from_url(redis_url)
    yield RouteHealth(client, BreakerConfig(consecutive_failures=2, cooldown_s=0), cache_s=0)
    await client.aclose()


@pytest.mark.parametrize("kind", ["balanced", "priority"])
async def test_a_trial_is_claimed_only_for_the_route_tried_first(
    no_cooldown: RouteHealth, routes: tuple[Route, ...], kind: str
) -> None:
    """Both routes open: one request takes one trial, for the route it tries first; the other route
    stays open, its trial left for the next request (claimed and unused, it was lost for 120 s)."""
    await _open(no_cooldown, "local_gpu")
    await _open(no_cooldown, "fal")
    policy = RoutingPolicy(kind=kind, latency_target_s=30.0)  # type: ignore[arg-type]
    first = await _plan(no_cooldown, routes, gpu(), policy=policy)
    assert len(first) == 1
    tried = first[0][0]
    other = "fal" if tried == "local_gpu" else "local_gpu"
    assert (await _state(no_cooldown, tried), await _state(no_cooldown, other)) == ("half_open", "open")
    assert await _plan(no_cooldown, routes, gpu(), policy=policy) == [(other, first[0][1])]


async def test_an_open_route_the_probe_excludes_claims_no_trial(
    no_cooldown: RouteHealth, routes: tuple[Route, ...]
) -> None:
    await _open(no_cooldown, "local_gpu")
    assert await _plan(no_cooldown, routes, gpu(healthy=False)) == [("fal", "failover_unhealthy")]
    assert await _state(no_cooldown, "local_gpu") == "open"
    assert await no_cooldown.try_trial("local_gpu", "hidream-i1-full") == "trial"


@pytest.mark.parametrize("kind", ["balanced", "priority"])
async def test_a_route_closed_since_this_process_read_it_is_kept(
    redis_url: str, routes: tuple[Route, ...], kind: str
) -> None:
    """This process cached the GPU's breaker as open; another process's trial has closed it since."""
    client = Redis.from_url(redis_url)
    try:
        other = RouteHealth(client, BreakerConfig(consecutive_failures=2, cooldown_s=0), cache_s=0)
        cached = RouteHealth(client, BreakerConfig(consecutive_failures=2, cooldown_s=0), cache_s=60)
        await _open(other, "local_gpu")
        assert await _state(cached, "local_gpu") == "open"  # read once, then answered from the cache
        assert await other.try_trial("local_gpu", "hidream-i1-full") == "trial"
        assert await other.record("local_gpu", "hidream-i1-full", True, 3.0) == "closed"
        policy = RoutingPolicy(kind=kind, latency_target_s=30.0)  # type: ignore[arg-type]
        plan = await _plan(cached, routes, gpu(), policy=policy)
        assert [provider for provider, _ in plan] == ["local_gpu", "fal"]
        assert plan[0][1] in ("cheapest_healthy", "priority")
    finally:
        await client.aclose()


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


def queue(service_s: float, wait_s: float) -> dict[tuple[str, str], ProviderHealth]:
    return {
        ("hidream-i1-full", "local_gpu"): ProviderHealth(True, expected_wait_s=wait_s, service_s=service_s),
        ("hidream-i1-full", "fal"): ProviderHealth(True),
    }


async def test_spills_over_as_soon_as_the_expected_time_passes_the_target(
    health: RouteHealth, routes: tuple[Route, ...]
) -> None:
    # 20 s of work + 12 s of queue = 32 s, 2 s past the 30 s target. fal (never observed: 15 s)
    # is within it, so it goes first though the GPU is $0.038 cheaper and 2 late seconds are
    # priced at only $0.02: waiting is free up to the target, and past it the teams would rather pay.
    assert (await _plan(health, routes, queue(20.0, 12.0)))[0] == ("fal", "latency_over_target")
    assert (await _plan(health, routes, queue(20.0, 10.0)))[0] == ("local_gpu", "cheapest_healthy")


async def test_when_every_route_is_late_cost_and_the_price_of_lateness_decide(
    health: RouteHealth, routes: tuple[Route, ...]
) -> None:
    for _ in range(5):
        await health.record("fal", "hidream-i1-full", True, 40.0)  # fal is slow today: 10 s late
    # GPU 5 s late: $0.014 + 5 x $0.01 = $0.064 against fal's $0.0524 + 10 x $0.01 = $0.1524
    assert (await _plan(health, routes, queue(20.0, 15.0)))[0] == ("local_gpu", "cheapest_healthy")
    # GPU 25 s late (its wait alone is within the target): $0.264 against $0.1524
    assert (await _plan(health, routes, queue(25.0, 30.0)))[0] == ("fal", "latency_over_target")


async def test_a_route_never_observed_is_expected_to_take_the_policys_default_latency(
    health: RouteHealth, routes: tuple[Route, ...]
) -> None:
    gpu_late = queue(20.0, 12.0)  # 32 s, 2 s past the target
    quick = RoutingPolicy(latency_target_s=30.0, default_latency_s=15.0)
    slow = RoutingPolicy(latency_target_s=30.0, default_latency_s=45.0)
    assert (await _plan(health, routes, gpu_late, policy=quick))[0][0] == "fal"
    assert (await _plan(health, routes, gpu_late, policy=slow))[0][0] == "local_gpu"  # both late: cost decides
    await health.record("fal", "hidream-i1-full", True, 10.0)
    assert (await _plan(health, routes, gpu_late, policy=slow))[0][0] == "fal"  # observed: the default is gone


class _IdleFal:
    """A provider that is always up and never queues (stands in for fal: no queue estimate)."""

    name = "fal"

    async def generate(self, target: RouteTarget, request: ImageRequest) -> ImageResult:
        raise AssertionError("not called")

    async def probe(self, target: RouteTarget) -> ProviderHealth:
        return ProviderHealth(True)

    async def aclose(self) -> None:
        return None


async def test_jobs_sent_since_the_last_probe_round_count_at_once_and_drain_with_time(
    health: RouteHealth, catalog: Catalog, routes: tuple[Route, ...]
) -> None:
    """Between probe rounds the router sees each GPU queue as the adapter knows it now: every job
    it sent since the round adds one job's time, and the worker works that off as time passes."""
    now = [1000.0]  # the adapter's clock, moved by hand: nothing here depends on real time
    pipeline = StandInPipeline()
    jobs: list[asyncio.Task[ImageResult]] = []
    with running_worker("full", max_queue=4, pipeline=pipeline) as worker:
        units = JobSpec("p", None, 1, 1024, 1024, 50, 5.0, 0)  # one image at the variant's defaults
        worker.state.queue.seed_estimate(units, 10.0)  # the worker says: one job takes 10 s
        gpu = LocalGpuProvider([worker.url], connect_timeout_s=2.0, status_ttl_s=3600, clock=lambda: now[0])
        board = HealthBoard(catalog, {"local_gpu": gpu, "fal": _IdleFal()}, interval_s=3600)
        router = Router(health)
        target_25s = RoutingPolicy(latency_target_s=25.0)

        async def first(probes: Mapping[tuple[str, str], ProviderHealth]) -> tuple[str, str]:
            plan = await router.plan(routes, probes, width=1024, height=1024, n=1, policy=target_25s)
            return plan[0].route.provider, plan[0].reason

        try:
            await board.refresh()  # the probe round: an idle worker, 10 s a job
            assert await first(board.current()) == ("local_gpu", "cheapest_healthy")
            pipeline.plan("hold", 2)
            jobs = [asyncio.create_task(gpu.generate(FULL_TARGET, make_request())) for _ in range(2)]
            in_worker = worker.state.queue
            await asyncio.to_thread(wait_until, lambda: in_worker.in_flight + in_worker.waiting == 2, "2 jobs in")

            last_round = {(m, p): h for m, by in (await board.snapshot()).items() for p, h in by.items()}
            assert last_round[LOCAL_FULL].expected_wait_s == 0.0  # the round still says "idle" ...
            assert await first(last_round) == ("local_gpu", "cheapest_healthy")  # ... and would pile on
            assert board.current()[LOCAL_FULL].expected_wait_s == 20.0  # two jobs of 10 s since
            assert await first(board.current()) == ("fal", "latency_over_target")  # 20 s + 10 s > 25 s

            now[0] += 15.0  # a job and a half later, with no probe round in between
            assert board.current()[LOCAL_FULL].expected_wait_s == 5.0
            assert await first(board.current()) == ("local_gpu", "cheapest_healthy")  # 5 s + 10 s
        finally:
            pipeline.release.set()
            await asyncio.gather(*jobs, return_exceptions=True)
            await gpu.aclose()


FULL_TARGET = RouteTarget("local_gpu", "hidream-i1-full", "hidream-i1-full", None, 4)
LOCAL_FULL = ("hidream-i1-full", "local_gpu")


@pytest.mark.parametrize("kind", ["balanced", "priority"])
async def test_a_dry_run_plan_claims_no_trial(no_cooldown: RouteHealth, routes: tuple[Route, ...], kind: str) -> None:
    """A dry run shows where a request would go now and leaves an open route's trial to a real one."""
    await _open(no_cooldown, "local_gpu")
    policy = RoutingPolicy(kind=kind, latency_target_s=30.0)  # type: ignore[arg-type]
    dry = await Router(no_cooldown).plan(routes, gpu(), width=1024, height=1024, n=1, policy=policy, claim=False)
    assert [p.route.provider for p in dry] == ["fal"]
    assert await _state(no_cooldown, "local_gpu") == "open"
    assert (await _plan(no_cooldown, routes, gpu(), policy=policy))[0][0] == "local_gpu"  # the real one takes it
    assert await _state(no_cooldown, "local_gpu") == "half_open"
