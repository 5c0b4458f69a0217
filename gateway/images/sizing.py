"""What size a caller asked for, and what size the model makes for it.

HiDream generates at ~1 megapixel whatever it is asked (its pipeline rescales any width x height
to that area), and is trained on a few buckets. So the gateway asks the model for the native
bucket nearest in aspect ratio and then resizes and center-crops that image to exactly the size
the caller asked (gateway/images/convert.py). This module is pure arithmetic: no pixels.

A caller's `size` may be `auto` (the model's default), `WxH` (any size in the model's range,
read leniently: `1024X1024`, surrounding spaces), or an aspect ratio `W:H` (answered at about the
model's native area, with exactly that ratio).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.catalog import SizeRange

_WXH = re.compile(r"\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*")
_RATIO = re.compile(r"\s*(\d{1,6})\s*:\s*(\d{1,6})\s*")


class SizeError(ValueError):
    """A size the caller sent that cannot be read or is outside the model's range; the message
    is for the caller."""


@dataclass(frozen=True, slots=True)
class SizePlan:
    """The size the caller gets, and the native size the model makes for it."""

    width: int
    height: int
    gen_width: int
    gen_height: int

    @property
    def converted(self) -> bool:
        return (self.width, self.height) != (self.gen_width, self.gen_height)


def parse_wxh(text: str) -> tuple[int, int] | None:
    """'1024x768' (or '1024X768', ' 1024 x 768 ') -> (1024, 768); None when it is not WxH."""
    m = _WXH.fullmatch(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_ratio(text: str) -> tuple[int, int] | None:
    """'16:9' -> (16, 9), reduced ('1920:1080' -> (16, 9)); None when it is not W:H."""
    m = _RATIO.fullmatch(text)
    if not m:
        return None
    w, h = int(m.group(1)), int(m.group(2))
    if w == 0 or h == 0:
        return None
    g = math.gcd(w, h)
    return w // g, h // g


def size_for_aspect(aspect_w: int, aspect_h: int, area: int) -> tuple[int, int]:
    """The largest size of exactly aspect_w:aspect_h with at most `area` pixels (at least one
    step of the ratio)."""
    g = math.gcd(aspect_w, aspect_h)
    rw, rh = aspect_w // g, aspect_h // g
    k = max(1, math.isqrt(area // (rw * rh)))
    return rw * k, rh * k


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The native size nearest in aspect ratio (on a log scale, so 2:1 and 1:2 are equally far
    from 1:1); an exact size match wins, and between equal aspects the larger area."""
    if (width, height) in buckets:
        return width, height
    want = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - want), -b[0] * b[1]))


def plan_size(
    size: str,
    *,
    default: tuple[int, int],
    buckets: Sequence[tuple[int, int]],
    allowed: SizeRange,
) -> SizePlan:
    """The caller's `size` as a plan; SizeError (with a message for the caller) when it is not
    a size or lies outside the model's range."""
    text = size.strip().lower()
    if text == "auto":
        width, height = default
    elif (wxh := parse_wxh(text)) is not None:
        width, height = wxh
    elif (ratio := parse_ratio(text)) is not None:
        width, height = size_for_aspect(*ratio, area=native_area(buckets))
    else:
        raise SizeError("use auto, WIDTHxHEIGHT (e.g. 1024x768) or an aspect ratio W:H (e.g. 16:9)")
    if (problem := allowed.problem(width, height)) is not None:
        raise SizeError(problem)
    return from_size(width, height, buckets)


def from_size(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> SizePlan:
    gen_width, gen_height = nearest_bucket(width, height, buckets)
    return SizePlan(width, height, gen_width, gen_height)


def native_area(buckets: Sequence[tuple[int, int]]) -> int:
    """The area the model is trained at: its largest bucket's."""
    return max(w * h for w, h in buckets)
