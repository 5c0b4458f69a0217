from __future__ import annotations

import asyncio

from gateway.api.server import JOIN_UP_TO, _CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_writes_of_one_loop_turn_leave_together_and_large_bodies_are_not_joined() -> None:
    raw = RecordingTransport()
    t = _CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"{}")
    assert raw.writes == []  # nothing leaves before the turn ends
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    big = b"x" * (JOIN_UP_TO + 1)
    t.write(b"head")
    t.write(big)
    await asyncio.sleep(0)
    assert raw.writes[1:] == [b"head", big] and raw.writes[2] is big  # sent as is: no copy
    t.write(b"last words")
    t.close()  # close sends what is pending first
    assert raw.writes[-1] == b"last words" and raw.closed
    raw = RecordingTransport()
    t = _CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"an error answer")
    t.write_eof()  # a half-close follows what is pending
    assert raw.writes == [b"an error answer", b"<eof>"]
    assert t.get_extra_info("peername") == "info:peername"  # everything else is the transport's


async def test_a_large_buffer_is_sent_as_given_and_a_small_one_is_copied() -> None:
    raw = RecordingTransport()
    t = _CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    image = memoryview(bytearray(b"p" * (JOIN_UP_TO + 1)))  # an image read for its URL
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(image)
    await asyncio.sleep(0)
    assert raw.writes[1] is image  # not copied
    small = bytearray(b"small")
    t.write(small)
    small[:] = b"XXXXX"  # a writer reusing a small buffer at once does not change what is sent
    await asyncio.sleep(0)
    assert raw.writes[2] == b"small"
