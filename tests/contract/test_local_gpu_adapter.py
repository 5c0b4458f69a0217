"""What the local GPU adapter does beyond the shared contract: choosing among several real
workers (stand-in pipelines) by variant and expected wait, and failing over between them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from providers.base import ErrorKind, ProviderError, RouteTarget
from providers.local_gpu import LocalGpuProvider
from tests.contract.cases.local_gpu import make_request
from tests.fakes.server import free_port
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import RunningWorker, running_worker, wait_until

FULL = RouteTarget("local_gpu", "hidream-i1-full", "hidream-i1-full", None, 4)
DEV = RouteTarget("local_gpu", "hidream-i1-dev", "hidream-i1-dev", None, 4)
FAST = RouteTarget("local_gpu", "hidream-i1-fast", "hidream-i1-fast", None, 4)


@pytest.fixture
def two_full_workers() -> Iterator[tuple[RunningWorker, RunningWorker]]:
    with running_worker("full", max_queue=1) as a, running_worker("full", max_queue=1) as b:
        yield a, b


def provider_for(*workers: RunningWorker, ttl_s: float = 60.0) -> LocalGpuProvider:
    # A long TTL: the adapter acts on the reports it read in the test's probe, not fresh ones.
    return LocalGpuProvider([w.url for w in workers], connect_timeout_s=2.0, status_ttl_s=ttl_s)


async def test_routes_to_the_worker_with_the_lowest_expected_wait(
    two_full_workers: tuple[RunningWorker, RunningWorker],
) -> None:
    busy, idle = two_full_workers
    await asyncio.to_thread(busy.fill_queue)  # one job running, one waiting: a wait above zero
    provider = provider_for(busy, idle)
    try:
        health = await provider.probe(FULL)
        assert health.healthy and health.expected_wait_s == 0.0  # the idle worker's wait
        assert health.queue_depth == 1 and not health.saturated
        await provider.generate(FULL, make_request())
        assert idle.jobs_started() == 1
        assert (busy.jobs_started(), busy.state.queue.stats.rejected) == (2, 0)  # never asked
    finally:
        await provider.aclose()


async def test_requests_sent_since_the_last_report_count_against_a_worker(
    two_full_workers: tuple[RunningWorker, RunningWorker],
) -> None:
    a, b = two_full_workers
    for w in (a, b):
        w.pipeline.plan("hold")  # each keeps its first job running
    provider = provider_for(a, b)
    try:
        await provider.probe(FULL)  # both idle: equal waits
        calls = [asyncio.create_task(provider.generate(FULL, make_request())) for _ in range(2)]
        await asyncio.to_thread(wait_until, lambda: a.jobs_started() == 1 and b.jobs_started() == 1, "both busy")
        for w in (a, b):
            w.pipeline.release.set()
        results = await asyncio.gather(*calls)
        assert all(len(r.images) == 1 for r in results)
    finally:
        await provider.aclose()


@pytest.mark.parametrize("refusal", ["queue_full", "draining", "connection_refused"])
async def test_fails_over_to_the_next_worker_of_the_variant(
    refusal: str, two_full_workers: tuple[RunningWorker, RunningWorker]
) -> None:
    first, second = two_full_workers
    provider = provider_for(first, second)
    try:
        await provider.probe(FULL)  # both ready and idle; the first listed is tried first
        if refusal == "queue_full":
            await asyncio.to_thread(first.fill_queue)
        elif refusal == "draining":
            first.state.draining = True
        else:
            first.stop()
        result = await provider.generate(FULL, make_request(seed=5))
        assert result.seed == 5
        assert second.jobs_started() == 1
        if refusal == "queue_full":
            assert first.state.queue.stats.rejected == 1
        if refusal == "draining":
            registry = first.state.metrics.registry
            assert registry.get_sample_value("hidream_requests_total", {"status": "not_ready"}) == 1
    finally:
        first.pipeline.release.set()
        await provider.aclose()


async def test_when_every_worker_is_busy_the_soonest_retry_after_wins(
    two_full_workers: tuple[RunningWorker, RunningWorker],
) -> None:
    a, b = two_full_workers
    provider = provider_for(a, b)
    try:
        await provider.probe(FULL)
        for w in (a, b):
            await asyncio.to_thread(w.fill_queue)
        assert (await provider.probe(FULL)).saturated
        with pytest.raises(ProviderError) as info:
            await provider.generate(FULL, make_request())
        assert info.value.kind == ErrorKind.RATE_LIMITED
        assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1
        assert (a.state.queue.stats.rejected, b.state.queue.stats.rejected) == (1, 1)
    finally:
        for w in (a, b):
            w.pipeline.release.set()
        await provider.aclose()


async def test_each_variant_goes_to_its_own_workers() -> None:
    with ExitStack() as stack:
        full = stack.enter_context(running_worker("full"))
        dev = stack.enter_context(running_worker("dev"))
        provider = provider_for(full, dev, ttl_s=2.0)
        try:
            await provider.generate(DEV, make_request(model="hidream-i1-dev", guidance_scale=None))
            await provider.generate(FULL, make_request())
            assert (full.jobs_started(), dev.jobs_started()) == (1, 1)
            assert dev.pipeline.calls[-1].guidance_scale == 0.0  # the dev default, not Full's
            assert full.pipeline.calls[-1].guidance_scale == 5.0
            fast = await provider.probe(FAST)
            # Every worker said what it runs and none runs Fast: not configured, not a failure.
            assert (fast.healthy, fast.configured) == (False, False)
            runs = "the workers run hidream-i1-dev, hidream-i1-full"
            assert fast.detail == f"no worker configured for hidream-i1-fast ({runs})"
            assert (await provider.probe(DEV)).configured
            with pytest.raises(ProviderError) as info:
                await provider.generate(FAST, make_request(model="hidream-i1-fast", guidance_scale=None))
            assert info.value.kind == ErrorKind.UNAVAILABLE
        finally:
            await provider.aclose()


async def test_a_variant_only_a_worker_that_never_answered_might_run_is_unhealthy_not_unconfigured() -> None:
    with running_worker("full") as full:
        provider = LocalGpuProvider([full.url, f"http://127.0.0.1:{free_port()}"], connect_timeout_s=0.5)
        try:
            health = await provider.probe(FAST)
            assert (health.healthy, health.configured) == (False, True)
            assert health.detail == "no reachable worker runs hidream-i1-fast (1 of 2 workers never answered)"
        finally:
            await provider.aclose()


async def test_a_loading_worker_is_not_ready_until_it_has_loaded_and_warmed() -> None:
    loaded = threading.Event()
    with running_worker("full", loaded=loaded, wait_ready=False) as worker:
        provider = provider_for(worker, ttl_s=0.0)
        try:
            health = await provider.probe(FULL)
            assert not health.healthy
            with pytest.raises(ProviderError) as info:
                await provider.generate(FULL, make_request())
            assert info.value.kind == ErrorKind.NOT_READY
            assert info.value.retry_after_s == worker.state.settings.not_ready_retry_after_s
            assert worker.jobs_started() == 0
            loaded.set()
            await asyncio.to_thread(wait_until, lambda: worker.state.ready, "the worker to warm up")
            assert (await provider.probe(FULL)).healthy
            assert len((await provider.generate(FULL, make_request())).images) == 1
        finally:
            await provider.aclose()


async def test_a_timeout_cancels_the_job_on_the_worker() -> None:
    with running_worker("full", pipeline=StandInPipeline()) as worker:
        worker.pipeline.plan("hang")
        provider = provider_for(worker)
        try:
            with pytest.raises(ProviderError) as info:
                await provider.generate(FULL, make_request(timeout_s=0.5))
            assert info.value.kind == ErrorKind.TIMEOUT
            await asyncio.to_thread(wait_until, lambda: worker.jobs_cancelled() == 1, "the worker to drop the job")
            assert worker.pipeline.calls[-1].interrupted
        finally:
            await provider.aclose()
