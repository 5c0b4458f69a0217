"""stream=true: an admitted request answered as OpenAI's Server-Sent Events.

The stream starts with its first byte: the first keep-alive comment, sent once the upstream has
taken `stream_keepalive_s` without answering, or the answer itself. A failure before then is an
ordinary HTTP error (its status and retry-after stand, and the SDK retries it as any other); a
failure after it is an `error` event, which both OpenAI SDKs raise as APIError. Either way the
request is settled failed and charged nothing. The images are sent as one completed event each
(`image_generation.completed`, or `image_edit.completed` for an edit), and the request is charged
once they were all handed to a connection that was still open; a caller that goes away first
cancels the upstream job and is charged nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.api.disconnect import until_disconnect
from gateway.api.errors import error_response
from gateway.api.server import CONNECTION_OPEN
from gateway.api.state import AppState
from gateway.errors import ClientGone
from gateway.service import Admitted, Delivery, ImagesResponse

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


class EventStream(Response):
    """The ASGI answer to a stream=true request (a Response, so FastAPI's routes pass it on)."""

    def __init__(self, state: AppState, answer: Admitted | ImagesResponse, *, edit: bool) -> None:
        # Response's own __init__ is not used: this answer writes its own start and body.
        self.status_code = 200
        self.background = None
        self._state = state
        self._answer = answer  # an admitted request, or a replay (nothing left to settle)
        self._event = "image_edit.completed" if edit else "image_generation.completed"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._state.shedder.held():  # in flight until the stream ends, not its handler
            if isinstance(self._answer, ImagesResponse):
                await self._send_events(send, self._answer, self._answer.headers)
            else:
                await self._serve(scope, receive, send, self._answer)
        if self.background is not None:  # as any Response: after it was sent (FastAPI may set it)
            await self.background()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, admitted: Admitted) -> None:
        work = asyncio.ensure_future(self._state.service.serve(admitted))
        delivered = False
        try:
            try:
                began = await until_disconnect(receive, self._wait(work, send, admitted.headers()))
            except ClientGone:
                return  # the upstream job was cancelled and the request settled, charged nothing
            try:
                result = work.result()
            except Exception as exc:  # settled as failed by the service; said to the caller here
                await self._fail(exc, began, scope, receive, send)
                return
            await self._send_events(send, result, None if began else admitted.headers())
            is_open = scope.get("extensions", {}).get(CONNECTION_OPEN)
            delivered = is_open() if is_open is not None else True
        finally:
            delivery = _delivery(work)
            if delivery is not None:  # an answer not handed over (its sending failed) is not charged
                await delivery(delivered)

    async def _wait(self, work: asyncio.Future[ImagesResponse], send: Send, headers: dict[str, str]) -> bool:
        """Wait for the served answer, keeping the connection alive meanwhile; whether the stream
        has begun (its headers sent)."""
        began = False
        keepalive_s = self._state.settings.stream_keepalive_s
        try:
            while not work.done():
                await asyncio.wait((work,), timeout=keepalive_s)
                if not work.done():
                    if not began:
                        await send(_start(headers))
                        began = True
                    await send(KEEPALIVE)
        except asyncio.CancelledError:  # the caller left (or the server is stopping)
            work.cancel()
            await asyncio.wait((work,))  # the upstream job cancelled and the request settled first
            raise
        return began

    async def _send_events(self, send: Send, result: ImagesResponse, headers: dict[str, str] | None) -> None:
        """The completed events, one per image; `headers`: the stream's, if it has not begun."""
        if headers is not None:
            await send(_start(headers))
        for event in completed_events(self._event, result):
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
    return [head + orjson.dumps({**common, "b64_json": item["b64_json"]}) + b"\n\n" for item in body["data"]]


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
