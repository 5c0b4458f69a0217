"""Code written for OpenAI runs unchanged: every size an OpenAI caller sends comes back at
exactly that size, from fal (the fake, following fal's protocol) and from the tiny CPU worker
(the real worker and diffusers pipeline), through the real `openai` package."""

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
    before = stack.client().with_options().get("/usage", cast_to=object)
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().images.generate(model="hidream-i1-full", prompt="x", size=size)  # type: ignore[arg-type]
    err = info.value.body
    assert isinstance(err, dict) and err["param"] == "size" and message in err["message"]
    assert stack.client().with_options().get("/usage", cast_to=object) == before


def test_an_edit_without_a_size_keeps_the_inputs_aspect(stack: Stack) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1360, 768), (10, 120, 200)).save(buf, "PNG")
    raw = stack.client().images.with_raw_response.edit(
        model="hidream-i1-full", image=("in.png", buf.getvalue(), "image/png"), prompt="make it red",
        response_format="b64_json",
    )  # fmt: skip
    data = raw.parse().data
    assert data is not None and data[0].b64_json is not None
    assert Image.open(io.BytesIO(base64.b64decode(data[0].b64_json))).size == (1360, 768)
    assert raw.headers["x-gateway-generated-size"] == "1360x768"
