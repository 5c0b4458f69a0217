"""The lean script client against a real redis-server: same replies as redis-py, many commands in
flight on one connection, scripts loaded on demand, and Redis faults as redis-py's errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.exceptions
from redis.asyncio import Redis

from gateway.redis.scripts import Script, ScriptClient, script_client_for
from tests.redis_server import RedisServer

ECHO = "redis.call('INCR', KEYS[1]); return {ARGV[1], tonumber(ARGV[2]) * 2, redis.call('GET', KEYS[1])}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[ScriptClient]:
    made = script_client_for(redis_url)
    assert made is not None
    yield made
    await made.aclose()


async def test_replies_match_redis_py_and_a_flushed_script_is_loaded_again(
    client: ScriptClient, redis_url: str
) -> None:
    plain = Redis.from_url(redis_url)
    try:
        theirs = await plain.register_script(ECHO)(keys=["a"], args=["x", 21])
        ours = await Script(client, ECHO)(keys=["a"], args=["x", 21])
        assert theirs == [b"x", 42, b"1"] and ours == [b"x", 42, b"2"]
        await plain.script_flush()
        assert await Script(client, ECHO)(keys=["a"], args=["y", 1]) == [b"y", 2, b"3"]
    finally:
        await plain.aclose()


async def test_many_calls_in_flight_each_get_their_own_reply(client: ScriptClient) -> None:
    script = Script(client, "return ARGV[1]")
    replies = await asyncio.gather(*(script(keys=[], args=[str(i)]) for i in range(2000)))
    assert replies == [str(i).encode() for i in range(2000)]


async def test_an_error_reply_is_a_response_error(client: ScriptClient) -> None:
    with pytest.raises(redis.exceptions.ResponseError):
        await Script(client, "return redis.call('NOSUCHCOMMAND')")(keys=[], args=[])
    assert await Script(client, "return 1")() == 1  # the connection is still usable


async def test_a_redis_restart_fails_calls_with_connection_errors_then_reconnects(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")
    server.start()
    client = script_client_for(server.url)
    assert client is not None
    script = Script(client, "return 7")
    try:
        assert await script() == 7
        server.kill()
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            for _ in range(3):  # the first may still find the dead socket open
                await script()
        server.start()
        assert await script() == 7
    finally:
        await client.aclose()
        server.stop()


async def test_a_password_protected_server(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "p")
    server.start()
    admin = Redis.from_url(server.url)
    await admin.config_set("requirepass", "s3cret-for-this-test")
    await admin.aclose()
    good = script_client_for(server.url.replace("redis://", "redis://:s3cret-for-this-test@"))
    bad = script_client_for(server.url)
    assert good is not None and bad is not None
    try:
        assert await Script(good, "return 'in'")() == b"in"
        with pytest.raises(redis.exceptions.RedisError):
            await Script(bad, "return 'in'")()
    finally:
        await good.aclose()
        await bad.aclose()
        server.stop()


def test_cluster_tls_and_unix_urls_use_redis_py() -> None:
    assert script_client_for("redis+cluster://127.0.0.1:7000") is None
    assert script_client_for("rediss://127.0.0.1:6380") is None
    assert script_client_for("unix:///tmp/redis.sock") is None
    assert script_client_for("redis://127.0.0.1:6379/3") is not None


async def test_a_silent_server_times_out_every_waiting_call() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)  # takes the commands, never answers
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = ScriptClient("127.0.0.1", port, timeout_s=0.2)
    try:
        results = await asyncio.gather(*(Script(client, "return 1")() for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.TimeoutError) for r in results), results
    finally:
        await client.aclose()
        server.close()
        await asyncio.sleep(0.05)
