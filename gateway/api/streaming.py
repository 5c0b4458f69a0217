"""stream=true: an admitted request answered as OpenAI's Server-Sent Events.

The stream starts with its first byte: the first keep-alive comment, sent once the upstream has
taken `stream_keepalive_s` without answering, or the answer itself. A failure before then is an
ordinary HTTP error (its status and retry-after stand, and the SDK retries it as any other); a
failure after it is an `error` event, which both OpenAI SDKs raise as APIError. Either way the
request is settled failed and charged nothing. Each image is a call of its own, sent as its
completed event (`image_generation.completed`, or `image_edit.completed` for an edit) as soon as
it is made; routes that make previews (our GPU workers) send `partial_images` of them first as
`*.partial_image` events, scaled and encoded as the finished image is; with `x-gateway-progress:
true`, `gateway.progress` events say the queue position, step and expected time. The request is
admitted and charged as a whole: once every completed event was handed to a connection that was
still open; a caller that goes away first (even after some images) cancels the upstream calls
still running and is charged nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
import pybase64
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.api.disconnect import until_disconnect
from gateway.api.errors import error_response
from gateway.api.server import CONNECTION_OPEN
from gateway.api.state import AppState
from gateway.errors import ClientGone
from gateway.images.convert import render
from gateway.images.encoded import as_text
from gateway.images.validation import ValidRequest
from gateway.service import Admitted, Delivery, ImagesResponse, PartServed
from providers.base import ImageBytes, PartialImage, Progress, ProgressEvent

PROGRESS_EVENT = "gateway.progress"
KEEPALIVE = {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
END: Message = {"type": "http.response.body", "body": b"", "more_body": False}

# HiDream is not metered in tokens (a request is charged per image): OpenAI's required usage
# object, all of it, at zero.
USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
         "total_tokens": 0}  # fmt: skip

# The answer's x-gateway-* headers of a JSON answer that are known only once it is served: a
# stream's headers are sent before, so its completed events carry them (as `gateway`).
LATE_HEADERS = {
    "x-gateway-provider": "provider",
    "x-gateway-route-reason": "route_reason",
    "x-gateway-charged-usd": "charged_usd",
}


@dataclass(frozen=True, slots=True)
class _Heard:
    first: int  # the index of the first image of the call it is about
    event: ProgressEvent


class _Relay:
    """The service's StreamListener for one stream: what it hears, queued for the stream to send."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[_Heard | PartServed] = asyncio.Queue()

    def progress(self, first: int, event: ProgressEvent) -> None:
        self.queue.put_nowait(_Heard(first, event))

    def served(self, part: PartServed) -> None:
        self.queue.put_nowait(part)


class EventStream(Response):
    """The ASGI answer to a stream=true request (a Response, so FastAPI's routes pass it on)."""

    def __init__(
        self, state: AppState, answer: Admitted | ImagesResponse, *, edit: bool, progress: bool = False
    ) -> None:
        # Response's own __init__ is not used: this answer writes its own start and body.
        self.status_code = 200
        self.background = None
        self._state = state
        self._answer = answer  # an admitted request, or a replay (nothing left to settle)
        kind = "image_edit" if edit else "image_generation"
        self._event = f"{kind}.completed"
        self._partial = f"{kind}.partial_image"
        self._progress = progress  # the caller asked for gateway.progress events
        self._sent: set[int] = set()  # indexes of the images sent as completed events
        self._began = False
        self._wrote_at = 0.0  # when the stream last wrote a byte (monotonic)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._state.shedder.held():  # in flight until the stream ends, not its handler
            if isinstance(self._answer, ImagesResponse):
                await self._send_events(send, self._answer, self._answer.headers)
            else:
                await self._serve(scope, receive, send, self._answer)
        if self.background is not None:  # as any Response: after it was sent (FastAPI may set it)
            await self.background()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, admitted: Admitted) -> None:
        relay = _Relay()
        work = asyncio.ensure_future(self._state.service.serve(admitted, relay))
        delivered = False
        try:
            try:
                await until_disconnect(receive, self._relay(work, relay, send, admitted))
            except ClientGone:
                return  # the upstream calls were cancelled and the request settled, charged nothing
            try:
                result = work.result()
            except Exception as exc:  # settled as failed by the service; said to the caller here
                await self._fail(exc, self._began, scope, receive, send)
                return
            await self._send_events(send, result, None if self._began else admitted.headers())
            is_open = scope.get("extensions", {}).get(CONNECTION_OPEN)
            delivered = is_open() if is_open is not None else True
        finally:
            delivery = _delivery(work)
            if delivery is not None:  # an answer not handed over (its sending failed) is not charged
                await delivery(delivered)

    async def _relay(self, work: asyncio.Future[ImagesResponse], relay: _Relay, send: Send, admitted: Admitted) -> None:
        """Until the request is served: what the service hears, as events, and keep-alive comments
        while nothing is said."""
        keepalive_s = self._state.settings.stream_keepalive_s
        queue = relay.queue
        # A keep-alive goes out when nothing was *written* for keepalive_s: events heard but not
        # sent (progress nobody asked for) must not starve it, or an idle proxy cuts the stream.
        self._wrote_at = time.monotonic()
        try:
            while True:
                while not queue.empty():
                    await self._heard(queue.get_nowait(), send, admitted)
                if work.done():
                    return
                quiet_s = time.monotonic() - self._wrote_at
                if quiet_s >= keepalive_s:
                    await self._begin(send, admitted.headers())
                    await self._write(send, KEEPALIVE)
                    continue
                getting = asyncio.ensure_future(queue.get())
                try:
                    await asyncio.wait(
                        (work, getting), timeout=keepalive_s - quiet_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    if not getting.done():
                        getting.cancel()
                if getting.done() and not getting.cancelled():
                    await self._heard(getting.result(), send, admitted)
        except asyncio.CancelledError:  # the caller left (or the server is stopping)
            work.cancel()
            await asyncio.wait((work,))  # the upstream calls cancelled and the request settled first
            raise

    async def _begin(self, send: Send, headers: dict[str, str]) -> None:
        if not self._began:
            await send(_start(headers))
            self._began = True

    async def _write(self, send: Send, message: Message) -> None:
        await send(message)
        self._wrote_at = time.monotonic()

    async def _heard(self, heard: _Heard | PartServed, send: Send, admitted: Admitted) -> None:
        valid = admitted.valid
        if isinstance(heard, PartServed):
            headers = admitted.headers()
            ignored = heard.facts["ignored_params"]
            if ignored:  # known now that a route served it (a stream's headers go before routing)
                headers["x-gateway-ignored-params"] = ", ".join(ignored)
            await self._begin(send, headers)
            for i, b64 in enumerate(heard.b64):
                self._sent.add(heard.first + i)
                done = _completed(self._event, valid, b64, heard.seed, heard.facts)
                await self._write(send, {"type": "http.response.body", "body": done, "more_body": True})
            return
        event = heard.event
        if isinstance(event, PartialImage) and valid.partial_images:
            for i, img in enumerate(event.images):
                assert img.data is not None
                await self._begin(send, admitted.headers())
                body = await asyncio.to_thread(_partial, self._partial, valid, img.data, event, heard.first + i)
                await self._write(send, {"type": "http.response.body", "body": body, "more_body": True})
        elif isinstance(event, Progress) and self._progress:
            await self._begin(send, admitted.headers())
            body = _progress(event, heard.first)
            await self._write(send, {"type": "http.response.body", "body": body, "more_body": True})

    async def _send_events(self, send: Send, result: ImagesResponse, headers: dict[str, str] | None) -> None:
        """The completed events of the images not sent yet, one each; `headers`: the stream's, if
        it has not begun."""
        if headers is not None:
            await send(_start(headers))
        for i, event in enumerate(completed_events(self._event, result)):
            if i not in self._sent:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send(END)

    async def _fail(self, exc: Exception, began: bool, scope: Scope, receive: Receive, send: Send) -> None:
        answer = error_response(exc, self._state)
        if not began:
            await answer(scope, receive, send)
            return
        await send({"type": "http.response.body", "body": b"event: error\ndata: " + answer.body + b"\n\n",
                    "more_body": True})  # fmt: skip
        await send(END)


def completed_events(event: str, result: ImagesResponse) -> list[bytes]:
    """One `event:`/`data:` pair per image of a served (b64_json) answer, in OpenAI's shape, with
    the answer's seed and the gateway's own facts (as a JSON answer's headers carry them)."""
    body = result.body
    common: dict[str, Any] = {
        "type": event,
        "created_at": int(time.time()),
        "size": body["size"],
        "quality": body["quality"],
        "background": body["background"],
        "output_format": body["output_format"],
        "usage": USAGE,
    }
    if "seed" in body:
        common["seed"] = body["seed"]
    gateway: dict[str, Any] = {key: result.headers[h] for h, key in LATE_HEADERS.items() if h in result.headers}
    ignored = result.headers.get("x-gateway-ignored-params")
    gateway["ignored_params"] = ignored.split(", ") if ignored else []
    common["gateway"] = gateway
    head = b"event: " + event.encode() + b"\ndata: "
    return [
        head + orjson.dumps({**common, "b64_json": item["b64_json"]}, default=as_text) + b"\n\n"
        for item in body["data"]
    ]


def _completed(event: str, valid: ValidRequest, b64: str, seed: int | None, facts: dict[str, Any]) -> bytes:
    """One image's completed event, sent as soon as it is made (the same shape as completed_events)."""
    body: dict[str, Any] = {
        "type": event,
        "created_at": int(time.time()),
        "size": valid.size,
        "quality": valid.model.quality,
        "background": "opaque",
        "output_format": valid.output_format,
        "usage": USAGE,
    }
    if seed is not None:
        body["seed"] = seed
    body["gateway"] = facts
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps({**body, "b64_json": b64}) + b"\n\n"


def _partial(event: str, valid: ValidRequest, preview: ImageBytes, partial: PartialImage, image_index: int) -> bytes:
    """A preview as OpenAI's partial_image event, at the asked size and format (as the finished
    image is converted, with the encoder's quickest effort: a 1024x1024 PNG took 1.7 s at zlib's
    default level on the loaded test machine, 0.6 s at level 1); the step it shows and its
    image's index among the request's in `gateway`."""
    data = render(preview, valid.width, valid.height, valid.output_format, valid.output_compression, fast=True)
    body = {
        "type": event,
        "b64_json": pybase64.b64encode_as_string(data),
        "partial_image_index": partial.index,
        "created_at": int(time.time()),
        "size": valid.size,
        "quality": valid.model.quality,
        "background": "opaque",
        "output_format": valid.output_format,
        "gateway": {"image_index": image_index, "step": partial.step, "steps": partial.steps},
    }
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"


def _progress(progress: Progress, image_index: int) -> bytes:
    """A gateway.progress event (sent only to a caller that asked, with x-gateway-progress: true)."""
    body = {
        "type": PROGRESS_EVENT,
        "created_at": int(time.time()),
        "image_index": image_index,
        "queue_position": progress.queue_position,
        "step": progress.step,
        "steps": progress.steps,
        "expected_s": progress.expected_s,
    }
    return b"event: " + PROGRESS_EVENT.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"


def _start(headers: dict[str, str]) -> Message:
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each event on as it comes, unbuffered
            *((name.encode(), value.encode("latin-1")) for name, value in headers.items()),
        ],
    }


def _delivery(work: asyncio.Future[ImagesResponse]) -> Delivery | None:
    """The Delivery of a served answer (None: not served, and settled already by the service)."""
    if not work.done() or work.cancelled() or work.exception() is not None:
        return None
    return work.result().delivery
