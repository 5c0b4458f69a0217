"""The owned GPUs' queue as the router sees it between probe rounds, against a real worker: jobs
begun and not yet sent count (held until sent, released on every other way out), jobs sent while a
/ready read is out are not forgotten when it answers, and a worker that a job cannot reach takes
its route down at once rather than at the next probe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.catalog import Catalog, RoutingPolicy, load_catalog
from gateway.images.validation import Params, validate_generation
from gateway.metrics import Metrics
from gateway.routing.breaker import RouteHealth
from gateway.routing.dispatch import Dispatcher, RoutingRequest
from gateway.routing.health import HealthBoard
from gateway.routing.router import Router
from providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderError,
    ProviderHealth,
    ProviderNotReadyError,
    ProviderTimeoutError,
    RouteTarget,
)
from providers.local_gpu import LocalGpuProvider
from tests.contract.cases.local_gpu import make_request
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import RunningWorker, running_worker, wait_until
from worker.jobs import JobSpec

FULL = RouteTarget("local_gpu", "hidream-i1-full", "hidream-i1-full", None, 4)
LOCAL_FULL = ("hidream-i1-full", "local_gpu")
JOB_S = 10.0  # what the worker says one job takes


@dataclass
class _Fal:
    """Stands in for fal: always up, answers at once, counts its calls."""

    name: str = "fal"
    calls: list[str] = field(default_factory=list)

    async def generate(self, target: RouteTarget, request: ImageRequest) -> ImageResult:
        self.calls.append(request.request_id)
        image = GeneratedImage("image/png", request.width, request.height, data=b"png")
        return ImageResult((image,) * request.n)

    async def probe(self, target: RouteTarget) -> ProviderHealth:
        return ProviderHealth(True)

    async def aclose(self) -> None:
        return None


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(Path(__file__).resolve().parents[2] / "pricing.yaml")


@pytest.fixture
async def route_health(redis_url: str) -> AsyncIterator[RouteHealth]:
    client = Redis.from_url(redis_url)
    yield RouteHealth(client)
    await client.aclose()


@pytest.fixture
def worker() -> Iterator[RunningWorker]:
    with running_worker("full", max_queue=8, pipeline=StandInPipeline()) as w:
        units = JobSpec("p", None, 1, 1024, 1024, 50, 5.0, 0)  # one image at the variant's defaults
        w.state.queue.seed_estimate(units, JOB_S)
        yield w


def _gpu(worker: RunningWorker, *, status_ttl_s: float) -> LocalGpuProvider:
    """The adapter on a clock that stands still: every wait it estimates is exact. A negative
    `status_ttl_s` makes every generate read the worker's /ready before sending (as when its
    cached status has lapsed, which the probe rounds normally prevent)."""
    return LocalGpuProvider([worker.url], connect_timeout_s=2.0, status_ttl_s=status_ttl_s, clock=lambda: 1000.0)


def _jobs_in(worker: RunningWorker) -> int:
    queue = worker.state.queue
    return queue.in_flight + queue.waiting


async def test_requests_planned_while_a_worker_status_is_read_do_not_all_join_its_queue(
    worker: RunningWorker, catalog: Catalog, route_health: RouteHealth
) -> None:
    """Six requests at once, the GPU idle at 10 s a job, a 25 s target: two fit (10 s, 20 s), the
    third would take 30 s. Each waits for the worker's /ready before sending; those planned
    meanwhile must count the ones ahead of them, or all six join the queue."""
    gpu, fal = _gpu(worker, status_ttl_s=-1.0), _Fal()
    board = HealthBoard(catalog, {"local_gpu": gpu, "fal": fal}, interval_s=3600)
    dispatcher = Dispatcher({"local_gpu": gpu, "fal": fal}, Router(route_health), route_health, board, Metrics())
    valid = validate_generation(catalog, Params({"model": "hidream-i1-full", "prompt": "p"}, form=False))
    routing = RoutingRequest(RoutingPolicy(latency_target_s=25.0))
    worker.pipeline.plan("hold")
    await board.refresh()
    loop = asyncio.get_running_loop()
    calls = [
        asyncio.create_task(dispatcher.call(valid, f"r{i}", loop.time() + 60, routing, team_id="t")) for i in range(6)
    ]
    try:
        await asyncio.to_thread(wait_until, lambda: len(fal.calls) + _jobs_in(worker) == 6, "six requests placed")
        assert (_jobs_in(worker), len(fal.calls)) == (2, 4)
    finally:
        worker.pipeline.release.set()
        await asyncio.gather(*calls, return_exceptions=True)
        await gpu.aclose()


async def test_jobs_sent_while_a_ready_read_is_out_count_on_top_of_its_answer(
    worker: RunningWorker, catalog: Catalog
) -> None:
    """The worker answers /ready (idle), and before that answer arrives two jobs are sent: they
    are not in it, and the estimate must not drop them when it comes."""
    gpu = _gpu(worker, status_ttl_s=3600)
    board = HealthBoard(catalog, {"local_gpu": gpu, "fal": _Fal()}, interval_s=3600)
    await board.refresh()
    worker.pipeline.plan("hold")
    worker.injector.ready_gate = gate = threading.Event()
    jobs: list[asyncio.Task[ImageResult]] = []
    try:
        probing = asyncio.create_task(board.refresh())
        await asyncio.to_thread(wait_until, worker.injector.ready_held.is_set, "the idle answer made")
        jobs = [asyncio.create_task(gpu.generate(FULL, make_request())) for _ in range(2)]
        await asyncio.to_thread(wait_until, lambda: _jobs_in(worker) == 2, "two jobs in the worker")
        gate.set()
        await probing
        assert board.current()[LOCAL_FULL].expected_wait_s == 2 * JOB_S
    finally:
        gate.set()
        worker.pipeline.release.set()
        await asyncio.gather(*jobs, return_exceptions=True)
        await gpu.aclose()


class _Held:
    """A generate() waiting for the worker's /ready (held back), so its job is begun, not sent."""

    def __init__(self, worker: RunningWorker, gpu: LocalGpuProvider, request: ImageRequest) -> None:
        self.gate = threading.Event()
        worker.injector.ready_held.clear()
        worker.injector.ready_gate = self.gate
        self.task = asyncio.create_task(gpu.generate(FULL, request))
        self._worker = worker

    async def started(self) -> None:
        await asyncio.to_thread(wait_until, self._worker.injector.ready_held.is_set, "generate reading /ready")

    async def end(self, board: HealthBoard, gpu: LocalGpuProvider) -> None:
        """Let the held /ready answer go and the read finish (a probe joins it), then close."""
        self.gate.set()
        self._worker.pipeline.release.set()
        await asyncio.gather(self.task, return_exceptions=True)
        await board.refresh()
        await gpu.aclose()


async def _idle_board(worker: RunningWorker, catalog: Catalog, gpu: LocalGpuProvider) -> HealthBoard:
    board = HealthBoard(catalog, {"local_gpu": gpu, "fal": _Fal()}, interval_s=3600)
    await board.refresh()
    assert board.current()[LOCAL_FULL].expected_wait_s == 0.0
    return board


async def test_a_job_begun_counts_until_sent_then_as_sent(worker: RunningWorker, catalog: Catalog) -> None:
    gpu = _gpu(worker, status_ttl_s=-1.0)
    board = await _idle_board(worker, catalog, gpu)
    worker.pipeline.plan("hold")
    held = _Held(worker, gpu, make_request())
    try:
        await held.started()
        assert board.current()[LOCAL_FULL].expected_wait_s == JOB_S  # begun: counted
        held.gate.set()
        await asyncio.to_thread(wait_until, lambda: _jobs_in(worker) == 1, "the job in the worker")
        assert board.current()[LOCAL_FULL].expected_wait_s == JOB_S  # sent: counted once, not twice
        worker.pipeline.release.set()
        await held.task
        await board.refresh()
        assert board.current()[LOCAL_FULL].expected_wait_s == 0.0  # done: nothing left over
    finally:
        await held.end(board, gpu)


async def test_a_job_whose_caller_goes_away_before_it_is_sent_is_no_longer_counted(
    worker: RunningWorker, catalog: Catalog
) -> None:
    gpu = _gpu(worker, status_ttl_s=-1.0)
    board = await _idle_board(worker, catalog, gpu)
    held = _Held(worker, gpu, make_request())
    try:
        await held.started()
        assert board.current()[LOCAL_FULL].expected_wait_s == JOB_S
        held.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held.task
        assert board.current()[LOCAL_FULL].expected_wait_s == 0.0
        assert _jobs_in(worker) == 0
    finally:
        await held.end(board, gpu)


async def test_a_job_that_times_out_before_it_is_sent_is_no_longer_counted(
    worker: RunningWorker, catalog: Catalog
) -> None:
    gpu = _gpu(worker, status_ttl_s=-1.0)
    board = await _idle_board(worker, catalog, gpu)
    held = _Held(worker, gpu, make_request(timeout_s=0.3))
    try:
        with pytest.raises(ProviderTimeoutError):
            await held.task
        assert board.current()[LOCAL_FULL].expected_wait_s == 0.0
    finally:
        await held.end(board, gpu)


async def test_a_job_no_worker_can_take_falls_back_and_is_no_longer_counted(
    worker: RunningWorker, catalog: Catalog
) -> None:
    """The worker turns out to be draining when the job is about to be sent: not ready, so the
    gateway falls back to another route, and the job must not linger in the GPU's estimate."""
    gpu = _gpu(worker, status_ttl_s=-1.0)
    board = await _idle_board(worker, catalog, gpu)
    held = _Held(worker, gpu, make_request())
    try:
        await held.started()
        worker.state.draining = True
        held.gate.set()
        with pytest.raises(ProviderNotReadyError):
            await held.task
        worker.state.draining = False
        worker.injector.ready_gate = None
        await board.refresh()
        assert board.current()[LOCAL_FULL].expected_wait_s == 0.0
    finally:
        worker.state.draining = False
        await held.end(board, gpu)


async def test_a_worker_a_job_cannot_reach_takes_its_route_down_before_the_next_probe(
    worker: RunningWorker, catalog: Catalog
) -> None:
    gpu = _gpu(worker, status_ttl_s=3600)
    board = await _idle_board(worker, catalog, gpu)
    worker.stop()  # connection refused from now on, as a worker that was killed
    try:
        with pytest.raises(ProviderError):  # refused, or a pooled connection found closed
            await gpu.generate(FULL, make_request())
        assert board.current()[LOCAL_FULL].healthy is False
        await board.refresh()  # the next probe agrees
        assert board.current()[LOCAL_FULL].healthy is False
    finally:
        await gpu.aclose()


def _connections_to(url: str) -> int:
    """This process's open TCP connections to the URL's port (Linux: /proc)."""
    port = int(url.rsplit(":", 1)[1])
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor, gone by now
            ours.add(os.readlink(f"/proc/self/fd/{fd}"))
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    fields = [row.split() for row in rows]  # remote address at 2 ("0100007F:8D99"), state at 3, inode at 9
    return sum(1 for f in fields if int(f[2].split(":")[1], 16) == port and f"socket:[{f[9]}]" in ours)


async def test_closing_the_provider_closes_a_ready_read_still_out(worker: RunningWorker, catalog: Catalog) -> None:
    """A /ready read held by the worker when the gateway shuts down: aclose() returns once its
    connection is closed, not with the read's cancellation still to run (a socket left open)."""
    gpu = _gpu(worker, status_ttl_s=3600)
    board = HealthBoard(catalog, {"local_gpu": gpu, "fal": _Fal()}, interval_s=3600)
    worker.injector.ready_gate = gate = threading.Event()
    probing = asyncio.create_task(board.refresh())
    try:
        await asyncio.to_thread(wait_until, worker.injector.ready_held.is_set, "the answer held")
        assert _connections_to(worker.url) == 1
        await gpu.aclose()
        assert _connections_to(worker.url) == 0
    finally:
        gate.set()
        await asyncio.gather(probing, return_exceptions=True)
