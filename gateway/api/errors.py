"""Every error leaves in OpenAI's shape, with x-request-id; framework errors are translated too."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match

from gateway.api.state import AppState
from gateway.errors import ClientGone, GatewayError, InvalidRequestError, ServiceUnavailableError

log = logging.getLogger(__name__)


def _render(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def error_response(exc: Exception, state: AppState | None) -> JSONResponse:
    """The response for an exception a handler raised: the one place that knows how each kind of
    failure looks to a caller (FastAPI's handlers below and the hot path both use it)."""
    if isinstance(exc, GatewayError):
        return _render(exc)
    if isinstance(exc, ClientGone | ClientDisconnect):  # ClientDisconnect: gone while its body was read
        return JSONResponse(None, status_code=499)  # nginx's "client closed request"; nobody reads it
    if isinstance(exc, REDIS_DOWN):
        # Fail closed: without the accounting store nothing is served (no unmetered images).
        log.warning("redis unavailable: %s", type(exc).__name__)
        if state is not None:
            state.metrics.redis_errors.labels("request").inc()
        return _render(
            ServiceUnavailableError(
                "The gateway cannot reach its accounting store; please retry shortly.",
                headers={"retry-after": "2"},
            )
        )
    log.exception("unhandled error", exc_info=exc)
    body = {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    return JSONResponse(body, status_code=500)


def install(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """`routes`: every route the app serves, to name all the methods of a path in a 405."""

    @app.exception_handler(GatewayError)
    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)
    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, getattr(request.app.state, "gateway", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return _render(InvalidRequestError(f"{param or 'request'}: {first.get('msg', 'invalid')}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette's router names the methods of the first route on the path only.
            methods = {m for r in routes if r.matches(request.scope)[0] != Match.NONE for m in _methods(r)}
            headers = {**(headers or {}), "allow": ", ".join(sorted(methods))}
        kinds = {404: "not_found", 405: "method_not_allowed"}
        body = {
            "error": {
                "message": str(exc.detail),
                "type": "invalid_request_error",
                "param": None,
                "code": kinds.get(exc.status_code),
            }
        }
        return JSONResponse(body, status_code=exc.status_code, headers=headers)


def _methods(route: BaseRoute) -> set[str]:
    methods: set[str] | None = getattr(route, "methods", None)
    return methods or set()
