"""The fal adapter's aiohttp client over a real socket (the adapter tests use its httpx twin in
process): bodies sent whole with their length, answers and event streams read as they come, and
every failure of the connection a ProviderUnavailableError, never a bare TimeoutError that the
adapter would take for the caller's deadline."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from providers.base import ImageRequest, InputImage, ProviderUnavailableError
from providers.fal import mapping
from providers.fal.http import AiohttpFal
from tests.contract.cases.fal import KEY, make_request
from tests.fakes.fal_server import create_app
from tests.fakes.fal_state import FakeFal
from tests.fakes.server import free_port, serve_in_thread

MODEL = "fal-ai/hidream-i1-full"


@pytest.fixture
def fal() -> Iterator[tuple[FakeFal, str]]:
    fake = FakeFal(queue_s=0.2, inference_s=0.2)
    with serve_in_thread(create_app(fake, key=KEY, keepalive_s=0.05)) as url:
        yield fake, url


@pytest.fixture
async def http() -> AsyncIterator[AiohttpFal]:
    client = AiohttpFal(KEY, connect_timeout_s=2.0, read_timeout_s=5.0, max_connections=4, max_streams=2)
    yield client
    await client.aclose()


def edit(size: int) -> ImageRequest:
    data = bytes(range(256)) * (size // 256)
    return make_request(images=(InputImage(data, "image/png", 8, 8),), strength=0.5)


async def test_a_large_edit_arrives_whole_with_its_length_not_chunked(
    fal: tuple[FakeFal, str], http: AiohttpFal
) -> None:
    fake, url = fal
    request = edit(3 * mapping.DATA_URI_PIECE + 256)
    reply = await http.send("POST", f"{url}/{MODEL}/image-to-image", step="submit", body=mapping.submit_body(request))
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/json")
    (queued,) = fake.requests()
    assert queued.headers["authorization"] == f"Key {KEY}"
    assert "transfer-encoding" not in queued.headers
    assert int(queued.headers["content-length"]) == mapping.submit_body(request).length
    assert isinstance(queued.payload, dict)
    assert base64.b64decode(str(queued.payload["image_url"]).partition(",")[2]) == request.images[0].data


async def test_the_status_stream_is_read_line_by_line_with_its_keep_alive_comments(
    fal: tuple[FakeFal, str], http: AiohttpFal
) -> None:
    _, url = fal
    submitted = json.loads(
        (await http.send("POST", f"{url}/{MODEL}", step="submit", body=mapping.submit_body(make_request()))).body
    )
    async with http.stream(submitted["status_url"] + "/stream", step="stream", params={"logs": "0"}) as events:
        assert events.status == 200 and events.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in events.lines]
    assert ": keep-alive" in lines  # the fake's comment every 0.05 s while the job runs
    decoder = mapping.EventStreamDecoder()
    states = [mapping.parse_status_event(d).state for d in map(decoder.feed, lines) if d is not None]
    assert states == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]


async def test_a_refused_connection_is_unavailable(http: AiohttpFal) -> None:
    with pytest.raises(ProviderUnavailableError):
        await http.send("GET", f"http://127.0.0.1:{free_port()}/x", step="status")


async def test_a_server_that_never_answers_is_unavailable_not_a_deadline(http: AiohttpFal) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # takes the request and never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ProviderUnavailableError) as info:
            await http.send("GET", f"http://127.0.0.1:{port}/x", step="result", timeout_s=0.3)
        assert not isinstance(info.value, TimeoutError)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
