"""The GPU adapter's lean HTTP client against a real loopback server written with asyncio streams:
keep-alive reuse, chunked and fixed-length bodies, and each way an exchange can fail."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from providers.local_gpu.http import PREALLOCATE_FROM, ConnectFailed, ExchangeBroken, ExchangeTimeout, WorkerHttp

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
    return head + (await reader.readexactly(length) if length else b"")


async def _serve(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await asyncio.sleep(0.05)  # let handlers see their clients go and close their side


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[int]]]:
    """Answers each request with its own body, alternately chunked; counts connections."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        n = 0
        try:
            while True:
                request = await _read_request(reader)
                body = request.split(b"\r\n\r\n", 1)[1]
                n += 1
                if n % 2:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-n: %d\r\n\r\n%s" % (len(body), n, body))
                else:
                    writer.write(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n")
                    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async for url in _serve(handle):
        yield url, connections


async def test_keep_alive_reuses_one_connection_and_reads_both_body_framings(echo: tuple[str, list[int]]) -> None:
    url, connections = echo
    http = WorkerHttp(connect_timeout_s=1)
    try:
        first = await http.request("POST", url + "/x", body=b"hello", timeout_s=2)
        second = await http.request("POST", url + "/x", body=b"world" * 1000, timeout_s=2)
    finally:
        await http.aclose()
    assert (first.status, first.body, first.headers["x-n"]) == (200, b"hello", "1")
    assert (second.status, second.body) == (201, b"world" * 1000)
    assert len(connections) == 1


async def test_nothing_listening_is_a_connect_failure() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectFailed):
        await WorkerHttp(connect_timeout_s=1).request("GET", f"http://127.0.0.1:{port}/", timeout_s=1)


async def test_a_silent_worker_times_out_and_a_dropped_exchange_is_broken() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read(1)  # never answers; returns when the client gives up and hangs up
        writer.close()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    http = WorkerHttp(connect_timeout_s=1)
    async for url in _serve(silent):
        with pytest.raises(ExchangeTimeout):
            await http.request("GET", url + "/", timeout_s=0.2)
    async for url in _serve(drop):
        with pytest.raises(ExchangeBroken) as info:
            await http.request("GET", url + "/", timeout_s=2)
        assert info.value.reused is False
    await http.aclose()


async def test_cancelling_an_exchange_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if not await reader.read(1):  # EOF: the client hung up
            closed.set()
        writer.close()

    http = WorkerHttp(connect_timeout_s=1)
    async for url in _serve(hold):
        task = asyncio.create_task(http.request("POST", url + "/", body=b"job", timeout_s=10))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 2)
    await http.aclose()


async def test_connections_idle_past_their_time_are_closed_while_traffic_goes_on() -> None:
    """After a burst, steady one-at-a-time traffic reuses the newest connection; the burst's other
    connections must not stay open (an open file each) for as long as traffic goes on."""
    open_now: list[int] = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_now[0] += 1
        try:
            while True:
                await _read_request(reader)
                await asyncio.sleep(0.05)  # long enough for the burst to need a connection each
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            open_now[0] -= 1
            writer.close()

    async for url in _serve(handle):
        http = WorkerHttp(connect_timeout_s=1, idle_s=0.3)
        try:
            await asyncio.gather(*(http.request("GET", url + "/x", timeout_s=2) for _ in range(8)))
            assert open_now[0] == 8
            for _ in range(8):  # 0.8 s of one request at a time, past idle_s
                await http.request("GET", url + "/x", timeout_s=2)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)  # the server sees the closes
            assert open_now[0] <= 2, open_now[0]
        finally:
            await http.aclose()


async def test_a_large_body_of_declared_length_is_read_whole_into_one_buffer() -> None:
    """Past PREALLOCATE_FROM a body is copied into a buffer of its content-length as it arrives (no
    list of pieces joined at the end): the bytes are the ones sent, in order, answer after answer on
    one connection, however the server's writes split them."""
    images = [random.Random(i).randbytes(PREALLOCATE_FROM * 5 + 17 * i) for i in range(3)]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for image in images:
                await _read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(image))
                for at in range(0, len(image), 10_007):  # odd pieces, each drained: many reads
                    writer.write(image[at : at + 10_007])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    http = WorkerHttp(connect_timeout_s=1)
    async for url in _serve(handle):
        replies = [await http.request("GET", url + "/x", timeout_s=5) for _ in images]
        assert [r.body for r in replies] == images
        assert all(isinstance(r.body, bytearray) for r in replies)
    await http.aclose()


async def test_a_large_body_cut_short_is_a_broken_exchange_not_a_padded_body() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (PREALLOCATE_FROM * 4))
        writer.write(b"x" * PREALLOCATE_FROM)
        await writer.drain()
        writer.close()

    http = WorkerHttp(connect_timeout_s=1)
    async for url in _serve(cut):
        with pytest.raises(ExchangeBroken):
            await http.request("GET", url + "/", timeout_s=2)
    await http.aclose()
