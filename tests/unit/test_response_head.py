"""The lean send writes exactly the bytes, and leaves the cycle in exactly the state, that uvicorn's
own send does; an answer it does not take goes through uvicorn's send unchanged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.api.response_head import lean_send

DEFAULTS = [(b"server", b"uvicorn"), (b"date", b"Mon, 07 Dec 2026 11:00:00 GMT")]
PLAIN = [(b"x-gateway-provider", b"local_gpu"), (b"content-length", b"2"), (b"content-type", b"application/json")]


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _cycle(method: str = "POST", keep_alive: bool = True) -> tuple[RequestResponseCycle, Recorder, list[int]]:
    transport = Recorder()
    responses: list[int] = []
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "path": "/"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("t"),
        access_logger=logging.getLogger("t.access"),
        access_log=False,
        default_headers=list(DEFAULTS),
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: responses.append(1),
    )
    return cycle, transport, responses


def _state(cycle: RequestResponseCycle) -> tuple[Any, ...]:
    return (cycle.response_started, cycle.response_complete, cycle.chunked_encoding,
            cycle.expected_content_length, cycle.keep_alive, cycle.waiting_for_100_continue)  # fmt: skip


async def _answer(send: Any, headers: list[Any], body: bytes = b"{}", status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


CASES: dict[str, tuple[list[Any], str, bool]] = {
    "plain": (PLAIN, "POST", True),
    "no length": ([(b"content-type", b"application/json")], "POST", True),
    "connection close": ([*PLAIN, (b"connection", b"close")], "POST", True),
    "a name twice": ([*PLAIN, (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")], "POST", True),
    "upper-case name": ([(b"Content-Length", b"2")], "POST", True),
    "HEAD": (PLAIN, "HEAD", True),
    "not kept alive": (PLAIN, "POST", False),
    "lists, not tuples": ([[b"content-length", b"2"]], "POST", True),
}


@pytest.mark.parametrize("case", CASES)
async def test_lean_send_writes_what_uvicorns_send_writes(case: str) -> None:
    headers, method, keep_alive = CASES[case]
    ours, ours_out, ours_done = _cycle(method, keep_alive)
    theirs, theirs_out, theirs_done = _cycle(method, keep_alive)
    await _answer(lean_send(ours), headers, b"" if method == "HEAD" else b"{}")
    await _answer(theirs.send, headers, b"" if method == "HEAD" else b"{}")
    assert b"".join(ours_out.writes) == b"".join(theirs_out.writes)
    assert _state(ours) == _state(theirs) and ours_done == theirs_done == [1]
    assert ours_out.closed == theirs_out.closed


@pytest.mark.parametrize("bad", [(b"x-bad", b"a\r\nset-cookie: b"), (b"x bad", b"v"), (b"x-bad", "text")])
async def test_a_header_uvicorn_refuses_is_refused_as_uvicorn_refuses_it(bad: tuple[Any, Any]) -> None:
    ours, ours_out, _ = _cycle()
    theirs, _, _ = _cycle()
    with pytest.raises(Exception) as mine:
        await _answer(lean_send(ours), [*PLAIN, bad])
    with pytest.raises(Exception) as uvicorns:
        await _answer(theirs.send, [*PLAIN, bad])
    assert type(mine.value) is type(uvicorns.value) and str(mine.value) == str(uvicorns.value)
    assert ours_out.writes == []


async def test_a_body_longer_than_its_length_is_refused_after_a_lean_head() -> None:
    cycle, _, _ = _cycle()
    with pytest.raises(RuntimeError, match="longer than Content-Length"):
        await _answer(lean_send(cycle), PLAIN, b"{}}")


async def test_a_plain_answer_head_does_not_go_through_uvicorns_send() -> None:
    cycle, out, _ = _cycle()
    heads: list[object] = []
    full = cycle.send

    async def counted(message: Any) -> None:
        if message["type"] == "http.response.start":
            heads.append(message)
        await full(message)

    cycle.send = counted  # type: ignore[method-assign]
    await _answer(lean_send(cycle), PLAIN)
    assert heads == [] and out.writes[0].startswith(b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\n")
