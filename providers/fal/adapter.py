"""FalProvider: the gateway's client for fal.ai's queue API (submit, poll status, fetch the result,
cancel). Body shapes live in mapping.py; this module owns URLs, headers, timing and I/O.

The whole call runs under one deadline (request.timeout_s). A call that runs out of time or whose
awaiting task is cancelled cancels the fal request too, so nobody pays for an image nobody waits for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import httpx

from providers.base import (
    ImageRequest,
    ImageResult,
    ProviderBadResponseError,
    ProviderError,
    ProviderHealth,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RouteTarget,
)
from providers.fal import mapping
from providers.fal.errors import PROVIDER, error_from_response, error_from_status
from providers.fal.mapping import FalInput, QueueStatus, Submission

log = logging.getLogger(__name__)


@contextmanager
def _translated(step: str) -> Iterator[None]:
    """httpx's own errors become provider errors here and nowhere else."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderUnavailableError(f"fal {step}: no answer ({type(exc).__name__})", provider=PROVIDER) from exc
    except httpx.DecodingError as exc:
        raise ProviderBadResponseError(f"fal {step}: undecodable body", provider=PROVIDER) from exc
    except httpx.TransportError as exc:
        raise ProviderUnavailableError(f"fal {step}: {type(exc).__name__}", provider=PROVIDER) from exc
    except httpx.HTTPError as exc:
        raise ProviderBadResponseError(f"fal {step}: {type(exc).__name__}", provider=PROVIDER) from exc


class FalProvider:
    name = PROVIDER

    def __init__(
        self,
        key: str,
        *,
        queue_url: str = "https://queue.fal.run",
        poll_initial_s: float = 0.25,
        poll_factor: float = 1.5,
        poll_max_s: float = 2.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        cancel_timeout_s: float = 2.0,
        probe_timeout_s: float = 5.0,
        transient_retries: int = 3,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not (0 < poll_initial_s <= poll_max_s and poll_factor >= 1.0):
            raise ValueError("fal polling needs 0 < initial <= max and factor >= 1")
        self._queue_url = queue_url.rstrip("/")
        self._poll_initial_s = poll_initial_s
        self._poll_factor = poll_factor
        self._poll_max_s = poll_max_s
        self._transient_retries = transient_retries
        self._cancel_timeout_s = cancel_timeout_s
        self._cancel_timeout = httpx.Timeout(cancel_timeout_s, connect=min(cancel_timeout_s, connect_timeout_s))
        self._probe_timeout = httpx.Timeout(probe_timeout_s, connect=min(probe_timeout_s, connect_timeout_s))
        # Every URL we call is checked to live under queue_url (mapping.parse_submission), so the
        # key in the default headers never leaves fal.
        self._client = httpx.AsyncClient(
            headers={"Authorization": f"Key {key}"},
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections // 2),
            follow_redirects=False,
            transport=transport,
        )
        # Cancels still on their way (deadline expiries do not wait for them); drained in aclose.
        self._background: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=self._cancel_timeout_s + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._client.aclose()

    # --- ImageProvider ----------------------------------------------------------------------------

    async def generate(self, target: RouteTarget, request: ImageRequest) -> ImageResult:
        endpoint = mapping.endpoint_for(target, request)
        body = mapping.fal_input(request)
        started = time.monotonic()
        submitting: asyncio.Task[Submission] | None = None
        try:
            async with asyncio.timeout(request.timeout_s):
                # Shielded: a submit cut short could leave a job at fal that we hold no id for.
                submitting = asyncio.ensure_future(self._submit(endpoint, body, request.timeout_s))
                submission = await asyncio.shield(submitting)
                try:
                    status = await self._until_completed(submission)
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
            with _translated("probe"):
                response = await self._client.get(url, timeout=self._probe_timeout)
        except ProviderError as exc:
            return ProviderHealth(healthy=False, detail=f"unreachable: {exc.message}")
        code = response.status_code
        if code in (401, 403):
            return ProviderHealth(healthy=False, detail="auth")
        if code == 429:
            return ProviderHealth(healthy=False, detail="rate_limited")
        if code >= 500:
            return ProviderHealth(healthy=False, detail=f"fal answered {code}")
        return ProviderHealth(healthy=True, detail=f"reachable ({code})")

    # --- the queue protocol -----------------------------------------------------------------------

    async def _submit(self, endpoint: str, body: FalInput, timeout_s: float) -> Submission:
        headers: dict[str, str] = {}
        if timeout_s > 1.0:
            # fal's start deadline (§5.1): a request still queued when we stop waiting never runs.
            headers["X-Fal-Request-Timeout"] = str(round(timeout_s, 3))
        with _translated("submit"):
            response = await self._client.post(f"{self._queue_url}/{endpoint}", json=body, headers=headers)
        # A submit is never repeated, not even after an ingress 5xx: a repeat may be a second job.
        if not response.is_success:
            raise error_from_response(response.status_code, response.headers, response.content)
        submission = mapping.parse_submission(response.content, queue_url=self._queue_url)
        log.debug("fal request %s queued on %s", submission.request_id, endpoint)
        return submission

    async def _until_completed(self, submission: Submission) -> QueueStatus:
        """Poll the returned status_url, backing off from poll_initial_s by poll_factor up to poll_max_s."""
        delay = self._poll_initial_s
        while True:
            await asyncio.sleep(delay)
            response = await self._get(submission.status_url, "status", params={"logs": "0"})
            status = mapping.parse_status(response.status_code, response.headers, response.content)
            if status.state == "COMPLETED":
                return status
            delay = min(delay * self._poll_factor, self._poll_max_s)

    async def _result(self, submission: Submission, status: QueueStatus) -> ImageResult:
        # A failed request's result repeats the error's own status and body (§2.4), which says more
        # than the status's error_type; so the result is fetched either way.
        response = await self._get(submission.response_url, "result")
        if not response.is_success:
            raise error_from_response(response.status_code, response.headers, response.content)
        if status.error is not None or status.error_type is not None:
            raise error_from_status(status.error_type)
        upstream_id = response.headers.get("x-fal-request-id") or submission.request_id
        return mapping.result_from_output(response.content, upstream_request_id=upstream_id)

    async def _get(self, url: str, step: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        """A GET, repeated on a refused/reset connection or an ingress 5xx (both safe for a read)."""
        delay = self._poll_initial_s
        for attempt in range(self._transient_retries + 1):
            last = attempt == self._transient_retries
            try:
                with _translated(step):
                    response = await self._client.get(url, params=params)
            except ProviderUnavailableError:
                if last:
                    raise
            else:
                if last or not mapping.is_ingress_error(response.status_code, response.headers):
                    return response
            log.debug("fal %s: transient failure, retrying in %.2f s", step, delay)
            await asyncio.sleep(delay)
            delay = min(delay * self._poll_factor, self._poll_max_s)
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
                with _translated("cancel"):
                    response = await self._client.put(submission.cancel_url, timeout=self._cancel_timeout)
        except (ProviderError, TimeoutError) as exc:
            log.info("fal cancel not sent: %s", exc)
            return
        # 2xx: cancelled; 400 ALREADY_COMPLETED / 404 NOT_FOUND: nothing left to cancel (§2.5).
        log.debug("fal request %s cancel answered %s", submission.request_id, response.status_code)
