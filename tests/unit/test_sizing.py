"""Size arithmetic: what a caller may ask, and which native bucket the model makes for it."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gateway.catalog import SizeRange
from gateway.images.convert import render
from gateway.images.sizing import SizeError, nearest_bucket, parse_ratio, parse_wxh, plan_size, size_for_aspect

BUCKETS = ((1024, 1024), (768, 1360), (1360, 768), (880, 1168), (1168, 880), (1248, 832), (832, 1248))
RANGE = SizeRange(64, 2048, 2048 * 2048)


def test_wxh_is_read_leniently_and_nothing_else_is() -> None:
    assert parse_wxh("1024x768") == (1024, 768)
    assert parse_wxh(" 1024 X 768 ") == (1024, 768)
    assert parse_wxh("1024*768") is None and parse_wxh("x768") is None and parse_wxh("-1x5") is None


def test_ratios_are_reduced_and_zero_is_no_ratio() -> None:
    assert parse_ratio("1920:1080") == (16, 9)
    assert parse_ratio("16:0") is None and parse_ratio("a:b") is None


def test_an_aspect_gets_the_largest_exact_size_within_the_area() -> None:
    w, h = size_for_aspect(16, 9, 1024 * 1024)
    assert w * 9 == h * 16 and w * h <= 1024 * 1024
    assert (w + 16) * (h + 9) > 1024 * 1024  # one more step of the ratio would pass the area


def test_nearest_bucket_by_aspect_on_a_log_scale() -> None:
    assert nearest_bucket(512, 512, BUCKETS) == (1024, 1024)
    assert nearest_bucket(1792, 1024, BUCKETS) == (1360, 768)
    assert nearest_bucket(1024, 1792, BUCKETS) == (768, 1360)
    assert nearest_bucket(4000, 100, BUCKETS) == (1360, 768)  # the widest there is


@pytest.mark.parametrize("size", ["2049x1024", "63x64", "2048x2049", "bogus", "0:1", "1x"])
def test_outside_the_range_or_unreadable_is_a_size_error(size: str) -> None:
    with pytest.raises(SizeError):
        plan_size(size, default=(1024, 1024), buckets=BUCKETS, allowed=RANGE)


def test_the_area_limit_is_its_own_rule() -> None:
    with pytest.raises(SizeError, match="pixels in all"):
        plan_size("2048x2048", default=(1024, 1024), buckets=BUCKETS, allowed=SizeRange(64, 2048, 4_000_000))


def _png(w: int, h: int, left: str, right: str) -> bytes:
    """An image whose left half and right half differ in colour, to see the crop keep the middle."""
    img = Image.new("RGB", (w, h), left)
    img.paste(Image.new("RGB", (w // 2, h), right), (w // 2, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("w", "h"), [(512, 512), (1792, 1024), (1024, 1792), (256, 256), (1360, 765), (2048, 2048)])
def test_render_answers_exactly_the_asked_size(w: int, h: int) -> None:
    out = Image.open(io.BytesIO(render(_png(1360, 768, "red", "blue"), w, h)))
    assert out.format == "PNG" and out.size == (w, h)


def test_render_crops_around_the_centre() -> None:
    # 1360x768 into a square: the sides are cut, the middle stays, so red stays left and blue right.
    out = Image.open(io.BytesIO(render(_png(1360, 768, "red", "blue"), 512, 512))).convert("RGB")
    assert out.getpixel((10, 256)) == (255, 0, 0) and out.getpixel((500, 256)) == (0, 0, 255)


@pytest.mark.parametrize(("fmt", "pil"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_render_encodes_the_asked_format(fmt: str, pil: str) -> None:
    out = Image.open(io.BytesIO(render(_png(1024, 1024, "red", "blue"), 1024, 1024, fmt)))  # type: ignore[arg-type]
    assert out.format == pil and out.size == (1024, 1024)


def test_compression_is_the_encoders_quality() -> None:
    noisy = Image.effect_noise((512, 512), 60).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    small, large = (len(render(buf.getvalue(), 512, 512, "jpeg", q)) for q in (10, 95))
    assert small < large / 2
