"""Pure data transforms between the gateway's types and fal.ai's queue protocol: the model input,
the submit and status replies, and the model output (error answers are errors.py's). No I/O.
Protocol notes: /work/shared/reference/fal-api.md (sections cited inline)."""

from __future__ import annotations

import binascii
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Required, TypedDict, cast

import pybase64
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, ValidationError

from providers.base import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProviderBadResponseError,
    ProviderContentPolicyError,
    ProviderRejectedInputError,
    RouteTarget,
    png_size,
    sniff_content_type,
)
from providers.fal.errors import PROVIDER, error_from_response, lower_keys, try_json

# fal's image_size presets (§6.1); any other size goes as {"width", "height"}.
PRESETS: Mapping[tuple[int, int], str] = {
    (1024, 1024): "square_hd",
    (512, 512): "square",
    (768, 1024): "portrait_4_3",
    (576, 1024): "portrait_16_9",
    (1024, 768): "landscape_4_3",
    (1024, 576): "landscape_16_9",
}


class FalImageSize(TypedDict):
    width: int
    height: int


class FalInput(TypedDict, total=False):
    """The HiDream input schema (§6.1, §6.3) as far as the gateway fills it."""

    prompt: Required[str]
    negative_prompt: str
    image_size: str | FalImageSize
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_images: int
    output_format: Literal["png", "jpeg"]
    enable_safety_checker: bool
    sync_mode: bool
    image_url: str  # edits: submit_body writes it, streaming the data URI
    strength: float


def endpoint_for(target: RouteTarget, request: ImageRequest) -> str:
    """The fal model id to submit to: the route's model, or its image-to-image endpoint for edits."""
    if not request.is_edit:
        return target.upstream_model
    if target.edit_model is None:
        raise ProviderRejectedInputError(
            f"{target.upstream_model} cannot edit images", provider=PROVIDER, param="image"
        )
    if len(request.images) != 1:
        raise ProviderRejectedInputError(
            "fal's image-to-image takes exactly one image", provider=PROVIDER, param="image"
        )
    if request.mask is not None:
        raise ProviderRejectedInputError("fal's image-to-image takes no mask", provider=PROVIDER, param="mask")
    return target.edit_model


def image_size(width: int, height: int) -> str | FalImageSize:
    return PRESETS.get((width, height)) or {"width": width, "height": height}


# Fields the adapter sets on every submit, which change the protocol (sync_mode: data URIs or CDN
# URLs; num_images: how many come back; image_size: what the gateway checks against) or carry the
# caller's typed parameters: a caller's extra parameters cannot override them.
OWNED_PARAMS = frozenset(
    {"prompt", "negative_prompt", "image_size", "num_inference_steps", "num_images", "output_format",
     "sync_mode", "image_url", "strength", "guidance_scale", "seed", "webhook_url", "fal_webhook"}
)  # fmt: skip


def fal_input(request: ImageRequest) -> FalInput:
    """The model input, except an edit's image: submit_body adds that without copying it whole.
    The caller's extra parameters go first and every owned field after them, so none is overridden
    (the gateway refuses them before this; fal's own schema checks the rest, with a 422)."""
    body = cast(FalInput, {k: v for k, v in request.extra.items() if k not in OWNED_PARAMS})
    body["prompt"] = request.prompt
    body["image_size"] = image_size(request.width, request.height)
    body["num_inference_steps"] = request.num_inference_steps
    body["num_images"] = request.n
    # png or jpeg natively; the gateway converts to anything else from png (lossless).
    native: Literal["png", "jpeg"] = "jpeg" if request.output_format == "jpeg" else "png"
    body["output_format"] = native
    # sync_mode returns data URIs instead of CDN URLs (§7): bytes without a second download.
    body["sync_mode"] = request.response_format == "b64_json"
    body.setdefault("enable_safety_checker", True)
    if request.guidance_scale is not None:
        body["guidance_scale"] = request.guidance_scale
    if request.negative_prompt is not None:
        body["negative_prompt"] = request.negative_prompt
    if request.seed is not None:
        body["seed"] = request.seed
    if request.is_edit and request.strength is not None:
        body["strength"] = request.strength
    return body


# Input bytes per base64 piece of an edit's data URI: a multiple of 3, so pieces need no padding
# between them; 768 KiB in, 1 MiB out.
DATA_URI_PIECE = 3 * 256 * 1024


@dataclass(frozen=True, slots=True)
class SubmitBody:
    """The submit's JSON body as a length and a source of pieces. An edit's image goes as a data
    URI (§6.3: `image_url` takes one) encoded a piece at a time while it is sent, so a 10 MiB
    upload costs one 1 MiB piece beside the caller's bytes instead of several 13 MiB strings."""

    head: bytes
    image: memoryview | None
    tail: bytes

    @property
    def length(self) -> int:
        encoded = 0 if self.image is None else 4 * -(-len(self.image) // 3)
        return len(self.head) + encoded + len(self.tail)

    def pieces(self) -> Iterator[bytes]:
        yield self.head
        if self.image is not None:
            for start in range(0, len(self.image), DATA_URI_PIECE):
                yield pybase64.b64encode(self.image[start : start + DATA_URI_PIECE])
        if self.tail:
            yield self.tail


def submit_body(request: ImageRequest) -> SubmitBody:
    encoded = json.dumps(fal_input(request), separators=(",", ":")).encode()
    if not request.is_edit:
        return SubmitBody(encoded, None, b"")
    image = request.images[0]
    # encoded ends with "}": reopen the object, add image_url, close it after the payload.
    head = encoded[:-1] + b',"image_url":"data:' + image.content_type.encode("ascii") + b";base64,"
    return SubmitBody(head, memoryview(image.data), b'"}')


def app_id(model_id: str) -> str:
    """`owner/app` of a model id: status, result and cancel live there, without the sub-path (§1)."""
    parts = model_id.strip("/").split("/")
    keep = 3 if parts[0] in ("workflows", "comfy") else 2
    if len(parts) < keep or not all(parts[:keep]):
        raise ValueError(f"not a fal model id: {model_id!r}")
    return "/".join(parts[:keep])


# --- queue replies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submission:
    """The URLs fal returned for one queued request; followed as given, never rebuilt."""

    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


QueueState = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


@dataclass(frozen=True, slots=True)
class QueueStatus:
    state: QueueState
    queue_position: int | None = None
    error: str | None = None
    error_type: str | None = None


def parse_submission(body: bytes, *, queue_url: str) -> Submission:
    """The submit reply (§2.1). Every URL must live under our queue URL: we send the key to them."""
    data = _json_object(body, "submit reply")

    def field(name: str) -> str:
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise _bad(f"submit reply has no {name}")
        if name != "request_id" and not value.startswith(queue_url + "/"):
            raise _bad(f"submit reply's {name} is not under the configured queue URL")
        return value

    return Submission(
        request_id=field("request_id"),
        status_url=field("status_url"),
        response_url=field("response_url"),
        cancel_url=field("cancel_url"),
    )


def parse_status(status_code: int, headers: Mapping[str, str], body: bytes) -> QueueStatus:
    """A status poll reply (§2.2): 202 while queued or running, 200 once COMPLETED."""
    if status_code not in (200, 202):
        raise error_from_response(status_code, headers, body)
    status = _status(_json_object(body, "status reply"))
    if status.state != "COMPLETED" and status_code != 202:
        raise _bad(f"status {status.state} came with HTTP {status_code}, not 202")
    if status.state == "COMPLETED" and status_code != 200:
        raise _bad(f"COMPLETED status came with HTTP {status_code}, not 200")
    return status


def parse_status_event(data: str) -> QueueStatus:
    """One event of the status stream (§2.3): the same object a poll returns, without its HTTP code."""
    return _status(_json_object(data.encode(), "status stream event"))


class EventStreamDecoder:
    """text/event-stream lines -> each event's data (the WHATWG rules fal's stream needs: `data`
    fields joined by newlines, a blank line ends an event, lines starting with ':' are comments,
    which fal sends every 15 s to keep the connection open, §2.3)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """The data of the event this line completes, else None."""
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


def _status(data: dict[str, object]) -> QueueStatus:
    state = data.get("status")
    if state == "IN_QUEUE":
        position = data.get("queue_position")
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise _bad("IN_QUEUE status without a queue_position")
        return QueueStatus("IN_QUEUE", queue_position=position)
    if state not in ("IN_PROGRESS", "COMPLETED"):
        raise _bad(f"unknown queue status {state!r}")
    if "logs" not in data:
        raise _bad(f"{state} status without the logs key")
    if state == "IN_PROGRESS":
        return QueueStatus("IN_PROGRESS")
    error, error_type = data.get("error"), data.get("error_type")
    if not isinstance(error, str | None) or not isinstance(error_type, str | None):
        raise _bad("COMPLETED status with a mistyped error")
    return QueueStatus("COMPLETED", error=error, error_type=error_type)


def is_ingress_error(status_code: int, headers: Mapping[str, str]) -> bool:
    """A 502/503/504 from fal's ingress proxy, before fal saw the request: it carries no
    x-fal-request-id (the signal fal-client uses, §9). Safe to repeat for GETs."""
    return status_code in (502, 503, 504) and "x-fal-request-id" not in lower_keys(headers)


# --- model output ---------------------------------------------------------------------------------


class _Image(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    url: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None


class _Output(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    images: list[_Image]
    seed: int | None = None
    prompt: str | None = None
    has_nsfw_concepts: list[bool] | None = None


def result_from_output(body: bytes, *, upstream_request_id: str | None = None) -> ImageResult:
    """The model output (§7): data URIs (sync_mode) become bytes, CDN URLs pass through."""
    try:
        output = _Output.model_validate_json(body)
    except ValidationError as exc:
        raise _bad(f"fal output is not the HiDream output shape ({exc.error_count()} problems)") from None
    if not output.images:
        raise _bad("fal output has no images")
    if output.has_nsfw_concepts and any(output.has_nsfw_concepts):
        # fal swaps a flagged image for a black one of the same size (§7); never pass that on.
        raise ProviderContentPolicyError("fal's safety checker flagged the output", provider=PROVIDER)
    return ImageResult(
        images=tuple(_image(i) for i in output.images),
        seed=output.seed,
        revised_prompt=output.prompt,
        upstream_request_id=upstream_request_id,
    )


def _image(image: _Image) -> GeneratedImage:
    if image.url.startswith("data:"):
        data, b64 = decode_data_uri(image.url)
        content_type = sniff_content_type(data)
        if content_type is None:
            raise _bad("a data URI in fal's output is not a PNG, JPEG or WebP image")
        width, height = (png_size(data) if content_type == "image/png" else None) or _pixel_size(data)
        # fal's own base64 goes on with the bytes: a b64_json answer of the image as it came sends it
        # rather than encoding megabytes again (as the GPU worker's does)
        return GeneratedImage(content_type=content_type, width=width, height=height, data=data, b64=b64)
    if not image.url.startswith(("https://", "http://")):
        raise _bad("an image URL in fal's output is neither a data URI nor http(s)")
    if image.width is None or image.height is None:
        raise _bad("a CDN image in fal's output has no width/height")
    content_type = image.content_type if image.content_type in ("image/png", "image/jpeg", "image/webp") else None
    return GeneratedImage(
        content_type=content_type or "image/png", width=image.width, height=image.height, url=image.url
    )


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    """`data:<type>;base64,<payload>` -> the payload's bytes, and its base64 (validated: only the
    alphabet, and correct padding)."""
    comma = uri.find(",", 0, 256)
    if comma < 0 or not uri.startswith("data:") or not uri.endswith(";base64", 0, comma):
        raise _bad("a data URI in fal's output is not base64")
    try:
        # validate: only the alphabet and correct padding (SIMD: ~1 ms for a 2 MiB image's text)
        b64 = uri[comma + 1 :]
        return pybase64.b64decode(b64, validate=True), b64
    except (binascii.Error, ValueError):
        raise _bad("a data URI in fal's output does not decode") from None


def _pixel_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            return img.size
    except (UnidentifiedImageError, OSError):
        raise _bad("an image in fal's output does not open") from None


# --- helpers --------------------------------------------------------------------------------------


def _bad(message: str) -> ProviderBadResponseError:
    return ProviderBadResponseError(message, provider=PROVIDER)


def _json_object(body: bytes, what: str) -> dict[str, object]:
    data = try_json(body)
    if not isinstance(data, dict):
        raise _bad(f"fal's {what} is not a JSON object")
    return data
