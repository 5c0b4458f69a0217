"""The fake fal server's model side: the HiDream input schemas of fal-api.md §6 (validated the way
a fal app does, answering pydantic-v2-style 422 `detail[]`), and real images of the asked size."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Preset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
ERRORS_URL = "https://docs.fal.ai/errors/#"

Detail = dict[str, object]


class ImageSize(BaseModel):
    # fal publishes no limits for custom sizes (§6.1 "unknown"); these are the fake's assumption.
    width: int = Field(gt=0, le=4096)
    height: int = Field(gt=0, le=4096)


class LoraWeight(BaseModel):
    path: str
    scale: float = 1.0
    weight_name: str | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str
    negative_prompt: str = ""
    image_size: Preset | ImageSize | None = ImageSize(width=1024, height=1024)
    seed: int | None = None
    sync_mode: bool = False
    num_images: int = Field(1, ge=1, le=4)
    enable_safety_checker: bool = True
    output_format: Literal["jpeg", "png"] = "jpeg"


class FullInput(_Common):
    num_inference_steps: int = Field(50, ge=1, le=50)
    guidance_scale: float = Field(5.0, ge=0, le=20)
    loras: list[LoraWeight] = []


class DevInput(_Common):
    num_inference_steps: int = Field(28, ge=1, le=50)


class FastInput(_Common):
    num_inference_steps: int = Field(16, ge=1, le=50)


class ImageToImageInput(FullInput):
    image_url: str
    strength: float = Field(0.75, ge=0, le=1)
    image_size: Preset | ImageSize | None = None  # None: the input image's size


# Endpoint (full model id) -> (owner/app its requests live under, input schema).
ENDPOINTS: dict[str, tuple[str, type[_Common]]] = {
    "fal-ai/hidream-i1-full": ("fal-ai/hidream-i1-full", FullInput),
    "fal-ai/hidream-i1-dev": ("fal-ai/hidream-i1-dev", DevInput),
    "fal-ai/hidream-i1-fast": ("fal-ai/hidream-i1-fast", FastInput),
    "fal-ai/hidream-i1-full/image-to-image": ("fal-ai/hidream-i1-full", ImageToImageInput),
}


@dataclass(frozen=True)
class Job:
    """A validated input: what the runner makes."""

    prompt: str
    width: int
    height: int
    num_images: int
    seed: int | None
    sync_mode: bool
    output_format: str


def detail(field: str, msg: str, type_: str, **extra: object) -> Detail:
    return {"loc": ["body", field], "msg": msg, "type": type_, "url": ERRORS_URL + type_, **extra}


def validate(endpoint: str, payload: object) -> Job | list[Detail]:
    """The runner's view of a submitted body: a Job, or the 422 detail list."""
    schema = ENDPOINTS[endpoint][1]
    try:
        parsed = schema.model_validate(payload)
    except ValidationError as exc:
        items: list[Detail] = json.loads(exc.json(include_url=False))
        for item in items:
            item["loc"] = ["body", *item["loc"]]  # type: ignore[misc]
            item["url"] = ERRORS_URL + str(item["type"])
        return items
    size = parsed.image_size
    if isinstance(parsed, ImageToImageInput):
        source = _load(parsed.image_url)
        if isinstance(source, dict):
            return [source]
        if size is None:
            size = ImageSize(width=source[0], height=source[1])
    size = size or ImageSize(width=1024, height=1024)
    width, height = PRESETS[size] if isinstance(size, str) else (size.width, size.height)
    return Job(parsed.prompt, width, height, parsed.num_images, parsed.seed, parsed.sync_mode, parsed.output_format)


def _load(url: str) -> tuple[int, int] | Detail:
    """The input image's size; fal downloads URLs, the fake (offline) takes data URIs only."""
    if not url.startswith("data:"):
        return detail("image_url", "Failed to download the file.", "file_download_error")
    header, _, payload = url.partition(",")
    try:
        if not header.endswith(";base64"):
            raise ValueError("not base64")
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as img:
            return img.size
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return detail("image_url", "Failed to load the image. Please ensure the image is valid.", "image_load_error")


def render(width: int, height: int, output_format: str, seed: int, index: int) -> bytes:
    """A real image of the asked size; its colour follows the seed so outputs differ."""
    colour = ((seed * 37 + index * 101) % 256, (seed * 59) % 256, (index * 83 + 40) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG" if output_format == "png" else "JPEG")
    return buf.getvalue()
