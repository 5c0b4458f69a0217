"""Pixels: the model's native image made into exactly what the caller asked for.

Resizing covers the asked size with Pillow's Lanczos filter and center-crops what sticks out,
so the answer has exactly the asked width and height and the model's framing is kept in the
middle. CPU-bound: callers run it in a thread.
"""

from __future__ import annotations

import io

from PIL import Image


def fit(data: bytes, width: int, height: int) -> bytes:
    """`data` (any image Pillow reads) resized and center-cropped to width x height, as PNG."""
    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGBA" if _has_alpha(src) else "RGB")
    scale = max(width / img.width, height / img.height)
    cover = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
    if cover != img.size:
        img = img.resize(cover, Image.Resampling.LANCZOS)
    left, top = (img.width - width) // 2, (img.height - height) // 2
    if img.size != (width, height):
        img = img.crop((left, top, left + width, top + height))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
