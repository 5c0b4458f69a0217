"""POST /v1/images/generations (JSON) and /v1/images/edits (multipart, as the OpenAI SDK sends it)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.accounting.keys import Principal
from gateway.api import jobs
from gateway.api.deps import State, Team
from gateway.api.disconnect import Watch, until_disconnect
from gateway.api.edit_form import IMAGE_FIELDS, EditForm, FormLimits, file_param, read_edit_form
from gateway.api.json_body import parse_object, plain_text
from gateway.api.json_response import JsonBytesResponse
from gateway.api.request_body import read_body
from gateway.api.server import CONNECTION_OPEN, ON_DISCONNECT
from gateway.api.state import AppState
from gateway.api.streaming import EventStream
from gateway.catalog import POLICIES
from gateway.errors import (
    InvalidRequestError,
    MissingParameterError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    UnsupportedMediaError,
)
from gateway.images.validation import Params, ValidRequest, check_edit_inputs, probe_upload, validate_generation
from gateway.routing.dispatch import RoutingRequest
from providers.base import ImageBytes, InputImage

router = APIRouter()


async def generations(request: Request, state: AppState, principal: Principal) -> Response:
    """POST /v1/images/generations, served by the hot path (gateway/api/hot.py) rather than a
    FastAPI route: every image request passes here, and the framework's per-request machinery
    cost more than the rest of the gateway's own work."""
    _require_content_type(request, "application/json")
    raw = await _read_limited(request, 1024 * 1024)
    with state.shedder.slot():  # once the body is in: a caller trickling it holds no slot meanwhile
        params = Params(parse_object(raw), form=False, text_checked=plain_text(raw))
        valid = validate_generation(state.catalog, params, owned=state.owned_params)
        return await _serve(request, state, principal, valid)


@router.post("/v1/images/variations")
async def variations(_: Team) -> Response:
    raise NotFoundError(
        "HiDream models make no variations without a prompt: send the image and a prompt to "
        "POST /v1/images/edits (client.images.edit; `strength` sets how far to move from the image).",
        code="unsupported_endpoint",
    )


@router.post("/v1/images/edits")
async def edits(request: Request, state: State, principal: Team) -> Response:
    state.shedder.check()
    form = await _read_form(request, state.settings.max_upload_bytes)
    with state.shedder.slot():  # once the body is in: a slow upload holds none
        valid = await _valid_edit(form, state)
        return await _serve(request, state, principal, valid)


async def _read_form(request: Request, limit: int) -> EditForm:
    _require_content_type(request, "multipart/form-data")
    declared = request.headers.get("content-length", "")
    length = int(declared) if declared.isdigit() else None
    # Everything but a few fields is images; refuse an oversized body before reading it.
    if length is not None and length > limit * 2 + 1024 * 1024:
        raise PayloadTooLargeError(f"The request body is larger than {limit * 2} bytes.", param="image")
    limits = FormLimits(max_files=8, max_fields=64, max_field_bytes=1024 * 1024, max_file_bytes=limit)
    return await read_edit_form(request.headers["content-type"], request.receive, limits, length)


async def _valid_edit(form: EditForm, state: AppState) -> ValidRequest:
    settings = state.settings
    fields: dict[str, object] = {}
    image_data: list[ImageBytes] = []
    mask_data: ImageBytes | None = None
    for name, data in form.files:
        if name in IMAGE_FIELDS:
            image_data.append(data)
        elif name == "mask":
            mask_data = data
        else:
            raise InvalidRequestError(f"Unexpected file part '{name}'.", param=name)
    for name, value in form.fields:
        if name in IMAGE_FIELDS or name == "mask":
            raise InvalidRequestError(f"'{name}' must be sent as a file.", param=file_param(name))
        fields[name] = value
    if not image_data:
        raise MissingParameterError("Missing required parameter: 'image'.", param="image")
    params = Params(fields, form=True)
    check_edit_inputs(state.catalog, params, len(image_data), has_mask=mask_data is not None)
    for upload in image_data:
        _not_empty(upload, "image")
    if mask_data is not None:
        _not_empty(mask_data, "mask")
    # Headers only: the pixels are checked once the edit is admitted (ImageService._serve).
    images = tuple([await _probe(d, "image", settings.max_upload_pixels) for d in image_data])
    mask = await _probe(mask_data, "mask", settings.max_upload_pixels) if mask_data is not None else None
    return validate_generation(state.catalog, params, images=images, mask=mask, owned=state.owned_params)


def _not_empty(data: ImageBytes, param: str) -> None:
    if not data:
        raise InvalidRequestError(f"'{param}' is empty.", param=param, code="invalid_image")


async def _probe(data: ImageBytes, param: str, max_pixels: int) -> InputImage:
    # A thread even for a header: opening a 40 MP WebP takes ~2.5 ms (libwebp sets up its canvases).
    return await asyncio.to_thread(probe_upload, data, param=param, max_pixels=max_pixels)


async def _serve(request: Request, state: AppState, principal: Principal, valid: ValidRequest) -> Response:
    routing = await _routing(request, state, principal, valid)
    respond_async = jobs.wants_async(request)
    if not respond_async:
        jobs.refuse_webhook_without_job(valid)
    if request.query_params.get("dryRun", "").lower() == "true":
        if valid.stream:  # an SDK reading a stream would find no event in a JSON quote, and say nothing
            raise InvalidRequestError(
                "A dry run answers its quote as JSON; send it without stream=true.", param="stream"
            )
        return JsonBytesResponse(await state.service.dry_run(principal, valid, routing))
    if respond_async:  # admitted now, served by the job runner: 202 with the job
        body, headers = await jobs.submit(request, state, principal, valid, routing)
        return JsonBytesResponse(body, status_code=202, headers=headers)
    if valid.stream:
        progress = _progress_opt_in(request)
        admitted = state.service.admit(principal, valid, request.state.request_id, routing, _idempotency_key(request))
        # Admitted (or refused, with an ordinary HTTP error) before the stream is answered.
        answer = await until_disconnect(request.receive, admitted, _watch(request))
        return EventStream(state, answer, edit=bool(valid.images), progress=progress)
    work = state.service.generate(principal, valid, request.state.request_id, routing, _idempotency_key(request))
    result = await until_disconnect(request.receive, work, _watch(request))
    delivery = result.delivery
    if delivery is None:
        return JsonBytesResponse(result.body, headers=result.headers)
    # Settled once the answer is handed to the connection (right after sending): the caller gets
    # it without waiting for the settlement's round trip, and a caller that left before it is
    # charged nothing.
    is_open = request.scope.get("extensions", {}).get(CONNECTION_OPEN)

    async def settle_after_send() -> None:
        await delivery(is_open() if is_open is not None else True)

    try:
        return JsonBytesResponse(result.body, headers=result.headers, after_send=settle_after_send, delivery=delivery)
    except BaseException:
        await delivery(False)
        raise


async def _routing(request: Request, state: AppState, principal: Principal, valid: ValidRequest) -> RoutingRequest:
    """The model's routing policy, as the caller may adjust it through x-gateway-* headers."""
    policy = valid.model.routing
    name = request.headers.get("x-gateway-routing-policy")
    if name is not None:
        if name not in POLICIES:
            raise InvalidRequestError(
                f"x-gateway-routing-policy must be one of {', '.join(POLICIES)}.", param="x-gateway-routing-policy"
            )
        policy = replace(policy, kind=name)
    target = request.headers.get("x-gateway-latency-target-s")
    if target is not None:
        try:
            seconds = float(target)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= 3600:
            raise InvalidRequestError(
                "x-gateway-latency-target-s must be a number of seconds up to 3600.", param="x-gateway-latency-target-s"
            )
        policy = replace(policy, latency_target_s=seconds)
    header = request.headers.get("x-gateway-provider")
    if header is not None and valid.pinned is not None and header != valid.pinned:
        raise InvalidRequestError(
            f"The model names provider '{valid.pinned}' and x-gateway-provider names '{header}'.",
            param="x-gateway-provider",
        )
    pinned = header or valid.pinned
    if pinned is not None and not (await state.keys.get_team(principal.team_id)).allow_provider_pinning:
        raise PermissionDeniedError(
            "This team may not choose its provider; ask the gateway admin.",
            param="model" if valid.pinned is not None else "x-gateway-provider",
        )
    return RoutingRequest(policy, pinned)


def _watch(request: Request) -> Watch | None:
    watch: Watch | None = request.scope.get("extensions", {}).get(ON_DISCONNECT)
    return watch


def _progress_opt_in(request: Request) -> bool:
    """x-gateway-progress: true adds gateway.progress events to a stream (OpenAI's only, without)."""
    value = request.headers.get("x-gateway-progress", "false").strip().lower()
    if value not in ("true", "false"):
        raise InvalidRequestError("x-gateway-progress must be true or false.", param="x-gateway-progress")
    return value == "true"


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise InvalidRequestError(
            "Idempotency-Key must be 1 to 255 printable ASCII characters.", param="Idempotency-Key"
        )
    return key


def _require_content_type(request: Request, expected: str) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != expected:
        raise UnsupportedMediaError(f"Content-Type must be {expected}; got '{content_type or 'none'}'.", param=None)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The body, refused past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0

    def take(piece: bytes) -> None:
        nonlocal size
        size += len(piece)
        if size > limit:
            raise PayloadTooLargeError(f"The JSON body is larger than {limit} bytes.")
        chunks.append(piece)

    await read_body(request.receive, take)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
