"""FalProvider: the gateway's client for fal.ai's queue API (submit, watch status, fetch the result,
cancel). Body shapes live in mapping.py, when to look in timing.py; this module owns URLs, headers
and I/O.

The whole call runs under one deadline (request.timeout_s). A call that runs out of time or whose
awaiting task is cancelled cancels the fal request too, so nobody pays for an image nobody waits for.

Watching a request costs one to three calls: the status stream (§2.3) while the job's time is
unknown or long, and polls timed from how long the app's recent requests took once it is known
(timing.py has the measured reasons). Polling, backing off, also takes over when no stream slot is
free, when the stream gives out, and while fal refuses streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from providers.base import (
    ImageRequest,
    ImageResult,
    Progress,
    ProgressSink,
    ProviderError,
    ProviderHealth,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RouteTarget,
)
from providers.fal import mapping
from providers.fal.errors import PROVIDER, error_from_response, error_from_status
from providers.fal.http import AiohttpFal, FalHttp, Reply
from providers.fal.mapping import OWNED_PARAMS, QueueStatus, Submission, SubmitBody
from providers.fal.timing import CompletionTimes, PollPolicy

log = logging.getLogger(__name__)


class FalProvider:
    name = PROVIDER
    owned_params = OWNED_PARAMS  # PassesThrough: the caller's other parameters go to fal as body fields
    makes_partial_images = False  # ReportsProgress: queue positions from the status it watches anyway

    def __init__(
        self,
        key: str,
        *,
        queue_url: str = "https://queue.fal.run",
        poll_initial_s: float = 0.25,
        poll_factor: float = 1.5,
        poll_max_s: float = 2.0,
        connect_timeout_s: float = 5.0,
        first_look_fraction: float = 0.8,
        status_stream: bool = True,
        max_streams: int = 6000,
        stream_pause_s: float = 60.0,
        read_timeout_s: float = 30.0,
        cancel_timeout_s: float = 2.0,
        probe_timeout_s: float = 5.0,
        transient_retries: int = 3,
        max_connections: int = 100,
        http: FalHttp | None = None,
    ) -> None:
        self._policy = PollPolicy(poll_initial_s, poll_factor, poll_max_s, first_look_fraction)
        if max_streams < 0:
            raise ValueError("max_streams must be >= 0")
        self._queue_url = queue_url.rstrip("/")
        self._times = CompletionTimes()
        # Streams open at most (each holds a connection); beyond, requests poll.
        self._max_streams = max_streams if status_stream else 0
        self._streams_open = 0
        self._stream_pause_s = stream_pause_s
        self._streams_paused_until = 0.0  # fal refused a stream: everyone polls until then
        self._transient_retries = transient_retries
        self._cancel_timeout_s = cancel_timeout_s
        self._probe_timeout_s = probe_timeout_s
        # Every URL we call is checked to live under queue_url (mapping.parse_submission), so the
        # key the client sends never leaves fal.
        self._http = http or AiohttpFal(
            key, connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
            max_connections=max_connections, max_streams=self._max_streams,
        )  # fmt: skip
        # Cancels still on their way (deadline expiries do not wait for them); drained in aclose.
        self._background: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=self._cancel_timeout_s + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._http.aclose()

    # --- ImageProvider ----------------------------------------------------------------------------

    async def generate(self, target: RouteTarget, request: ImageRequest) -> ImageResult:
        return await self._generate(target, request, None)

    async def generate_reporting(self, target: RouteTarget, request: ImageRequest, report: ProgressSink) -> ImageResult:
        """ReportsProgress: each status fal sends or a poll reads, as a queue position and the
        time the endpoint's recent requests took."""
        return await self._generate(target, request, report)

    async def _generate(self, target: RouteTarget, request: ImageRequest, report: ProgressSink | None) -> ImageResult:
        endpoint = mapping.endpoint_for(target, request)
        body = mapping.submit_body(request)
        return await self._follow(endpoint, request, lambda: self._submit(endpoint, body, request.timeout_s), report)

    async def reattach(self, target: RouteTarget, request: ImageRequest, handle: str) -> ImageResult:
        """Reattachable: follow a request submitted earlier (by a process that died) to its result."""
        submission = mapping.parse_submission(handle.encode(), queue_url=self._queue_url)

        async def known() -> Submission:
            return submission

        return await self._follow(mapping.endpoint_for(target, request), request, known, None)

    async def _follow(
        self,
        endpoint: str,
        request: ImageRequest,
        submit: Callable[[], Awaitable[Submission]],
        report: ProgressSink | None,
    ) -> ImageResult:
        """Submit (or take a submission), report its handle, wait for the result; under the request's deadline."""
        started = time.monotonic()
        submitting: asyncio.Task[Submission] | None = None
        try:
            async with asyncio.timeout(request.timeout_s):
                # Shielded: a submit cut short could leave a job at fal that we hold no id for.
                submitting = asyncio.ensure_future(submit())
                submission = await asyncio.shield(submitting)
                if request.on_submitted is not None:
                    try:
                        await request.on_submitted(json.dumps(dataclasses.asdict(submission)))
                    except Exception as exc:  # a handle not kept costs only a re-attach later
                        log.info("fal request handle not kept: %s", type(exc).__name__)
                try:
                    status = await self._until_completed(endpoint, submission, report)
                except ProviderError:
                    self._cancel_upstream(submitting)  # we lost track of it; it may still run
                    raise
                result = await self._result(submission, status)
        except TimeoutError:
            if submitting is not None:
                self._cancel_upstream(submitting)  # in the background: the caller's deadline is up
            raise ProviderTimeoutError(
                f"fal gave no result within {request.timeout_s:.1f} s", provider=PROVIDER
            ) from None
        except asyncio.CancelledError:
            if submitting is not None:
                await asyncio.shield(self._cancel_upstream(submitting))
            raise
        return dataclasses.replace(result, upstream_latency_s=time.monotonic() - started)

    async def probe(self, target: RouteTarget) -> ProviderHealth:
        """Free: asks for the status of a request id that does not exist. Any fal answer but
        401/403/429/5xx means fal is reachable and takes our key; no image is made."""
        try:
            app = mapping.app_id(target.upstream_model)
        except ValueError as exc:
            return ProviderHealth(healthy=False, detail=str(exc))
        url = f"{self._queue_url}/{app}/requests/{uuid.uuid4()}/status"
        try:
            reply = await self._http.send("GET", url, step="probe", timeout_s=self._probe_timeout_s)
        except ProviderError as exc:
            return ProviderHealth(healthy=False, detail=f"unreachable: {exc.message}")
        code = reply.status
        if code in (401, 403):
            return ProviderHealth(healthy=False, detail="auth")
        if code == 429:
            return ProviderHealth(healthy=False, detail="rate_limited")
        if code >= 500:
            return ProviderHealth(healthy=False, detail=f"fal answered {code}")
        return ProviderHealth(healthy=True, detail=f"reachable ({code})")

    # --- the queue protocol -----------------------------------------------------------------------

    async def _submit(self, endpoint: str, body: SubmitBody, timeout_s: float) -> Submission:
        headers: dict[str, str] = {}
        if timeout_s > 1.0:
            # fal's start deadline (§5.1): a request still queued when we stop waiting never runs.
            headers["X-Fal-Request-Timeout"] = str(round(timeout_s, 3))
        reply = await self._http.send(
            "POST", f"{self._queue_url}/{endpoint}", step="submit", headers=headers, body=body
        )
        # A submit is never repeated, not even after an ingress 5xx: a repeat may be a second job.
        if not reply.ok:
            raise error_from_response(reply.status, reply.headers, reply.body)
        submission = mapping.parse_submission(reply.body, queue_url=self._queue_url)
        log.debug("fal request %s queued on %s", submission.request_id, endpoint)
        return submission

    async def _until_completed(
        self, endpoint: str, submission: Submission, report: ProgressSink | None = None
    ) -> QueueStatus:
        """Look first when the endpoint's recent requests were nearly done; then at each look follow
        the status stream if it is worth it and a slot is free (once per request), else poll with
        backoff (timing.PollPolicy)."""
        submitted = time.monotonic()
        expected = self._times.expected_s(endpoint)

        def seen(status: QueueStatus) -> None:
            if report is not None and status.state != "COMPLETED":
                left = None if expected is None else max(0.0, round(expected - (time.monotonic() - submitted), 3))
                position = status.queue_position if status.state == "IN_QUEUE" else 0
                report(Progress(queue_position=position, expected_s=left))

        streaming = self._stream_slot_free() and self._policy.should_stream(expected, 0.0)
        await asyncio.sleep(self._policy.first_look_s(expected, streaming=streaming))
        may_stream = True
        while True:
            status: QueueStatus | None = None
            elapsed = time.monotonic() - submitted
            if may_stream and self._stream_slot_free() and self._policy.should_stream(expected, elapsed):
                may_stream = False  # a stream that gave out is not retried: polls take over
                status = await self._watch(submission, seen)
            if status is None:
                looked = time.monotonic() - submitted
                status = await self._poll(submission)
                seen(status)
            else:
                looked = time.monotonic() - submitted  # the stream said so as it happened
            elapsed = time.monotonic() - submitted
            if status.state == "COMPLETED":
                if status.error is None and status.error_type is None:
                    # Done by the time the look was sent, not when its answer came back: with the
                    # answer's round trip counted, each first look (0.8x the learned time) added one
                    # to the next estimate, which settled at about five round trips for a job fal
                    # finished at once, waited for by every request.
                    self._times.observe(endpoint, looked)
                return status
            await asyncio.sleep(self._policy.next_wait_s(elapsed))

    def _stream_slot_free(self) -> bool:
        return self._streams_open < self._max_streams and time.monotonic() >= self._streams_paused_until

    async def _poll(self, submission: Submission) -> QueueStatus:
        reply = await self._get(submission.status_url, "status", params={"logs": "0"})
        return mapping.parse_status(reply.status, reply.headers, reply.body)

    async def _watch(self, submission: Submission, seen: Callable[[QueueStatus], None]) -> QueueStatus | None:
        """The status stream until COMPLETED; None if it gave out first, or fal would not stream
        (then nobody streams for stream_pause_s). A poll decides what any failure means."""
        self._streams_open += 1
        try:
            url = submission.status_url + "/stream"
            async with self._http.stream(url, step="status stream", params={"logs": "0"}) as events:
                if events.status != 200 or not events.headers.get("content-type", "").startswith("text/event-stream"):
                    self._streams_paused_until = time.monotonic() + self._stream_pause_s
                    log.info("fal refused a status stream (%s); polling instead", events.status)
                    return None
                decoder = mapping.EventStreamDecoder()
                async for line in events.lines:
                    data = decoder.feed(line)
                    if data is None:
                        continue
                    status = mapping.parse_status_event(data)
                    if status.state == "COMPLETED":
                        return status
                    seen(status)
        except ProviderError as exc:
            log.debug("fal status stream gave out (%s); polling instead", exc.message)
        finally:
            self._streams_open -= 1
        return None

    async def _result(self, submission: Submission, status: QueueStatus) -> ImageResult:
        # A failed request's result repeats the error's own status and body (§2.4), which says more
        # than the status's error_type; so the result is fetched either way.
        reply = await self._get(submission.response_url, "result")
        if not reply.ok:
            raise error_from_response(reply.status, reply.headers, reply.body)
        if status.error is not None or status.error_type is not None:
            raise error_from_status(status.error_type)
        upstream_id = reply.headers.get("x-fal-request-id") or submission.request_id
        return mapping.result_from_output(reply.body, upstream_request_id=upstream_id)

    async def _get(self, url: str, step: str, params: Mapping[str, str] | None = None) -> Reply:
        """A GET, repeated on a refused/reset connection or an ingress 5xx (both safe for a read)."""
        delay = self._policy.initial_s
        for attempt in range(self._transient_retries + 1):
            last = attempt == self._transient_retries
            try:
                reply = await self._http.send("GET", url, step=step, params=params)
            except ProviderUnavailableError:
                if last:
                    raise
            else:
                if last or not mapping.is_ingress_error(reply.status, reply.headers):
                    return reply
            log.debug("fal %s: transient failure, retrying in %.2f s", step, delay)
            await asyncio.sleep(delay)
            delay = min(delay * self._policy.factor, self._policy.max_s)
        raise AssertionError("unreachable")

    def _cancel_upstream(self, submitting: asyncio.Task[Submission]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._cancel(submitting))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _cancel(self, submitting: asyncio.Task[Submission]) -> None:
        """Best effort: PUT the returned cancel_url once the submit has answered."""
        try:
            async with asyncio.timeout(self._cancel_timeout_s):
                submission = await submitting
                reply = await self._http.send(
                    "PUT", submission.cancel_url, step="cancel", timeout_s=self._cancel_timeout_s
                )
        except (ProviderError, TimeoutError) as exc:
            log.info("fal cancel not sent: %s", exc)
            return
        # 2xx: cancelled; 400 ALREADY_COMPLETED / 404 NOT_FOUND: nothing left to cancel (§2.5).
        log.debug("fal request %s cancel answered %s", submission.request_id, reply.status)
