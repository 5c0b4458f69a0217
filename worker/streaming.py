"""The worker's streaming answer: POST /v1/images/generations with `"stream": true` (optionally
`"partial_images": 1-3`), once the job is admitted, answers 200 `application/x-ndjson`, one JSON
object a line, flushed as it happens:

    {"type": "queued", "queue_position": 1, "expected_wait_s": 12.5}       first, once
    {"type": "progress", "step": 3, "steps": 50}                           after every step
    {"type": "partial_image", "partial_image_index": 0, "step": 17, "steps": 50,
     "size": "128x128", "data": [{"b64_json": "<PNG>"}, ...]}              one item per image
    {"type": "completed", "status": 200, "headers": {...}, "body": {...}}  last, on success
    {"type": "error", "status": 500, "headers": {...}, "body": {"error": {...}}}  last, on failure

`completed` carries exactly the status, x-* headers and body the non-streaming answer would have;
`error` the status, headers and OpenAI error body of the error answer. A request refused before
its job is admitted (400, 429, 503) gets the ordinary JSON error, not a stream. A client that
closes the connection cancels the job, as on the JSON answer. Previews are PNGs at latent
resolution (worker/previews.py says how they are made).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from contextlib import suppress

from starlette.types import Message, Receive, Scope, Send

from worker.jobs import Job, JobEvent, JobQueue, Preview, Report, StepDone

Outcome = Callable[[], Awaitable[tuple[int, dict[str, str], dict[str, object]]]]

START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-cache")],
}


class EventChannel:
    """Carries a job's events from the inference thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.events: asyncio.Queue[JobEvent] = asyncio.Queue()

    @property
    def report(self) -> Report:
        return self._report

    def _report(self, event: JobEvent) -> None:
        with suppress(RuntimeError):  # the loop is gone: the worker stopped mid-job
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)


class JobStream:
    """The ASGI answer for one admitted streaming job; `outcome` makes the final line's status,
    headers and body once the job's future is done (the JSON answer's own code)."""

    def __init__(self, queue: JobQueue, job: Job, channel: EventChannel, outcome: Outcome) -> None:
        self._queue = queue
        self._job = job
        self._channel = channel
        self._outcome = outcome

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await send(START)
            first = {"type": "queued", "queue_position": self._queue.ahead_of(self._job),
                     "expected_wait_s": round(self._queue.expected_wait_s(), 3)}  # fmt: skip
            await _line(send, first)
            if not await self._relay(send, gone):
                await self._outcome()  # counted as cancelled, as a JSON request whose client left
                return
            status, headers, body = await self._outcome()
            kind = "completed" if status == 200 else "error"
            await _line(send, {"type": kind, "status": status, "headers": headers, "body": body})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke under a write: the client is gone
            self._queue.cancel(self._job)
        except asyncio.CancelledError:
            self._queue.cancel(self._job)
            raise
        finally:
            gone.cancel()
            with suppress(asyncio.CancelledError):
                await gone

    async def _relay(self, send: Send, gone: asyncio.Future[None]) -> bool:
        """Events until the job is done (True), or the client went away first (False: cancelled)."""
        events = self._channel.events
        while True:
            # The job's events are queued before its future is set (both come through the loop
            # in order), so once it is done, what is left in the queue is all there is.
            while not events.empty():
                await _line(send, _event_line(events.get_nowait()))
            if self._job.future.done():
                return True
            getting = asyncio.ensure_future(events.get())
            waiters: list[asyncio.Future[object]] = [getting, self._job.future, gone]  # type: ignore[list-item]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getting.done():
                    getting.cancel()
            if getting.done() and not getting.cancelled():
                await _line(send, _event_line(getting.result()))
            if gone.done():
                self._queue.cancel(self._job)
                return False


def _event_line(event: JobEvent) -> dict[str, object]:
    if isinstance(event, StepDone):
        return {"type": "progress", "step": event.step, "steps": event.steps}
    assert isinstance(event, Preview)
    return {
        "type": "partial_image",
        "partial_image_index": event.index,
        "step": event.step,
        "steps": event.steps,
        "size": f"{event.width}x{event.height}",
        "data": [{"b64_json": base64.b64encode(png).decode("ascii")} for png in event.pngs],
    }


async def _line(send: Send, payload: dict[str, object]) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    # The body has been read, so the next ASGI message is http.disconnect when the client goes.
    while (await receive())["type"] != "http.disconnect":
        pass
