"""The HTTP edge of the worker: the OpenAI images request (plus HiDream extension fields), its
validation into a JobSpec (reject, never clamp; errors name the parameter) and the response body."""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from worker.errors import InvalidRequestError
from worker.jobs import JobOutput, JobSpec
from worker.settings import WorkerSettings
from worker.variants import DEFAULT_SIZE, SIZES

MAX_SEED = 2**63 - 1  # what the gateway accepts; torch seeds take up to 2**64 - 1
# The answer's images as bytes, for a client that accepts them (the gateway): no base64 to encode
# here and decode there, a third fewer bytes to send. JSON stays the answer to everyone else.
RAW_IMAGES = "application/vnd.hidream.images"


class GenerationRequest(BaseModel):
    """POST /v1/images/generations. JSON null means absent (the OpenAI SDK sends explicit nulls)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    user: str | None = None  # accepted for OpenAI compatibility; not used
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    # The worker's streaming protocol (worker/streaming.py): an NDJSON answer with progress and
    # `partial_images` previews before the result.
    stream: bool | None = None
    partial_images: int | None = None


def parse_request(payload: object) -> GenerationRequest:
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    for name, value in payload.items():
        # A lone UTF-16 surrogate (a JSON escape such as \\ud800 without its pair) is not text: the
        # answer, which echoes the prompt, or an error quoting it, would fail to encode (a 500).
        if not _encodes(name):
            param = name.encode("unicode_escape").decode("ascii")
            raise InvalidRequestError(f"'{param}' is not valid text (an unpaired surrogate).", param=param)
        if isinstance(value, str) and not _encodes(value):
            raise InvalidRequestError(f"'{name}' is not valid text (an unpaired surrogate).", param=name)
    try:
        return GenerationRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        if first["type"] == "extra_forbidden":
            raise InvalidRequestError(f"Unrecognized request argument supplied: {param}", param=param) from None
        if first["type"] == "missing":
            raise InvalidRequestError(f"Missing required parameter: '{param}'.", param=param) from None
        raise InvalidRequestError(f"Invalid '{param}': {first['msg']}.", param=param) from None


def _encodes(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_size(size: str) -> tuple[int, int]:
    width, sep, height = size.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise InvalidRequestError(f"Invalid 'size' {size!r}: expected WIDTHxHEIGHT.", param="size")
    return int(width), int(height)


def to_job_spec(req: GenerationRequest, settings: WorkerSettings) -> JobSpec:
    variant = settings.spec
    if req.model is not None and req.model != variant.model_id:
        raise InvalidRequestError(
            f"This worker serves '{variant.model_id}', not '{req.model}'.", param="model", code="model_not_found"
        )
    if not req.prompt.strip():
        raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
    if len(req.prompt) > settings.max_prompt_chars:
        raise InvalidRequestError(f"'prompt' is longer than {settings.max_prompt_chars} characters.", param="prompt")
    if req.negative_prompt is not None and len(req.negative_prompt) > settings.max_prompt_chars:
        raise InvalidRequestError(
            f"'negative_prompt' is longer than {settings.max_prompt_chars} characters.", param="negative_prompt"
        )
    if req.response_format not in (None, "b64_json"):
        raise InvalidRequestError(
            "This worker does not store images: 'response_format' must be 'b64_json'.", param="response_format"
        )
    if req.output_format not in (None, "png"):
        raise InvalidRequestError("This worker returns PNG only: 'output_format' must be 'png'.", param="output_format")
    n = _int_in("n", req.n, 1, 1, settings.max_n)
    width, height = parse_size(req.size) if req.size is not None else DEFAULT_SIZE
    if (width, height) not in SIZES:
        allowed = ", ".join(f"{w}x{h}" for w, h in SIZES)
        raise InvalidRequestError(f"Unsupported 'size' {width}x{height}; supported: {allowed}.", param="size")
    steps = _int_in("num_inference_steps", req.num_inference_steps, variant.default_steps, 1, settings.max_steps)
    guidance = variant.default_guidance if req.guidance_scale is None else req.guidance_scale
    if not 0.0 <= guidance <= variant.max_guidance:
        raise InvalidRequestError(
            f"'guidance_scale' must be between 0 and {variant.max_guidance} for {variant.model_id}.",
            param="guidance_scale",
        )
    seed = secrets.randbelow(2**32) if req.seed is None else _int_in("seed", req.seed, 0, 0, MAX_SEED)
    partial_images = _int_in("partial_images", req.partial_images, 0, 0, 3)
    if partial_images and not req.stream:
        raise InvalidRequestError("'partial_images' needs 'stream': true.", param="partial_images")
    return JobSpec(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        n=n,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=float(guidance),
        seed=seed,
        partial_images=partial_images,
    )


def _int_in(param: str, value: int | None, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not low <= value <= high:
        raise InvalidRequestError(f"'{param}' must be between {low} and {high}.", param=param)
    return value


def generation_body(spec: JobSpec, output: JobOutput) -> dict[str, object]:
    return {
        "created": int(time.time()),
        "data": [
            {"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": spec.prompt} for png in output.images
        ],
        "seed": spec.seed,
        "size": f"{output.width}x{output.height}",
    }


@dataclass(frozen=True, slots=True)
class RawImages:
    """A generation answered as bytes (RAW_IMAGES): the PNGs one after the other, each one's length
    in the x-image-lengths header (comma-separated, in order). The seed and size are headers too
    (x-seed, x-actual-size), as in a JSON answer; the revised prompt, which is the prompt, is left out."""

    body: bytes
    headers: dict[str, str]


def raw_images(spec: JobSpec, output: JobOutput) -> RawImages:
    lengths = ",".join(str(len(png)) for png in output.images)
    return RawImages(b"".join(output.images), {"x-image-lengths": lengths})


def accepts_raw(accept: str | None) -> bool:
    """Whether an Accept header names RAW_IMAGES (with any parameters, at any q but 0)."""
    for item in (accept or "").split(","):
        media, _, params = item.partition(";")
        if media.strip().lower() != RAW_IMAGES:
            continue
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False
