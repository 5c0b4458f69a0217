"""LocalGpuProvider: the gateway's client for a pool of self-hosted HiDream workers.

It learns which worker serves which variant, and how long each would make a new job wait, from
their /ready reports (cached briefly), sends each request to the ready worker of the route's
variant with the lowest expected wait, and moves on to the next one on 429, 503 or a refused
connection. It never retries a worker that timed out or failed a job: generation is not free. A worker that
stops answering its /ready (a hung or stopped process) mid-job has its waiting jobs abandoned after
two missed reads, so the gateway falls back to another route instead of waiting out the deadline.

Its HTTP is the lean client in http.py: every generation the gateway serves from its own GPUs is
one exchange through it, at about a third of aiohttp's CPU and a twelfth of httpx's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import orjson

from providers.base import (
    ErrorKind,
    ImageRequest,
    ImageResult,
    ProgressSink,
    ProviderBadResponseError,
    ProviderError,
    ProviderHealth,
    ProviderNotReadyError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RouteTarget,
)
from providers.local_gpu import mapping
from providers.local_gpu.deadline import within
from providers.local_gpu.http import ConnectFailed, ExchangeBroken, ExchangeTimeout, WorkerHttp
from providers.local_gpu.mapping import PROVIDER, ReadyReport
from providers.local_gpu.stream import LineReader


class WorkerUnreachableError(ProviderUnavailableError):
    """No connection could be made: the job never reached the worker, so another may take it."""


class _Worker:
    """What the adapter knows about one worker base URL (event-loop state, never shared)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.report: ReadyReport | None = None
        self.model: str | None = None  # kept while unreachable: a worker's variant does not change
        self.reachable = False
        self.checked_at = float("-inf")
        self.sent_since_check = 0  # images we sent that its last report could not count
        self.sends = 0  # images ever sent to it (those sent while a /ready read is out are not in its answer)
        # The wait a new job would have had at `backlog_at`: the last report's, plus one job's
        # time for each job sent since. The worker works it off at one second a second.
        self.backlog_s = 0.0
        self.backlog_at = float("-inf")
        self.refreshing: asyncio.Task[None] | None = None
        self.jobs: set[asyncio.Task[object]] = set()  # the generations posted to it, still waiting
        self.missed_reports = 0  # consecutive /ready reads that got no answer

    @property
    def ready(self) -> bool:
        return self.reachable and self.report is not None and self.report.ready

    def expected_wait_s(self) -> float:
        if self.report is None:
            return float("inf")
        return self.report.expected_wait_s + self.sent_since_check * self.per_job_s()

    def wait_now(self, now: float) -> float:
        """expected_wait_s() brought up to `now`, without I/O."""
        if self.report is None:
            return float("inf")
        return max(0.0, self.backlog_s - (now - self.backlog_at))

    def per_job_s(self) -> float:
        """One image's time (a job of n images takes about n times it)."""
        return (self.report.per_image_s if self.report is not None else None) or 0.0

    def sent(self, now: float, images: int) -> None:
        """One job of `images` images sent: each adds one image's time (the worker's time scales
        with the images of a job)."""
        self.sends += images
        self.sent_since_check += images
        self.backlog_s = self.wait_now(now) + images * self.per_job_s()
        self.backlog_at = now

    def preference(self) -> tuple[float, int]:
        """Lowest expected wait first; on a tie (e.g. a running job past its estimate counts as
        ending now), the fewer jobs on it."""
        load = self.sent_since_check
        if self.report is not None:
            load += self.report.in_flight + self.report.queue_depth
        return self.expected_wait_s(), load

    def invalidate(self) -> None:
        self.checked_at = float("-inf")

    def lost(self, now: float) -> None:
        """A job could not reach it: down until a /ready read says otherwise, as a failed read."""
        self.reachable = False
        self.report = None
        self.checked_at = float("-inf")
        self.backlog_s = 0.0
        self.backlog_at = now


class LocalGpuProvider:
    name = PROVIDER
    makes_partial_images = True  # ReportsProgress: the worker's streaming answer (worker/streaming.py)

    def __init__(
        self,
        urls: Sequence[str],
        *,
        connect_timeout_s: float = 5.0,
        status_ttl_s: float = 2.0,
        status_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("LocalGpuProvider needs at least one worker URL")
        self._workers = [_Worker(u.rstrip("/")) for u in urls]
        self._connect_timeout_s = connect_timeout_s
        self._status_ttl_s = status_ttl_s
        self._status_timeout_s = status_timeout_s
        self._clock = clock
        # Generations hold a connection each for the whole job; a worker's own queue, not a pool
        # limit, is what bounds them.
        self._http = WorkerHttp(connect_timeout_s=connect_timeout_s)
        self._abandoned: set[asyncio.Task[object]] = set()  # jobs cancelled because their worker hung
        # Per upstream model: images of jobs generate() has begun and not yet sent to a worker (it
        # may wait for a /ready read first). The router counts them, so that requests planned
        # meanwhile do not all see the same wait and pile onto the same queue.
        self._held: dict[str, int] = {}

    async def aclose(self) -> None:
        # A /ready read still out is cancelled and awaited: its connection is closed when this
        # returns, not when the cancellation next runs (which a loop ending now would never do).
        reads = [w.refreshing for w in self._workers if w.refreshing is not None and not w.refreshing.done()]
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        await self._http.aclose()

    # --- ImageProvider ----------------------------------------------------------------------

    async def generate(self, target: RouteTarget, request: ImageRequest) -> ImageResult:
        return await self._generate_within(target, request, None)

    async def generate_reporting(self, target: RouteTarget, request: ImageRequest, report: ProgressSink) -> ImageResult:
        """ReportsProgress: the worker answers its stream, whose lines are reported as they come."""
        return await self._generate_within(target, request, report)

    async def _generate_within(
        self, target: RouteTarget, request: ImageRequest, report: ProgressSink | None
    ) -> ImageResult:
        body = mapping.generation_body(target, request)
        if report is not None:
            body["stream"] = True
            if request.partial_images:
                body["partial_images"] = request.partial_images
        try:
            return await within(request.timeout_s, self._generate(target.upstream_model, request, body, report))
        except TimeoutError:
            raise ProviderTimeoutError(
                f"no result from the local GPU workers within {request.timeout_s:.1f} s", provider=PROVIDER
            ) from None

    async def probe(self, target: RouteTarget) -> ProviderHealth:
        model = target.upstream_model
        await self._refresh([w for w in self._workers if w.model in (None, model)], force=True)
        serving = [w for w in self._workers if w.model == model]
        ready = sorted((w for w in serving if w.ready), key=_Worker.preference)
        if not serving:
            return self._unserved(model)
        if not ready:
            return ProviderHealth(healthy=False, detail=f"0/{len(serving)} workers for {model} ready")
        reports = [w.report for w in ready if w.report is not None]
        open_ = [w for w in ready if w.report is not None and not w.report.saturated]
        best = open_[0] if open_ else ready[0]
        return ProviderHealth(
            healthy=True,
            detail=f"{len(ready)}/{len(serving)} workers for {model} ready, {len(open_)} with room",
            queue_depth=sum(r.queue_depth for r in reports),
            expected_wait_s=best.expected_wait_s(),
            saturated=not open_,
            service_s=best.report.per_image_s if best.report is not None else None,
            extra={"workers": ",".join(w.url for w in ready)},
        )

    def _unserved(self, model: str) -> ProviderHealth:
        """No worker is known to run `model`: none is configured for it if every worker has said
        what it runs; otherwise one that never answered might."""
        unknown = [w for w in self._workers if w.model is None]
        if unknown:
            silent = f"{len(unknown)} of {len(self._workers)} workers never answered"
            return ProviderHealth(healthy=False, detail=f"no reachable worker runs {model} ({silent})")
        others = ", ".join(sorted({w.model for w in self._workers if w.model is not None}))
        return ProviderHealth(
            healthy=False, configured=False, detail=f"no worker configured for {model} (the workers run {others})"
        )

    def expected_wait_now(self, target: RouteTarget) -> float | None:
        """QueueEstimator: the live wait of the worker this route's next job would go to, chosen
        as probe() chooses (a ready worker with room first), after the jobs begun and not yet sent
        (each to the worker then soonest free). None when no worker has said what it runs; inf
        when the workers that run it are known and none is ready now (one went away since the
        last probe: a job could not reach it)."""
        now = self._clock()
        model = target.upstream_model
        serving = [w for w in self._workers if w.model == model]
        ready = [w for w in serving if w.ready]
        open_ = [w for w in ready if w.report is not None and not w.report.saturated]
        if not ready:
            return math.inf if serving and not any(w.reachable for w in serving) else None
        waits = [(w.wait_now(now), w.per_job_s()) for w in open_ or ready]
        for _ in range(self._held.get(model, 0)):
            i = min(range(len(waits)), key=lambda j: waits[j][0])
            waits[i] = (waits[i][0] + waits[i][1], waits[i][1])
        return min(wait for wait, _ in waits)

    # --- choosing and calling workers ---------------------------------------------------------

    async def _generate(
        self, model: str, request: ImageRequest, body: mapping.WorkerGenerationBody, report: ProgressSink | None
    ) -> ImageResult:
        # Held from here until the job is sent: _candidates may wait for a /ready read first.
        held = True
        self._held[model] = self._held.get(model, 0) + request.n
        try:
            candidates = await self._candidates(model)
            errors: list[ProviderError] = []
            for worker in candidates:
                if held:  # _post counts it on the worker before its first await
                    held = self._unhold(model, request.n)
                try:
                    return await self._post(worker, request, body, report)
                except ProviderError as err:
                    if not _try_next_worker(err):
                        raise
                    worker.invalidate()  # re-read its /ready before choosing it again
                    errors.append(err)
            raise _most_useful(errors)
        finally:
            if held:  # never sent: no worker ready, timed out or cancelled while waiting
                self._unhold(model, request.n)

    def _unhold(self, model: str, images: int) -> bool:
        left = self._held[model] - images
        if left:
            self._held[model] = left
        else:
            del self._held[model]
        return False

    async def _candidates(self, model: str) -> list[_Worker]:
        await self._refresh([w for w in self._workers if w.model in (None, model)], force=False)
        serving = [w for w in self._workers if w.model == model]
        ready = sorted((w for w in serving if w.ready), key=_Worker.preference)
        if ready:
            return ready
        waiting = [w.report.retry_after_s for w in serving if w.reachable and w.report is not None]
        if waiting:
            retry = min((r for r in waiting if r is not None), default=mapping.DEFAULT_RETRY_AFTER_S)
            raise ProviderNotReadyError(
                f"no worker for {model} is ready ({len(waiting)} loading, warming, draining or failed)",
                provider=PROVIDER,
                retry_after_s=retry,
            )
        if serving:
            raise ProviderUnavailableError(f"no worker for {model} is reachable", provider=PROVIDER)
        raise ProviderUnavailableError(f"no reachable worker serves {model}", provider=PROVIDER)

    async def _post(
        self, worker: _Worker, request: ImageRequest, body: mapping.WorkerGenerationBody, report: ProgressSink | None
    ) -> ImageResult:
        worker.sent(self._clock(), request.n)
        job_s = worker.report.ewma_latency_s if worker.report is not None else None
        lines = LineReader(report, job_s) if report is not None else None
        # The read timeout is the attempt's whole budget; the caller's asyncio.timeout is the real
        # bound, and cancelling it closes the connection, which tells the worker to drop the job.
        headers = {"content-type": "application/json", "x-request-id": request.request_id}
        if report is None:  # a stream's lines carry their images as base64 (worker/streaming.py)
            headers["accept"] = mapping.ACCEPT
        task: asyncio.Task[object] | None = asyncio.current_task()
        if task is not None:
            worker.jobs.add(task)
        try:
            return await self._exchange(worker, request, body, headers, lines)
        except asyncio.CancelledError:
            # Abandoned (_abandon) at any point of the exchange, its reachability check included.
            if task is None or task not in self._abandoned:
                raise
            self._abandoned.discard(task)
            task.uncancel()
            raise ProviderUnavailableError(
                f"{worker.url} stopped answering /ready mid-job; the job was abandoned", provider=PROVIDER
            ) from None
        finally:
            if task is not None:
                worker.jobs.discard(task)

    async def _exchange(
        self,
        worker: _Worker,
        request: ImageRequest,
        body: mapping.WorkerGenerationBody,
        headers: dict[str, str],
        lines: LineReader | None,
    ) -> ImageResult:
        try:
            reply = await self._http.request(
                "POST", f"{worker.url}/v1/images/generations", body=orjson.dumps(body), headers=headers,
                timeout_s=None,  # generate()'s asyncio.timeout bounds the whole attempt
                on_chunk=lines.feed if lines is not None else None,
            )  # fmt: skip
        except ConnectFailed as exc:
            worker.lost(self._clock())
            raise WorkerUnreachableError(str(exc), provider=PROVIDER) from None
        except ExchangeTimeout:
            raise ProviderTimeoutError(f"{worker.url} did not answer in time", provider=PROVIDER) from None
        except ExchangeBroken as exc:
            # No answer. On a pooled connection to a worker that cannot be reached now, the worker
            # went away and the job never ran (it had closed the idle connection): another worker
            # may take it. Otherwise it dropped the request and may have run it: not retried.
            if exc.reused and not await self._can_connect(worker):
                worker.lost(self._clock())
                raise WorkerUnreachableError(f"{worker.url} went away: {exc}", provider=PROVIDER) from None
            # Perhaps gone (killed mid-job): its /ready is read now rather than at the next probe.
            self._refresh_task(worker)
            raise ProviderUnavailableError(f"{worker.url} failed mid-request: {exc}", provider=PROVIDER) from None
        if reply.status != 200:
            raise mapping.error_from_response(reply.status, reply.headers, reply.body)
        if lines is not None:
            return lines.result(request)
        return mapping.parse_generation(reply.headers, reply.body, request)

    async def _can_connect(self, worker: _Worker) -> bool:
        url = urlsplit(worker.url)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, writer = await asyncio.open_connection(url.hostname, url.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    # --- /ready reports -------------------------------------------------------------------------

    async def _refresh(self, workers: Sequence[_Worker], *, force: bool) -> None:
        now = self._clock()
        stale = [w for w in workers if force or now - w.checked_at > self._status_ttl_s]
        if stale:
            # Shielded: one caller giving up must not cancel a refresh that others share.
            await asyncio.gather(*(asyncio.shield(self._refresh_task(w)) for w in stale))

    def _refresh_task(self, worker: _Worker) -> asyncio.Task[None]:
        if worker.refreshing is None or worker.refreshing.done():
            worker.refreshing = asyncio.ensure_future(self._read_ready(worker))
        return worker.refreshing

    async def _read_ready(self, worker: _Worker) -> None:
        sends = worker.sends
        try:
            reply = await self._http.request("GET", f"{worker.url}/ready", timeout_s=self._status_timeout_s)
            report = mapping.parse_ready(reply.status, reply.headers, reply.body)
        except (ConnectFailed, ExchangeTimeout, ExchangeBroken, ProviderBadResponseError):
            worker.reachable = False
            worker.report = None
            worker.missed_reports += 1
            if worker.missed_reports >= 2:  # one slow answer under load is not a hung worker
                self._abandon(worker)
        else:
            worker.missed_reports = 0
            worker.reachable = True
            worker.report = report
            worker.model = report.model
        worker.checked_at = self._clock()
        # Jobs sent while the read was out may have reached the worker after it answered: counted
        # on top of its answer (one job too many at worst, until the next read).
        worker.sent_since_check = worker.sends - sends
        worker.backlog_s = 0.0
        if worker.report is not None:
            worker.backlog_s = worker.report.expected_wait_s + worker.sent_since_check * worker.per_job_s()
        worker.backlog_at = worker.checked_at

    def _abandon(self, worker: _Worker) -> None:
        """Cancel the jobs waiting on a worker that stopped answering; each then fails as
        unavailable (retryable), so the gateway can fall back within the request's deadline."""
        for job in worker.jobs:
            self._abandoned.add(job)
            job.cancel()
        worker.jobs.clear()


def _try_next_worker(err: ProviderError) -> bool:
    """Busy, not ready, or never reached: the job did not run, so another worker may take it."""
    return isinstance(err, WorkerUnreachableError) or err.kind in (ErrorKind.RATE_LIMITED, ErrorKind.NOT_READY)


def _most_useful(errors: Sequence[ProviderError]) -> ProviderError:
    """After every worker refused: "busy" (with the soonest Retry-After) says most, then "not
    ready", then "unreachable"."""
    for kind in (ErrorKind.RATE_LIMITED, ErrorKind.NOT_READY):
        same = [e for e in errors if e.kind == kind]
        if same:
            return min(same, key=lambda e: e.retry_after_s if e.retry_after_s is not None else float("inf"))
    return errors[-1]
