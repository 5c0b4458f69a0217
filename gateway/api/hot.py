"""The ASGI entry point: FastAPI for every route, except the hot path.

POST /v1/images/generations is what every image costs, and FastAPI's per-request machinery
(middleware layers, dependency solving, exception wrapping) measured at about 270 us of CPU a
request on the benchmark machine, more than the rest of the gateway's own work on it. So that one
route is served here with the same handler, authentication and error rendering, and everything
else goes through FastAPI. Every response, on either path, carries x-request-id and
x-content-type-options: nosniff (no browser may guess a type other than the one we send).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from gateway.accounting.keys import Principal
from gateway.api import images
from gateway.api.deps import team_principal
from gateway.api.errors import error_response
from gateway.api.hot_request import HotRequest
from gateway.api.json_response import JsonBytesResponse
from gateway.api.openapi import complete, is_complete
from gateway.api.state import AppState
from gateway.errors import ClientGone, MethodNotAllowedError
from gateway.ids import RandomIds, request_id

OPENAI_PREFIX = "/openai/v1/"

Handler = Callable[[Request, AppState, Principal], Awaitable[Response]]

# One constant tuple appended to every response: no per-request work beyond the list append.
NOSNIFF = (b"x-content-type-options", b"nosniff")


class GatewayApp(FastAPI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ids = RandomIds()
        self._hot: dict[tuple[str, str], Handler] = {("POST", "/v1/images/generations"): images.generations}
        # Each hot path's methods, for the 405 another method gets (FastAPI has no route to say so).
        self._allow = {path: ", ".join(sorted(m for m, p in self._hot if p == path)) for _, path in self._hot}

    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema of its routes (made once and kept), completed with the hot path's
        operation. That has no FastAPI route: one registered only to be documented would serve the
        request the day the table above lost its entry, with FastAPI's overhead."""
        schema = super().openapi()
        if not is_complete(schema):
            complete(schema)
        return schema

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(OPENAI_PREFIX):  # Lumenfall's base URL (/openai/v1) serves the same API
            scope["path"] = path[len(OPENAI_PREFIX) - 4 :]
            if "raw_path" in scope:
                scope["raw_path"] = scope["raw_path"][len(OPENAI_PREFIX) - 4 :]
        rid = request_id(self._ids)
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())
        handler = self._hot.get((scope["method"], scope["path"]))
        if handler is None:
            allow = self._allow.get(scope["path"])
            if allow is None:
                await super().__call__(scope, receive, _with_headers(send, header))
            else:
                wrong = MethodNotAllowedError("Method Not Allowed", headers={"allow": allow})
                await error_response(wrong, None)(scope, receive, _with_headers(send, header))
            return
        scope["app"] = self
        await self._serve(handler, scope, receive, send, header)

    async def _serve(
        self, handler: Handler, scope: Scope, receive: Receive, send: Send, header: tuple[bytes, bytes]
    ) -> None:
        request = HotRequest(scope, receive)
        state: AppState | None = getattr(self.state, "gateway", None)
        try:
            if state is None:
                raise RuntimeError("the gateway is not started (lifespan did not run)")
            state.shedder.check()  # before anything else: a refused request costs next to nothing
            # The handler takes its slot once the body is in (a slow body holds none).
            response = await handler(request, state, await team_principal(request, state))
        except ClientGone:
            return
        except Exception as exc:  # every failure leaves in OpenAI's shape, as on FastAPI's routes
            response = error_response(exc, state)
        try:
            if isinstance(response, JsonBytesResponse):
                response.add_headers(header, NOSNIFF)
                response.may_send_head = True  # `send` is the server's own here
                await response(scope, receive, send)
            elif isinstance(response, JSONResponse):  # it sends its raw_headers
                response.raw_headers += [header, NOSNIFF]
                await response(scope, receive, send)
            else:
                await response(scope, receive, _with_headers(send, header))
        finally:
            # If sending failed before the settlement ran, the request is settled as not delivered.
            delivery = getattr(response, "delivery", None)
            if delivery is not None:
                await delivery(False)


def _with_headers(send: Send, header: tuple[bytes, bytes]) -> Send:
    """`send`, adding x-request-id and nosniff to the answer's headers."""

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), header, NOSNIFF]
        await send(message)

    return send_with_id
