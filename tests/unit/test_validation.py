from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from gateway.catalog import Catalog, load_catalog
from gateway.errors import GatewayError, InvalidRequestError, ModelNotFoundError
from gateway.images.validation import Params, check_edit_inputs, decode_fully, probe_upload, validate_generation


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(Path(__file__).resolve().parents[2] / "pricing.yaml")


def png(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "blue").save(buf, "PNG")
    return buf.getvalue()


def noise_png(w: int, h: int) -> bytes:
    """A PNG of random pixels: its pixel data does not compress, so cutting the file in half
    leaves the header whole and the pixels short."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (w, h), random.Random(7).randbytes(w * h * 3)).save(buf, "PNG")
    return buf.getvalue()


def _err(catalog: Catalog, body: dict[str, object], *, form: bool = False) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        validate_generation(catalog, Params(body, form=form))
    return info.value


def test_defaults_come_from_the_model(catalog: Catalog) -> None:
    v = validate_generation(catalog, Params({"model": "hidream-i1-dev", "prompt": "a cat"}, form=False))
    assert (v.n, v.width, v.height, v.response_format) == (1, 1024, 1024, "url")
    assert v.num_inference_steps == 28 and v.guidance_scale is None
    full = validate_generation(catalog, Params({"model": "hidream-i1-full", "prompt": "a cat"}, form=False))
    assert full.num_inference_steps == 50 and full.guidance_scale == 5.0


def test_json_null_means_absent(catalog: Catalog) -> None:
    v = validate_generation(catalog, Params({"prompt": "x", "n": None, "size": None, "seed": None}, form=False))
    assert v.n == 1 and v.size == "1024x1024" and v.seed is None


def test_form_strings_are_coerced(catalog: Catalog) -> None:
    body = {"prompt": "x", "n": "2", "seed": "7", "guidance_scale": "3.5", "num_inference_steps": "20", "size": ""}
    v = validate_generation(catalog, Params(body, form=True))
    assert (v.n, v.seed, v.guidance_scale, v.num_inference_steps, v.size) == (2, 7, 3.5, 20, "1024x1024")


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({}, "prompt", 400),
        ({"prompt": "   "}, "prompt", 400),
        ({"prompt": "x" * 4001}, "prompt", 400),
        ({"prompt": 5}, "prompt", 400),
        ({"prompt": "x", "model": "dall-e-9"}, "model", 404),
        ({"prompt": "x", "n": 0}, "n", 400),
        ({"prompt": "x", "n": 11}, "n", 400),
        ({"prompt": "x", "n": "2"}, "n", 400),  # a JSON string is not a JSON number
        ({"prompt": "x", "n": True}, "n", 400),
        ({"prompt": "x", "n": 1.5}, "n", 400),
        ({"prompt": "x", "size": "big"}, "size", 400),
        ({"prompt": "x", "size": "4096x4096"}, "size", 400),
        ({"prompt": "x", "size": "2049x512"}, "size", 400),
        ({"prompt": "x", "size": "32x32"}, "size", 400),
        ({"prompt": "x", "size": "16:0"}, "size", 400),
        ({"prompt": "x", "size": "16/9"}, "size", 400),
        ({"prompt": "x", "size": 1024}, "size", 400),
        ({"prompt": "x", "response_format": "png"}, "response_format", 400),
        ({"prompt": "x", "num_inference_steps": 51}, "num_inference_steps", 400),
        ({"prompt": "x", "guidance_scale": 20.5}, "guidance_scale", 400),
        ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale", 400),
        ({"prompt": "x", "model": "hidream-i1-fast", "guidance_scale": 2.0}, "guidance_scale", 400),
        ({"prompt": "x", "seed": -2}, "seed", 400),
        ({"prompt": "x", "quality": "bogus"}, "quality", 400),
        ({"prompt": "x", "style": "cartoon"}, "style", 400),
        ({"prompt": "x", "background": 1}, "background", 400),
        ({"prompt": "x", "output_format": "gif"}, "output_format", 400),
        ({"prompt": "x", "output_compression": 101}, "output_compression", 400),
        ({"prompt": "x", "output_compression": -1}, "output_compression", 400),
        ({"prompt": "x", "stream": "yes"}, "stream", 400),
        ({"prompt": "x", "stream": "true"}, "stream", 400),  # a JSON body's boolean is a boolean
        ({"prompt": "x", "stream": True, "response_format": "url"}, "response_format", 400),
        ({"prompt": "x", "partial_images": 4}, "partial_images", 400),
        ({"prompt": "x", "stream": True, "partial_images": -1}, "partial_images", 400),
        ({"prompt": "x", "width": 512}, "width", 400),
        ({"prompt": "x", "seed": 2**63}, "seed", 400),
        ({"prompt": "x", "strength": 0.5}, "strength", 400),
        ({"prompt": "x", "user": "u" * 300}, "user", 400),
    ],
)
def test_bad_values_name_their_parameter(catalog: Catalog, body: dict[str, object], param: str, status: int) -> None:
    err = _err(catalog, body)
    assert err.param == param and err.status_code == status
    assert err.body()["error"]["param"] == param


def test_out_of_range_is_rejected_never_clamped(catalog: Catalog) -> None:
    err = _err(catalog, {"prompt": "x", "num_inference_steps": 500})
    assert "between 1 and 50" in err.message and "500" in err.message


def test_size_error_says_what_is_accepted(catalog: Catalog) -> None:
    err = _err(catalog, {"prompt": "x", "size": "sixteen by nine"})
    assert err.code == "invalid_size" and "WIDTHxHEIGHT" in err.message and "16:9" in err.message
    err = _err(catalog, {"prompt": "x", "size": "4096x4096"})
    assert err.code == "invalid_size" and "2048" in err.message


@pytest.mark.parametrize(
    ("size", "asked", "generated"),
    [
        ("256x256", "256x256", "1024x1024"),
        ("512x512", "512x512", "1024x1024"),
        ("1024x1024", "1024x1024", "1024x1024"),
        ("1792x1024", "1792x1024", "1360x768"),
        ("1024x1792", "1024x1792", "768x1360"),
        ("1536x1024", "1536x1024", "1248x832"),
        ("1024x1536", "1024x1536", "832x1248"),
        ("768x1024", "768x1024", "880x1168"),
        ("auto", "1024x1024", "1024x1024"),
        (" 1024X1024 ", "1024x1024", "1024x1024"),
        ("16:9", "1360x765", "1360x768"),
        ("3:2", "1254x836", "1248x832"),
        ("1:1", "1024x1024", "1024x1024"),
        ("1360x768", "1360x768", "1360x768"),
    ],
)
def test_every_openai_size_is_answered_from_the_nearest_native_bucket(
    catalog: Catalog, size: str, asked: str, generated: str
) -> None:
    v = validate_generation(catalog, Params({"prompt": "x", "size": size}, form=False))
    assert (v.size, v.generated_size) == (asked, generated)
    assert v.converted == (asked != generated)


def test_an_edit_without_a_size_keeps_the_inputs_aspect(catalog: Catalog) -> None:
    wide = probe_upload(png(1360, 768), param="image", max_pixels=10_000_000)
    v = validate_generation(catalog, Params({"prompt": "x"}, form=True), images=(wide,))
    assert (v.size, v.generated_size) == ("1360x768", "1360x768")
    two_to_one = probe_upload(png(200, 100), param="image", max_pixels=100_000)
    v = validate_generation(catalog, Params({"prompt": "x"}, form=True), images=(two_to_one,))
    assert v.width == 2 * v.height and v.generated_size == "1360x768"
    v = validate_generation(catalog, Params({"prompt": "x", "size": "512x512"}, form=True), images=(wide,))
    assert (v.size, v.generated_size) == ("512x512", "1024x1024")


def test_form_garbage_number_is_named(catalog: Catalog) -> None:
    err = _err(catalog, {"prompt": "x", "n": "two"}, form=True)
    assert err.param == "n"


def test_edit_checks_count_mask_and_model(catalog: Catalog) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_edit_inputs(catalog, Params({"model": "hidream-i1-full"}, form=True), 2, has_mask=False)
    assert info.value.param == "image" and "at most 1" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        check_edit_inputs(catalog, Params({"model": "hidream-i1-full"}, form=True), 1, has_mask=True)
    assert info.value.param == "mask"
    with pytest.raises(InvalidRequestError) as info:
        check_edit_inputs(catalog, Params({"model": "hidream-i1-dev"}, form=True), 1, has_mask=False)
    assert info.value.param == "model"
    with pytest.raises(ModelNotFoundError):
        check_edit_inputs(catalog, Params({"model": "nope"}, form=True), 1, has_mask=False)


def test_edit_strength_defaults_and_range(catalog: Catalog) -> None:
    img = probe_upload(png(), param="image", max_pixels=10_000)
    v = validate_generation(catalog, Params({"prompt": "x"}, form=True), images=(img,))
    assert v.strength == 0.75
    with pytest.raises(InvalidRequestError) as info:
        validate_generation(catalog, Params({"prompt": "x", "strength": "1.5"}, form=True), images=(img,))
    assert info.value.param == "strength"


def test_probe_upload_sniffs_bytes_not_names() -> None:
    img = probe_upload(png(64, 48), param="image", max_pixels=10_000)
    assert (img.content_type, img.width, img.height) == ("image/png", 64, 48)
    with pytest.raises(InvalidRequestError) as info:
        probe_upload(b"GIF89a not allowed", param="image", max_pixels=10_000)
    assert info.value.code == "invalid_image_format" and info.value.param == "image"


def test_truncated_image_passes_the_header_probe_and_fails_the_full_decode() -> None:
    data = noise_png(200, 200)
    img = probe_upload(data[: len(data) // 2], param="mask", max_pixels=100_000)
    assert (img.width, img.height) == (200, 200)
    with pytest.raises(InvalidRequestError) as info:
        decode_fully(img, "mask")
    assert (info.value.code, info.value.param) == ("invalid_image", "mask")
    decode_fully(probe_upload(data, param="image", max_pixels=100_000), "image")


def test_unreadable_header_is_refused_by_the_probe() -> None:
    with pytest.raises(InvalidRequestError) as info:
        probe_upload(png()[:20], param="image", max_pixels=100_000)
    assert (info.value.code, info.value.param) == ("invalid_image", "image")


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (the pixels are never there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(InvalidRequestError) as info:
        probe_upload(bomb_png(100_000, 100_000), param="image", max_pixels=40_000_000)
    assert info.value.code == "image_too_large" and info.value.param == "image"


def test_image_over_our_pixel_limit_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidRequestError) as info:
        probe_upload(bomb_png(8000, 6000), param="mask", max_pixels=40_000_000)
    assert info.value.code == "image_too_large" and "8000x6000" in info.value.message
    assert info.value.param == "mask"


def test_openai_parameters_hidream_cannot_honour_are_accepted_and_named(catalog: Catalog) -> None:
    body = {
        "prompt": "x",
        "quality": "hd",
        "style": "natural",
        "background": "transparent",
        "moderation": "low",
        "user": "u-1",
        "stream": False,
        "partial_images": 2,
        "output_format": "png",
        "output_compression": 50,
    }
    v = validate_generation(catalog, Params(body, form=False))
    assert v.ignored == ("background", "moderation", "output_compression", "partial_images", "quality", "style", "user")
    assert v.extra == {} and v.output_compression is None
    nulls = validate_generation(catalog, Params({"prompt": "x", "quality": None, "style": None}, form=False))
    assert nulls.ignored == ()


def test_unknown_parameters_pass_through_and_owned_ones_are_refused(catalog: Catalog) -> None:
    body = {"prompt": "x", "loras": [{"path": "a", "scale": 1}], "enable_safety_checker": False}
    v = validate_generation(catalog, Params(body, form=False), owned=frozenset({"sync_mode"}))
    assert v.extra == {"loras": [{"path": "a", "scale": 1}], "enable_safety_checker": False}
    err = _err_owned(catalog, {"prompt": "x", "num_images": 3}, frozenset({"num_images"}))
    assert err.param == "num_images" and err.code == "unsupported_parameter"


def _err_owned(catalog: Catalog, body: dict[str, object], owned: frozenset[str]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        validate_generation(catalog, Params(body, form=False), owned=owned)
    return info.value


def test_output_format_and_compression(catalog: Catalog) -> None:
    v = validate_generation(catalog, Params({"prompt": "x", "output_format": "webp", "output_compression": 40},
                                            form=False))  # fmt: skip
    assert (v.output_format, v.output_compression, v.needs_bytes) == ("webp", 40, True)
    form = validate_generation(catalog, Params({"prompt": "x", "output_format": "JPG", "stream": "false"}, form=True))
    assert (form.output_format, form.ignored, form.stream) == ("jpeg", (), False)
    assert not validate_generation(catalog, Params({"prompt": "x"}, form=False)).needs_bytes


def test_stream_answers_b64_json_and_names_partial_images_ignored_only_without_stream(catalog: Catalog) -> None:
    v = validate_generation(catalog, Params({"prompt": "x", "stream": True}, form=False))
    assert (v.stream, v.response_format, v.partial_images, v.ignored) == (True, "b64_json", 0, ())
    v = validate_generation(catalog, Params({"prompt": "x", "stream": True, "partial_images": 0}, form=False))
    assert v.ignored == ()  # none asked, none sent: honoured
    v = validate_generation(catalog, Params({"prompt": "x", "stream": "true", "partial_images": "3"}, form=True))
    # Honoured where the route makes previews; the dispatcher names it for a route that makes none.
    assert (v.stream, v.partial_images, v.ignored) == (True, 3, ())
    v = validate_generation(catalog, Params({"prompt": "x", "stream": False, "partial_images": 2}, form=False))
    assert (v.stream, v.response_format, v.partial_images, v.ignored) == (False, "url", 0, ("partial_images",))


def test_seed_minus_one_means_random(catalog: Catalog) -> None:
    assert validate_generation(catalog, Params({"prompt": "x", "seed": -1}, form=False)).seed is None
