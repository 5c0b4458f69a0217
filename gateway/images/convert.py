"""Pixels: the model's native image made into exactly what the caller asked for.

Resizing covers the asked size with Pillow's Lanczos filter and center-crops what sticks out,
so the answer has exactly the asked width and height and the model's framing is kept in the
middle; then the image is encoded in the asked format. CPU-bound: callers run it in a thread.
"""

from __future__ import annotations

import io

from PIL import Image

from providers.base import ImageBytes, OutputFormat

# OpenAI's default output_compression is 100 (the least compression).
DEFAULT_QUALITY = 100


def render(
    data: ImageBytes,
    width: int,
    height: int,
    fmt: OutputFormat = "png",
    compression: int | None = None,
    *,
    fast: bool = False,
) -> bytes:
    """`data` (any image Pillow reads) at exactly width x height, encoded as `fmt`; `compression`
    (0-100, jpeg and webp) is the encoder's quality, as OpenAI's output_compression. `fast`: the
    encoder's quickest effort (PNG zlib level 1, WebP method 0) for a preview that is soon
    replaced; the same pixels, larger bytes."""
    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGBA" if _has_alpha(src) and fmt != "jpeg" else "RGB")
    if img.size != (width, height):
        img = _cover(img, width, height)
    out = io.BytesIO()
    quality = DEFAULT_QUALITY if compression is None else compression
    if fmt == "png":
        img.save(out, "PNG", compress_level=1 if fast else 6)
    elif fmt == "jpeg":
        img.save(out, "JPEG", quality=quality)
    else:
        img.save(out, "WEBP", quality=quality, method=0 if fast else 4)
    return out.getvalue()


def _cover(img: Image.Image, width: int, height: int) -> Image.Image:
    scale = max(width / img.width, height / img.height)
    cover = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
    if cover != img.size:
        img = img.resize(cover, Image.Resampling.LANCZOS)
    left, top = (img.width - width) // 2, (img.height - height) // 2
    if img.size != (width, height):
        img = img.crop((left, top, left + width, top + height))
    return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
