"""The worker's execution model: one job at a time (inference in a thread) behind a bounded FIFO,
cancellation of queued and running jobs, and the expected-wait estimate that /ready and
Retry-After report, learned from the jobs it has run."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from worker.errors import JobCancelledError, QueueFullError

log = logging.getLogger("worker.jobs")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One validated generation: every value is inside the worker's limits, defaults filled."""

    prompt: str
    negative_prompt: str | None
    n: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    partial_images: int = 0  # previews to send while it runs (worker/previews.py), 0-3

    @property
    def work_units(self) -> int:
        """Transformer forwards per image, times images: the cost that latency scales with.
        diffusers runs classifier-free guidance (a doubled batch) only when guidance > 1."""
        return self.n * self.steps * (2 if self.guidance_scale > 1.0 else 1)


@dataclass(frozen=True, slots=True)
class JobOutput:
    images: tuple[bytes, ...]  # PNG
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class StepDone:
    """A denoising step finished (sent to a streaming client as `progress`)."""

    step: int  # steps done, 1-based
    steps: int


@dataclass(frozen=True, slots=True)
class Preview:
    """A partial image: one PNG per image of the batch, from the latents after `step` steps."""

    index: int  # 0-based, in the order sent
    step: int
    steps: int
    pngs: tuple[bytes, ...]
    width: int  # the preview's own size (latent resolution), not the job's
    height: int


JobEvent = StepDone | Preview
# Called from the inference thread; implementations hand the event to the event loop.
Report = Callable[[JobEvent], None]


class Execute(Protocol):
    def __call__(self, spec: JobSpec, cancel: threading.Event, report: Report | None) -> JobOutput: ...


@dataclass(slots=True)
class QueueStats:
    accepted: int = 0
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class Job:
    def __init__(self, job_id: str, spec: JobSpec, future: asyncio.Future[JobOutput], enqueued_at: float) -> None:
        self.id = job_id
        self.spec = spec
        self.future = future
        self.enqueued_at = enqueued_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cancel_requested = False
        # Read by the inference thread between denoising steps.
        self.cancel_event = threading.Event()
        self.report: Report | None = None  # a streaming client's: steps and previews as they come

    @property
    def queue_s(self) -> float:
        end = self.started_at if self.started_at is not None else self.finished_at
        return (end - self.enqueued_at) if end is not None else 0.0

    @property
    def infer_s(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.started_at


class JobQueue:
    """Admits a job while fewer than 1 + max_queue are running or waiting; runs them in order.

    All state lives on the event loop's thread; the inference thread sees only the spec and the
    job's cancel event.
    """

    def __init__(
        self,
        *,
        max_queue: int,
        initial_seconds_per_unit: float = 1.0,
        alpha: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_queue = max_queue
        self.stats = QueueStats()
        self._alpha = alpha
        self._clock = clock
        self._seconds_per_unit = initial_seconds_per_unit
        self._ewma_latency_s: float | None = None
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._wakeup = asyncio.Event()

    # --- what /ready and /metrics report --------------------------------------------------

    @property
    def in_flight(self) -> int:
        return 1 if self._running is not None else 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def seconds_per_unit(self) -> float:
        return self._seconds_per_unit

    @property
    def ewma_latency_s(self) -> float | None:
        return self._ewma_latency_s

    def estimate_s(self, spec: JobSpec) -> float:
        return spec.work_units * self._seconds_per_unit

    def running_remaining_s(self) -> float:
        job = self._running
        if job is None or job.started_at is None:
            return 0.0
        return max(0.0, self.estimate_s(job.spec) - (self._clock() - job.started_at))

    def expected_wait_s(self) -> float:
        """How long a job admitted now would wait before it starts."""
        return self.running_remaining_s() + sum(self.estimate_s(j.spec) for j in self._waiting)

    def ahead_of(self, job: Job) -> int:
        """Jobs that run before this one (the running one included); 0 once it runs."""
        if job is self._running:
            return 0
        try:
            return self.in_flight + self._waiting.index(job)
        except ValueError:
            return 0

    def slot_free_in_s(self) -> float:
        """How long until a full queue admits again: when the running job ends, the first waiting
        job starts and frees its place. Retry-After for a 429."""
        if self._running is None:
            return 0.0
        return self.running_remaining_s()

    def observe(self, spec: JobSpec, seconds: float) -> None:
        """Learn from one finished job (or the warm-up): an EWMA of seconds per work unit."""
        per_unit = seconds / max(1, spec.work_units)
        a = self._alpha
        self._seconds_per_unit = a * per_unit + (1 - a) * self._seconds_per_unit
        prev = self._ewma_latency_s
        self._ewma_latency_s = seconds if prev is None else a * seconds + (1 - a) * prev

    def seed_estimate(self, spec: JobSpec, seconds: float) -> None:
        """Start the estimate from one measured run (the warm-up) instead of the initial guess."""
        self._seconds_per_unit = seconds / max(1, spec.work_units)
        self._ewma_latency_s = seconds

    # --- admission and cancellation -------------------------------------------------------

    def submit(self, spec: JobSpec, job_id: str, report: Report | None = None) -> Job:
        if self.in_flight + self.waiting >= 1 + self.max_queue:
            self.stats.rejected += 1
            raise QueueFullError(
                f"The worker's queue is full ({self.waiting} waiting, {self.in_flight} running).",
                retry_after_s=self.slot_free_in_s(),
            )
        job = Job(job_id, spec, asyncio.get_running_loop().create_future(), self._clock())
        job.report = report
        self._waiting.append(job)
        self.stats.accepted += 1
        self._wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """The job's client is gone: drop it if it waits, interrupt it if it runs."""
        if job.cancel_requested or job.future.done():
            return
        job.cancel_requested = True
        job.cancel_event.set()
        job.future.cancel()
        if job in self._waiting:
            self._waiting.remove(job)
            job.finished_at = self._clock()
            self.stats.cancelled += 1
        # A running job is counted when its thread returns (see _finish).

    def cancel_all(self) -> None:
        for job in [*self._waiting, *([self._running] if self._running else [])]:
            self.cancel(job)

    # --- the one consumer -----------------------------------------------------------------

    async def run(self, execute: Execute) -> None:
        """Run jobs one at a time until cancelled (the app's lifespan owns this task)."""
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._waiting.popleft()
            self._running = job
            job.started_at = self._clock()
            work = asyncio.ensure_future(asyncio.to_thread(execute, job.spec, job.cancel_event, job.report))
            try:
                # Shielded so that shutting the loop down interrupts the thread between steps
                # instead of abandoning it mid-job.
                output = await asyncio.shield(work)
            except asyncio.CancelledError:
                self.cancel(job)
                await asyncio.gather(work, return_exceptions=True)
                self._finish(job, None, JobCancelledError())
                raise
            except Exception as exc:  # the job failed; the worker keeps serving
                self._finish(job, None, exc)
            else:
                self._finish(job, output, None)

    def _finish(self, job: Job, output: JobOutput | None, error: BaseException | None) -> None:
        job.finished_at = self._clock()
        self._running = None
        if job.cancel_requested or isinstance(error, JobCancelledError):
            self.stats.cancelled += 1
            log.info("job %s cancelled while running: %s", job.id, error or "it finished first; result dropped")
            if not job.future.done():
                job.future.cancel()
            return
        if error is not None:
            self.stats.failed += 1
            if not job.future.done():
                job.future.set_exception(error)
            return
        assert output is not None
        self.stats.completed += 1
        self.observe(job.spec, job.infer_s)
        if not job.future.done():
            job.future.set_result(output)
