"""The worker's queue: bounded admission, one job at a time in FIFO order, cancellation of waiting
and running jobs, and the expected-wait estimate behind /ready and Retry-After."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from worker.errors import InferenceError, JobCancelledError, QueueFullError
from worker.jobs import JobOutput, JobQueue, JobSpec, Report


def spec(prompt: str = "p", n: int = 1, steps: int = 10, guidance: float = 0.0) -> JobSpec:
    return JobSpec(prompt, None, n, 1024, 1024, steps, guidance, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Executor:
    """Records what ran; jobs whose prompt starts with "block" wait for `gate` (or cancellation)."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.gate = threading.Event()
        self.running = threading.Event()
        self.concurrent = 0
        self.max_concurrent = 0
        self.saw_cancel: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, job: JobSpec, cancel: threading.Event, report: Report | None) -> JobOutput:
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.running.set()
            if job.prompt.startswith("block"):
                while not self.gate.is_set():
                    if cancel.wait(0.001):
                        self.saw_cancel.append(job.prompt)
                        raise JobCancelledError("interrupted")
            if job.prompt.startswith("fail"):
                raise InferenceError("boom")
            self.ran.append(job.prompt)
            return JobOutput((b"png",), job.width, job.height)
        finally:
            with self._lock:
                self.concurrent -= 1
            self.running.clear()


async def eventually(predicate: Callable[[], bool]) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not reached")


@pytest.fixture
async def running() -> AsyncIterator[tuple[JobQueue, Executor, Clock]]:
    clock = Clock()
    queue = JobQueue(max_queue=2, clock=clock)
    ex = Executor()
    task = asyncio.create_task(queue.run(ex))
    yield queue, ex, clock
    ex.gate.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_classifier_free_guidance_doubles_the_work() -> None:
    assert spec(n=2, steps=10, guidance=0.0).work_units == 20
    assert spec(n=2, steps=10, guidance=1.0).work_units == 20  # diffusers uses CFG only above 1
    assert spec(n=2, steps=10, guidance=5.0).work_units == 40


async def test_admits_one_running_plus_max_queue_then_refuses(running: tuple[JobQueue, Executor, Clock]) -> None:
    queue, ex, clock = running
    queue.seed_estimate(spec(steps=10), 10.0)  # 1 s per step-image
    first = queue.submit(spec("block-1", steps=10), "1")
    await eventually(lambda: queue.in_flight == 1)
    queue.submit(spec("a"), "2")
    queue.submit(spec("b"), "3")
    assert (queue.in_flight, queue.waiting) == (1, 2)
    clock.now += 4.0  # the running job is 4 s into an estimated 10 s
    with pytest.raises(QueueFullError) as info:
        queue.submit(spec("c"), "4")
    assert info.value.retry_after_s == pytest.approx(6.0)
    assert info.value.headers() == {"retry-after": "6"}
    assert queue.stats.rejected == 1 and queue.stats.accepted == 3
    ex.gate.set()
    assert await first.future == JobOutput((b"png",), 1024, 1024)
    await eventually(lambda: queue.stats.completed == 3)


async def test_max_queue_zero_admits_only_the_running_job() -> None:
    queue = JobQueue(max_queue=0)
    queue.submit(spec(), "1")
    with pytest.raises(QueueFullError):
        queue.submit(spec(), "2")


async def test_jobs_run_one_at_a_time_in_arrival_order(running: tuple[JobQueue, Executor, Clock]) -> None:
    queue, ex, _ = running
    jobs = [queue.submit(spec(p), p) for p in ("x", "y", "z")]
    await asyncio.gather(*(j.future for j in jobs))
    assert ex.ran == ["x", "y", "z"]
    assert ex.max_concurrent == 1
    assert (queue.in_flight, queue.waiting) == (0, 0)


async def test_a_cancelled_waiting_job_is_dropped_and_never_runs(running: tuple[JobQueue, Executor, Clock]) -> None:
    queue, ex, _ = running
    blocker = queue.submit(spec("block"), "1")
    await eventually(ex.running.is_set)
    dropped = queue.submit(spec("dropped"), "2")
    kept = queue.submit(spec("kept"), "3")
    queue.cancel(dropped)
    assert dropped.future.cancelled()
    assert queue.waiting == 1 and queue.stats.cancelled == 1
    ex.gate.set()
    await asyncio.gather(blocker.future, kept.future)
    assert ex.ran == ["block", "kept"]


async def test_a_cancelled_running_job_is_interrupted(running: tuple[JobQueue, Executor, Clock]) -> None:
    queue, ex, _ = running
    before = queue.seconds_per_unit
    job = queue.submit(spec("block-forever"), "1")
    await eventually(ex.running.is_set)
    queue.cancel(job)
    await eventually(lambda: queue.stats.cancelled == 1)
    assert ex.saw_cancel == ["block-forever"]
    assert job.future.cancelled()
    assert queue.in_flight == 0
    assert queue.seconds_per_unit == before  # an interrupted run teaches the estimate nothing
    after = queue.submit(spec("next"), "2")
    await after.future
    assert queue.stats.completed == 1


async def test_a_failed_job_fails_alone(running: tuple[JobQueue, Executor, Clock]) -> None:
    queue, ex, _ = running
    bad = queue.submit(spec("fail"), "1")
    good = queue.submit(spec("good"), "2")
    with pytest.raises(InferenceError):
        await bad.future
    await good.future
    assert (queue.stats.failed, queue.stats.completed) == (1, 1)


async def test_cancel_all_stops_waiting_and_running_jobs(running: tuple[JobQueue, Executor, Clock]) -> None:
    queue, ex, _ = running
    jobs = [queue.submit(spec("block"), "1"), queue.submit(spec("w"), "2")]
    await eventually(ex.running.is_set)
    queue.cancel_all()
    await eventually(lambda: queue.stats.cancelled == 2)
    assert all(j.future.cancelled() for j in jobs)
    assert ex.ran == []


async def test_expected_wait_counts_the_running_remainder_and_every_waiting_job(
    running: tuple[JobQueue, Executor, Clock],
) -> None:
    queue, ex, clock = running
    queue.seed_estimate(spec(n=1, steps=10, guidance=0.0), 5.0)  # 0.5 s per step-image
    assert queue.expected_wait_s() == 0.0
    queue.submit(spec("block", n=1, steps=10), "1")  # est. 5 s
    await eventually(lambda: queue.in_flight == 1)
    queue.submit(spec("a", n=2, steps=10, guidance=5.0), "2")  # 40 units: est. 20 s
    assert queue.expected_wait_s() == pytest.approx(25.0)
    clock.now += 3.0
    assert queue.expected_wait_s() == pytest.approx(22.0)
    clock.now += 10.0  # the running job overran its estimate: it counts as about to end
    assert queue.expected_wait_s() == pytest.approx(20.0)
    assert queue.slot_free_in_s() == 0.0


def test_the_estimate_is_an_ewma_of_seconds_per_step_image() -> None:
    queue = JobQueue(max_queue=1, initial_seconds_per_unit=1.0, alpha=0.5)
    assert queue.ewma_latency_s is None
    queue.observe(spec(n=1, steps=10), 3.0)  # 0.3 s per unit
    assert queue.seconds_per_unit == pytest.approx(0.65)
    assert queue.ewma_latency_s == pytest.approx(3.0)
    queue.observe(spec(n=2, steps=10, guidance=5.0), 8.0)  # 40 units: 0.2 s per unit
    assert queue.seconds_per_unit == pytest.approx(0.425)
    assert queue.ewma_latency_s == pytest.approx(5.5)
    queue.seed_estimate(spec(n=1, steps=4), 2.0)
    assert queue.seconds_per_unit == pytest.approx(0.5)
