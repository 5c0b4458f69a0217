"""The benchmark's fake upstream speaks the protocols our real adapters speak: the local GPU adapter
and the fal adapter each get a valid image of the requested size from it (served in-process)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from PIL import Image

from bench.perf.pngs import make_png
from bench.perf.upstream import UpstreamConfig, serve
from providers.base import ImageRequest, RouteTarget
from providers.fal.adapter import FalProvider
from providers.local_gpu.adapter import LocalGpuProvider


def request(width: int = 1024, height: int = 1024, response_format: str = "b64_json") -> ImageRequest:
    return ImageRequest(
        request_id="req-1", model="hidream-i1-full", prompt="a red fox in the snow", n=1, width=width,
        height=height, response_format=response_format, num_inference_steps=50, guidance_scale=5.0,  # type: ignore[arg-type]
        timeout_s=10.0,
    )  # fmt: skip


@asynccontextmanager
async def serving(config: UpstreamConfig) -> AsyncIterator[str]:
    server, upstream = await serve(config)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"
        upstream.close_connections()


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async with serving(UpstreamConfig(delay_s=0.01, fal_delay_s=0.05, image_bytes=50_000)) as url:
        yield url


async def test_local_gpu_adapter_gets_an_image_of_the_requested_size(upstream_url: str) -> None:
    provider = LocalGpuProvider([upstream_url])
    target = RouteTarget("local_gpu", "hidream-i1-full", "hidream-i1-full", None, 4)
    try:
        assert (await provider.probe(target)).healthy
        result = await provider.generate(target, request(768, 1360))
    finally:
        await provider.aclose()
    (image,) = result.images
    assert (image.width, image.height, image.content_type) == (768, 1360, "image/png")
    assert image.data is not None and len(image.data) >= 50_000
    assert Image.open(io.BytesIO(image.data)).size == (768, 1360)


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_fal_adapter_gets_an_image_through_the_queue(upstream_url: str, response_format: str) -> None:
    provider = FalProvider("id:secret", queue_url=upstream_url, poll_initial_s=0.01, poll_max_s=0.02)
    target = RouteTarget("fal", "hidream-i1-full", "fal-ai/hidream-i1-full", None, 4)
    try:
        assert (await provider.probe(target)).healthy
        result = await provider.generate(target, request(response_format=response_format))
    finally:
        await provider.aclose()
    (image,) = result.images
    assert (image.width, image.height) == (1024, 1024)
    if response_format == "b64_json":
        assert image.data is not None and Image.open(io.BytesIO(image.data)).size == (1024, 1024)
    else:
        assert image.url is not None
        async with httpx.AsyncClient() as client:
            png = (await client.get(image.url)).content
        assert Image.open(io.BytesIO(png)).size == (1024, 1024)
    async with httpx.AsyncClient() as client:
        stats = (await client.get(upstream_url + "/_stats")).json()
        assert stats["fal_submit"] == 1 and stats["fal_result"] == 1
        assert stats["fal_status"] + stats["fal_stream"] >= 1  # polled, or followed the SSE stream
        assert (await client.post(upstream_url + "/_stats/reset")).status_code == 200
        assert (await client.get(upstream_url + "/_stats")).json()["fal_submit"] == 0


async def test_fal_status_stream_ends_after_completed_and_cancel_follows_the_protocol() -> None:
    headers = {"Authorization": "Key id:secret"}
    # Long enough phases that a loaded machine still sees IN_QUEUE first.
    async with serving(UpstreamConfig(fal_delay_s=0.6)) as upstream_url, httpx.AsyncClient(headers=headers) as client:
        submitted = (await client.post(upstream_url + "/fal-ai/hidream-i1-full", json={"prompt": "fox"})).json()
        async with client.stream("GET", submitted["status_url"] + "/stream") as stream:
            events = [json.loads(line[6:]) async for line in stream.aiter_lines() if line.startswith("data: ")]
        assert [e["status"] for e in events] == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
        assert (await client.put(submitted["cancel_url"])).json() == {"status": "ALREADY_COMPLETED"}

        second = (await client.post(upstream_url + "/fal-ai/hidream-i1-full", json={"prompt": "fox"})).json()
        assert (await client.put(second["cancel_url"])).status_code == 202
        status = await client.get(second["status_url"])
        assert status.status_code == 200 and status.json()["error_type"] == "client_cancelled"
        assert (await client.get(second["response_url"])).status_code == 499
        unauthorized = await client.post(
            upstream_url + "/fal-ai/hidream-i1-full", json={"prompt": "x"}, headers={"Authorization": ""}
        )
        assert unauthorized.status_code == 401


def test_padded_png_keeps_its_pixels_and_reaches_the_requested_bytes() -> None:
    data = make_png(1024, 1024, target_bytes=2 * 1024 * 1024)
    assert abs(len(data) - 2 * 1024 * 1024) < 16
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.size == (1024, 1024)
