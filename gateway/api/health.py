"""Liveness, readiness (its detail and the metrics behind a token), and the signed image URLs the
gateway serves."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import redis.exceptions
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from gateway.api.deps import MetricsReader, State, observer
from gateway.api.schemas import Health, Readiness
from gateway.errors import NotFoundError, PermissionDeniedError
from gateway.images.storage import CONTENT_TYPES

if TYPE_CHECKING:
    from pathlib import Path

router = APIRouter()


@router.get("/health", response_model=None, responses={200: {"model": Health}})
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={200: {"model": Readiness}, 503: {"model": Readiness, "description": "Not ready."}},
    # Anyone, or with the metrics token or the admin key for the detail.
    openapi_extra={"security": [{}, {"metricsToken": []}, {"adminKey": []}]},
)
async def ready(request: Request, state: State) -> JSONResponse:
    """Ready or not, to anyone (load balancers, orchestrators); with the metrics token or the admin
    key, also why: Redis, and each route's health and probe detail."""
    try:
        redis_ok = bool(await state.redis.ping())
    except (redis.exceptions.RedisError, OSError):
        redis_ok = False
    snapshot = await state.health.snapshot()
    any_route = any(h.healthy for by_provider in snapshot.values() for h in by_provider.values())
    ok = redis_ok and any_route
    status = 200 if ok else 503
    if "authorization" not in request.headers:
        return JSONResponse({"ready": ok}, status_code=status)
    await observer(request, state)
    routes: dict[str, Any] = {
        model: {p: {"healthy": h.healthy, "detail": h.detail} for p, h in by_provider.items()}
        for model, by_provider in snapshot.items()
    }
    body = {"ready": ok, "redis": redis_ok, "pricing_loaded": True, "routes": routes}
    return JSONResponse(body, status_code=status)


@router.get("/metrics", dependencies=[MetricsReader], response_class=PlainTextResponse)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get(
    "/v1/files/images/{name}",
    response_class=Response,
    responses={
        200: {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in CONTENT_TYPES.values()}}
    },
)
async def image_file(
    request: Request, name: str, state: State, expires: int = Query(...), sig: str = Query(..., max_length=128)
) -> Response:
    if not state.store.verify(name, expires, sig):
        raise PermissionDeniedError("This image URL is invalid or has expired.", code="url_expired")
    found = await state.store.open(name)  # from any replica's store: the local dir or the bucket
    if found is None:
        raise NotFoundError("No such image.", code="not_found")
    # No cache may keep the image past the moment its URL stops working.
    headers = {"cache-control": f"private, max-age={max(0, int(expires - time.time()))}"}
    if found.path is not None and "range" not in request.headers:
        # Read whole in one hop to a thread (FileResponse made one for each 64 KiB, about thirty
        # for a 2 MiB image, and the hops cost more than the reads); a file swept meanwhile is gone.
        # Into a buffer made here, not by the thread: glibc keeps what a thread frees in that
        # thread's own arena, so reads allocated there left each executor thread holding images.
        buffer = bytearray(found.size)
        try:
            size = await asyncio.to_thread(_read_into, found.path, buffer)
        except FileNotFoundError:
            raise NotFoundError("No such image.", code="not_found") from None
        return Response(memoryview(buffer)[:size], media_type=found.content_type, headers=headers)
    if found.path is not None:  # a range of it: FileResponse answers those
        return FileResponse(found.path, media_type=found.content_type, headers=headers)
    assert found.chunks is not None
    headers["content-length"] = str(found.size)
    return StreamingResponse(found.chunks, media_type=found.content_type, headers=headers)


def _read_into(path: Path, buffer: bytearray) -> int:
    """The file's bytes into `buffer` (its size when it was opened); how many there were."""
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        filled = 0
        while filled < len(view) and (n := f.readinto(view[filled:])):
            filled += n
    return filled
