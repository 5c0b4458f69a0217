"""Code written for OpenAI runs unchanged, through the real `openai` package, on both routes: fal
(the fake, following fal's protocol) and the tiny CPU worker (the real worker and diffusers
pipeline). Every size comes back at exactly that size, every output format in that format, the
OpenAI parameters HiDream cannot honour are named, and unknown ones pass through."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image

from tests.integration.gateway_stack import Stack, running_stack
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("unified")
    with running_stack(redis_server, tmp, tiny_worker=True, team={"allow_provider_pinning": True}) as made:
        yield made


# size asked -> (size answered, native size the model made)
OPENAI_SIZES = {
    "256x256": ((256, 256), "1024x1024"),
    "512x512": ((512, 512), "1024x1024"),
    "1024x1024": ((1024, 1024), "1024x1024"),
    "1792x1024": ((1792, 1024), "1360x768"),
    "1024x1792": ((1024, 1792), "768x1360"),
    "1536x1024": ((1536, 1024), "1248x832"),
    "1024x1536": ((1024, 1536), "832x1248"),
    "auto": ((1024, 1024), "1024x1024"),
    "16:9": ((1360, 765), "1360x768"),
}


def _spent(stack: Stack) -> tuple[object, object]:
    """What the team has been charged, and for how many images, once none of its requests is in flight."""
    stack.settled()
    usage = stack.client().get("/usage", cast_to=dict)
    return usage["spent_usd"], usage["images"]


def _generate(stack: Stack, provider: str, size: str, response_format: str) -> tuple[httpx.Headers, list[bytes]]:
    raw = stack.client().images.with_raw_response.generate(
        model="hidream-i1-full",
        prompt="a lighthouse at dusk",
        size=size,  # type: ignore[arg-type]  # the SDK's Literal lists OpenAI's own sizes only
        response_format=response_format,  # type: ignore[arg-type]
        extra_headers={"x-gateway-provider": provider},
        extra_body={"num_inference_steps": 2, "seed": 7},
    )
    data = raw.parse().data
    assert data is not None
    images = []
    for item in data:
        if response_format == "b64_json":
            assert item.b64_json is not None and item.url is None
            images.append(base64.b64decode(item.b64_json))
        else:
            assert item.url is not None and item.b64_json is None
            images.append(httpx.get(item.url, timeout=10).content)
    return raw.headers, images


@pytest.mark.parametrize("provider", ["fal", "local_gpu"])
@pytest.mark.parametrize("size", list(OPENAI_SIZES))
def test_every_openai_size_comes_back_exactly_as_asked(stack: Stack, provider: str, size: str) -> None:
    expected, generated = OPENAI_SIZES[size]
    fmt = "b64_json" if size in ("512x512", "1792x1024", "16:9") else "url"
    headers, images = _generate(stack, provider, size, fmt)
    assert headers["x-gateway-provider"] == provider
    assert headers["x-gateway-generated-size"] == generated
    assert headers["x-gateway-charged-usd"] == "0.050000"  # per image, whatever the size
    (image,) = images
    decoded = Image.open(io.BytesIO(image))
    assert decoded.format == "PNG" and decoded.size == expected


@pytest.mark.parametrize(
    ("size", "message"), [("4096x4096", "2048"), ("32x32", "64"), ("16:0", "W:H"), ("wide", "WIDTHxHEIGHT")]
)
def test_a_size_outside_the_range_is_named_and_costs_nothing(stack: Stack, size: str, message: str) -> None:
    before = _spent(stack)
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().images.generate(model="hidream-i1-full", prompt="x", size=size)  # type: ignore[arg-type]
    err = info.value.body
    assert isinstance(err, dict) and err["param"] == "size" and message in err["message"]
    assert _spent(stack) == before


def test_an_edit_without_a_size_keeps_the_inputs_aspect(stack: Stack) -> None:
    raw = stack.client().images.with_raw_response.edit(
        model="hidream-i1-full", image=("in.png", _png_bytes(1360, 768), "image/png"), prompt="make it red",
        response_format="b64_json",
    )  # fmt: skip
    data = raw.parse().data
    assert data is not None and data[0].b64_json is not None
    assert Image.open(io.BytesIO(base64.b64decode(data[0].b64_json))).size == (1360, 768)
    assert raw.headers["x-gateway-generated-size"] == "1360x768"


@pytest.mark.parametrize("provider", ["fal", "local_gpu"])
@pytest.mark.parametrize(
    ("fmt", "compression", "pil", "mime"),
    [("png", None, "PNG", "image/png"), ("jpeg", None, "JPEG", "image/jpeg"), ("webp", 60, "WEBP", "image/webp"),
     ("jpeg", 30, "JPEG", "image/jpeg")],
)  # fmt: skip
def test_output_format_is_native_or_converted_and_echoed(
    stack: Stack, provider: str, fmt: str, compression: int | None, pil: str, mime: str
) -> None:
    raw = stack.client().images.with_raw_response.generate(
        model="hidream-i1-full", prompt="a harbour", size="512x512", output_format=fmt,  # type: ignore[arg-type]
        output_compression=compression, extra_headers={"x-gateway-provider": provider},
        extra_body={"num_inference_steps": 2},
    )  # fmt: skip
    result = raw.parse()
    assert (result.output_format, result.size, result.quality, result.background) == (fmt, "512x512", "high", "opaque")
    assert result.data is not None and result.data[0].url is not None
    download = httpx.get(result.data[0].url, timeout=10)
    assert download.headers["content-type"] == mime
    image = Image.open(io.BytesIO(download.content))
    assert image.format == pil and image.size == (512, 512)


def test_openai_parameters_hidream_cannot_honour_are_named_in_a_header(stack: Stack) -> None:
    raw = stack.client().images.with_raw_response.generate(
        model="hidream-i1-full", prompt="a harbour", quality="hd", style="natural", user="end-user-7",
        extra_body={"background": "transparent", "moderation": "low", "stream": False, "seed": -1},
        extra_headers={"x-gateway-provider": "fal"},
    )  # fmt: skip
    assert raw.headers["x-gateway-ignored-params"] == "background, moderation, quality, style, user"
    assert raw.parse().data is not None


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"quality": "bogus"}, "quality"),
        ({"style": "cartoon"}, "style"),
        ({"output_format": "gif"}, "output_format"),
        ({"output_compression": 101}, "output_compression"),
        ({"extra_body": {"partial_images": 4}}, "partial_images"),
        ({"extra_body": {"sync_mode": True}}, "sync_mode"),
        ({"extra_body": {"num_images": 3}}, "num_images"),
        # a name a header could not carry (x-gateway-ignored-params): refused before any work
        ({"extra_body": {"a\r\nx-injected: 1": 1}}, "a\r\nx-injected: 1"),
        ({"extra_body": {"\u53c3\u6578": 1}}, "\u53c3\u6578"),
        ({"extra_body": {"a,b": 1}}, "a,b"),
    ],
)
def test_bad_parameters_are_named_and_cost_nothing(stack: Stack, kwargs: dict[str, object], param: str) -> None:
    before = _spent(stack)
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().images.generate(model="hidream-i1-full", prompt="x", **kwargs)  # type: ignore[call-overload]
    assert isinstance(info.value.body, dict) and info.value.body["param"] == param
    assert _spent(stack) == before


def test_unknown_parameters_reach_fal_and_a_gpu_worker_names_them_ignored(stack: Stack) -> None:
    extra = {"loras": [{"path": "https://example.com/style.safetensors", "scale": 0.5}], "enable_safety_checker": False}
    raw = stack.client().images.with_raw_response.generate(
        model="hidream-i1-full", prompt="a harbour", extra_body=extra, extra_headers={"x-gateway-provider": "fal"}
    )
    assert "x-gateway-ignored-params" not in raw.headers
    submitted = httpx.get(stack.fal + "/_fake/last-submit").json()
    assert submitted["loras"] == extra["loras"] and submitted["enable_safety_checker"] is False
    raw = stack.client().images.with_raw_response.generate(
        model="hidream-i1-full", prompt="a harbour", extra_body={**extra, "num_inference_steps": 2},
        extra_headers={"x-gateway-provider": "local_gpu"},
    )  # fmt: skip
    assert raw.headers["x-gateway-ignored-params"] == "enable_safety_checker, loras"


def test_a_passed_parameter_fal_refuses_is_a_400_naming_it(stack: Stack) -> None:
    before = _spent(stack)
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().images.generate(
            model="hidream-i1-full", prompt="x", extra_body={"loras": "not a list"},
            extra_headers={"x-gateway-provider": "fal"},
        )  # fmt: skip
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "loras"
    assert _spent(stack) == before


def test_code_written_for_openai_runs_with_only_base_url_changed(stack: Stack) -> None:
    """dall-e-3 and gpt-image-1 are aliases; a request without a model uses the default one;
    Lumenfall's /openai/v1 base URL works; variations point to edits."""
    raw = stack.client().images.with_raw_response.generate(model="dall-e-3", prompt="a fox", size="1024x1792")
    assert raw.parse().data is not None and raw.headers["x-gateway-generated-size"] == "768x1360"
    assert raw.headers["x-gateway-charged-usd"] == "0.050000"  # billed as the model it maps to
    with openai.OpenAI(base_url=stack.base + "/openai/v1", api_key=stack.key, max_retries=0) as lumenfall:
        result = lumenfall.images.generate(prompt="a fox", extra_body={"num_inference_steps": 2})  # no model
        assert result.data is not None and result.size == "1024x1024"
        # The SDK marks create_variation deprecated; code that still calls it gets the way to edits.
        with pytest.warns(DeprecationWarning), pytest.raises(openai.NotFoundError) as info:
            lumenfall.images.create_variation(image=("in.png", _png_bytes(64, 64), "image/png"))
        assert isinstance(info.value.body, dict) and "/v1/images/edits" in info.value.body["message"]


def test_a_provider_prefixed_model_pins_the_route(stack: Stack) -> None:
    for provider in ("fal", "local_gpu"):
        raw = stack.client().images.with_raw_response.generate(
            model=f"{provider}/hidream-i1-full", prompt="a fox", extra_body={"num_inference_steps": 2}
        )
        assert raw.headers["x-gateway-provider"] == provider and raw.headers["x-gateway-route-reason"] == "pinned"
    ids = [m.id for m in stack.client().models.list()]
    assert "fal/hidream-i1-full" in ids and "dall-e-3" in ids


def _png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_a_dry_run_through_the_sdk_quotes_and_generates_nothing(stack: Stack) -> None:
    submits = httpx.get(stack.fal + "/_fake/stats").json()["submits"]
    before = _spent(stack)
    raw = stack.client().images.with_raw_response.generate(
        model="fal/hidream-i1-full", prompt="a fox", n=2, size="512x512", extra_query={"dryRun": "true"}
    )
    quote = raw.http_response.json()
    assert (quote["estimated"], quote["provider"], quote["total_cost_micros"]) == (True, "fal", 100_000)
    assert quote["route"]["reason"] == "pinned" and quote["admission"]["admitted"] is True
    assert httpx.get(stack.fal + "/_fake/stats").json()["submits"] == submits
    assert _spent(stack) == before


@pytest.mark.parametrize("provider", ["fal", "local_gpu"])
def test_ten_images_on_every_route(stack: Stack, provider: str) -> None:
    raw = stack.client().images.with_raw_response.generate(
        model="hidream-i1-full", prompt="ten foxes", n=10, size="256x256", response_format="b64_json",
        extra_headers={"x-gateway-provider": provider}, extra_body={"num_inference_steps": 2},
    )  # fmt: skip
    data = raw.parse().data
    assert data is not None and len(data) == 10
    assert {Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))).size for d in data} == {(256, 256)}
    assert raw.headers["x-gateway-charged-usd"] == "0.500000"
