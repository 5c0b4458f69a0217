"""Pure data transforms between the gateway's types and the worker's protocol (OpenAI images plus
HiDream extension fields): the request body, the generation response, /ready reports, and worker
error responses -> the ProviderError family. No I/O here."""

from __future__ import annotations

import binascii
import email.utils
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

import pybase64
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError

from providers.base import (
    GeneratedImage,
    ImageBytes,
    ImageRequest,
    ImageResult,
    ProviderAuthError,
    ProviderBadResponseError,
    ProviderError,
    ProviderNotReadyError,
    ProviderRateLimitedError,
    ProviderRejectedInputError,
    ProviderUnavailableError,
    RouteTarget,
    png_size,
    sniff_content_type,
)

PROVIDER = "local_gpu"
# A worker that knows it answers the images as bytes (worker/schemas.py RawImages): the PNGs one
# after the other, their lengths in x-image-lengths. One that does not answers JSON, as before.
RAW_IMAGES = "application/vnd.hidream.images"
ACCEPT = f"{RAW_IMAGES}, application/json;q=0.5"
# When a 429/503 names no Retry-After: about one fast generation.
DEFAULT_RETRY_AFTER_S = 5.0


class WorkerGenerationBody(TypedDict, total=False):
    model: str
    prompt: str
    n: int
    size: str
    response_format: str
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str
    seed: int
    stream: bool  # the worker's streaming answer (worker/streaming.py)
    partial_images: int


def generation_body(target: RouteTarget, request: ImageRequest) -> WorkerGenerationBody:
    if request.is_edit:
        # The catalog never routes edits here (no edit_model); refuse rather than drop the image.
        raise ProviderRejectedInputError("The local GPU worker cannot edit images.", provider=PROVIDER, param="image")
    body: WorkerGenerationBody = {
        "model": target.upstream_model,
        "prompt": request.prompt,
        "n": request.n,
        "size": request.size,
        # Always bytes: the worker stores nothing, and the gateway stores or inlines them itself.
        "response_format": "b64_json",
        "num_inference_steps": request.num_inference_steps,
    }
    if request.guidance_scale is not None:
        body["guidance_scale"] = request.guidance_scale
    if request.negative_prompt is not None:
        body["negative_prompt"] = request.negative_prompt
    if request.seed is not None:
        body["seed"] = request.seed
    return body


# --- responses --------------------------------------------------------------------------------


class _Image(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class _Generation(BaseModel):
    created: int
    data: list[_Image]
    seed: int | None = None
    size: str | None = None


class _Ready(BaseModel):
    model: str
    ready: bool
    expected_wait_s: float | None = None
    queue_depth: int = 0
    in_flight: int = 0
    max_queue: int | None = None
    ewma_latency_s: float | None = None
    seconds_per_step_image: float | None = None  # its EWMA of seconds per work unit (worker/jobs.py)
    default_steps: int | None = None
    default_guidance_scale: float | None = None


class _ErrorDetail(BaseModel):
    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | None = None


class _ErrorBody(BaseModel):
    error: _ErrorDetail


@dataclass(frozen=True, slots=True)
class ReadyReport:
    """What one worker's /ready said: the variant it serves and how busy it is."""

    model: str
    ready: bool
    expected_wait_s: float
    queue_depth: int
    in_flight: int
    max_queue: int | None
    ewma_latency_s: float | None
    retry_after_s: float | None
    # One image's time at the variant's defaults, from the worker's time per unit of work: unlike
    # its EWMA of whole jobs, not inflated by jobs of several images. None from older workers.
    image_s: float | None = None

    @property
    def per_image_s(self) -> float | None:
        return self.image_s if self.image_s is not None else self.ewma_latency_s

    @property
    def saturated(self) -> bool:
        """Its queue is full: a new job would be refused with 429 right now."""
        return self.max_queue is not None and self.in_flight + self.queue_depth >= 1 + self.max_queue


def parse_ready(status: int, headers: Mapping[str, str], content: bytes | bytearray) -> ReadyReport:
    """/ready answers 200 when ready and 503 while loading, warming, draining or failed; both
    carry the report. Anything else is not a worker we understand."""
    if status not in (200, 503):
        raise ProviderBadResponseError(f"/ready answered {status}", provider=PROVIDER, upstream_status=status)
    try:
        parsed = _Ready.model_validate_json(content)
    except ValidationError:
        raise ProviderBadResponseError("/ready body is not a worker report", provider=PROVIDER) from None
    return ReadyReport(
        model=parsed.model,
        ready=parsed.ready and status == 200,
        expected_wait_s=max(0.0, parsed.expected_wait_s or 0.0),
        queue_depth=parsed.queue_depth,
        in_flight=parsed.in_flight,
        max_queue=parsed.max_queue,
        ewma_latency_s=parsed.ewma_latency_s,
        retry_after_s=retry_after_s(headers) if status == 503 else None,
        image_s=_image_s(parsed),
    )


def _image_s(parsed: _Ready) -> float | None:
    """Seconds per unit times one image's units at the defaults (steps, doubled under guidance, as
    the worker counts them: worker/jobs.py JobSpec.work_units)."""
    if parsed.seconds_per_step_image is None or not parsed.default_steps:
        return None
    cfg = 2 if (parsed.default_guidance_scale or 0.0) > 1.0 else 1
    return parsed.seconds_per_step_image * parsed.default_steps * cfg


def parse_generation(headers: Mapping[str, str], content: ImageBytes, request: ImageRequest) -> ImageResult:
    """A 200 from the worker -> ImageResult, checking that it holds request.n decodable images
    of exactly the requested size."""
    if headers.get("content-type", "").split(";")[0].strip().lower() == RAW_IMAGES:
        return _parse_raw(headers, content, request)
    try:
        parsed = _Generation.model_validate_json(content)
    except ValidationError:
        raise ProviderBadResponseError("the worker's response is not an images response", provider=PROVIDER) from None
    actual = headers.get("x-actual-size") or parsed.size
    if actual is not None and actual != request.size:
        raise ProviderBadResponseError(f"asked for {request.size}, the worker made {actual}", provider=PROVIDER)
    if len(parsed.data) != request.n:
        raise ProviderBadResponseError(f"asked for {request.n} images, got {len(parsed.data)}", provider=PROVIDER)
    images = tuple(_decode_image(item.b64_json, request) for item in parsed.data)
    return ImageResult(
        images=images,
        seed=parsed.seed,
        revised_prompt=parsed.data[0].revised_prompt if parsed.data else None,
        upstream_request_id=headers.get("x-request-id"),
        upstream_latency_s=_worker_seconds(headers),
    )


def _parse_raw(headers: Mapping[str, str], content: ImageBytes, request: ImageRequest) -> ImageResult:
    """The images as bytes: split by x-image-lengths (one image is the body itself, not a copy)."""
    actual = headers.get("x-actual-size")
    if actual is not None and actual != request.size:
        raise ProviderBadResponseError(f"asked for {request.size}, the worker made {actual}", provider=PROVIDER)
    try:
        lengths = [int(n) for n in headers.get("x-image-lengths", "").split(",")]
    except ValueError:
        raise ProviderBadResponseError("x-image-lengths is not a list of lengths", provider=PROVIDER) from None
    if len(lengths) != request.n:
        raise ProviderBadResponseError(f"asked for {request.n} images, got {len(lengths)}", provider=PROVIDER)
    if any(n <= 0 for n in lengths) or sum(lengths) != len(content):
        raise ProviderBadResponseError(
            f"the worker's images add up to {len(content)} bytes, not {sum(lengths)}", provider=PROVIDER
        )
    if len(lengths) == 1:
        parts = [content]
    else:
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        parts = [content[at : at + n] for at, n in zip(starts, lengths, strict=True)]
    try:
        seed: int | None = int(headers["x-seed"])
    except (KeyError, ValueError):
        seed = None
    return ImageResult(
        images=tuple(_image(data, request) for data in parts),
        seed=seed,
        upstream_request_id=headers.get("x-request-id"),
        upstream_latency_s=_worker_seconds(headers),
    )


def _decode_image(b64: str, request: ImageRequest) -> GeneratedImage:
    try:
        # validate: refuses anything but the alphabet and correct padding (never laxer than
        # binascii's strict_mode, a twentieth of its time on megabytes: SIMD)
        data = pybase64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ProviderBadResponseError("an image is not valid base64", provider=PROVIDER) from None
    return _image(data, request, b64)


def _image(data: ImageBytes, request: ImageRequest, b64: str | None = None) -> GeneratedImage:
    content_type = sniff_content_type(data)
    if content_type is None:
        raise ProviderBadResponseError("an image is not PNG, JPEG or WebP", provider=PROVIDER)
    size = png_size(data) if content_type == "image/png" else None
    if size is None:
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                size = img.size
        except (UnidentifiedImageError, OSError, ValueError):
            raise ProviderBadResponseError("an image cannot be decoded", provider=PROVIDER) from None
    width, height = size
    if (width, height) != (request.width, request.height):
        raise ProviderBadResponseError(f"asked for {request.size}, got an image of {width}x{height}", provider=PROVIDER)
    return GeneratedImage(content_type=content_type, width=width, height=height, data=data, b64=b64)


def _worker_seconds(headers: Mapping[str, str]) -> float | None:
    try:
        return (int(headers["x-queue-ms"]) + int(headers["x-infer-ms"])) / 1000
    except (KeyError, ValueError):
        return None


# --- errors -----------------------------------------------------------------------------------


def error_from_response(status: int, headers: Mapping[str, str], content: bytes | bytearray) -> ProviderError:
    """A non-200 generation response -> the ProviderError it means (by status, never by text)."""
    detail = _error_detail(content)
    message = f"worker answered {status}: {detail.message or 'no message'}"
    if status == 429:
        retry = retry_after_s(headers) or DEFAULT_RETRY_AFTER_S
        return ProviderRateLimitedError(message, provider=PROVIDER, upstream_status=status, retry_after_s=retry)
    if status == 503:
        retry = retry_after_s(headers) or DEFAULT_RETRY_AFTER_S
        return ProviderNotReadyError(message, provider=PROVIDER, upstream_status=status, retry_after_s=retry)
    if status in (400, 422):
        return ProviderRejectedInputError(
            detail.message or message, provider=PROVIDER, upstream_status=status, param=detail.param
        )
    if status in (401, 403):
        return ProviderAuthError(message, provider=PROVIDER, upstream_status=status)
    if status >= 500 or status in (404, 405):  # a failed job, or a URL that is not a worker
        return ProviderUnavailableError(message, provider=PROVIDER, upstream_status=status)
    return ProviderBadResponseError(message, provider=PROVIDER, upstream_status=status)


def _error_detail(content: bytes | bytearray) -> _ErrorDetail:
    try:
        return _ErrorBody.model_validate_json(content).error
    except ValidationError:
        return _ErrorDetail()


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return None
    return seconds
