from __future__ import annotations

import asyncio
import time

import pytest

from gateway.api.shedding import LoadShedder, OverloadedError


def test_slots_are_counted_and_released_and_the_cap_refuses() -> None:
    shed: list[str] = []
    s = LoadShedder(max_in_flight=2, max_lag_s=0.2, on_shed=shed.append)
    with s.slot(), s.slot():
        assert s.in_flight == 2
        with pytest.raises(OverloadedError):
            s.check()  # the same verdict as slot(), taking nothing
        with pytest.raises(OverloadedError) as info, s.slot():
            pass
        assert info.value.status_code == 503 and info.value.headers["retry-after"] == "1"
    assert s.in_flight == 0 and shed == ["in_flight", "in_flight"]
    s.check()
    with pytest.raises(RuntimeError), s.slot():
        raise RuntimeError("a failing request still gives its slot back")
    assert s.in_flight == 0


async def test_a_blocked_event_loop_is_seen_as_lag_and_sheds_until_it_clears() -> None:
    shed: list[str] = []
    s = LoadShedder(max_in_flight=100, max_lag_s=0.1, tick_s=0.01, on_shed=shed.append)
    watcher = asyncio.create_task(s.watch_loop())
    try:
        await asyncio.sleep(0.05)
        with s.slot():
            pass  # an idle loop has no lag
        time.sleep(0.3)  # the loop is stuck, as under a backlog of CPU work
        for _ in range(3):  # let the overdue ticker run (its timer is the first due), nothing more
            await asyncio.sleep(0)
        assert s.lag_s >= 0.2
        with pytest.raises(OverloadedError), s.slot():
            pass
        for _ in range(100):  # and the gate reopens once the loop keeps time again
            await asyncio.sleep(0.02)
            if s.lag_s <= 0.1:
                break
        with s.slot():
            pass
        assert shed == ["loop_lag"]
    finally:
        watcher.cancel()


async def test_a_long_accept_queue_sheds_until_it_drains() -> None:
    shed: list[str] = []
    waiting = [0]
    s = LoadShedder(
        max_in_flight=100, max_lag_s=0, max_accept_queue=10, accept_queue=lambda: waiting[0], tick_s=0.005,
        on_shed=shed.append,
    )  # fmt: skip
    watcher = asyncio.create_task(s.watch_loop())
    try:
        waiting[0] = 50
        await asyncio.sleep(0.05)
        with pytest.raises(OverloadedError) as info, s.slot():
            pass
        assert info.value.reason == "accept_queue"
        waiting[0] = 3
        await asyncio.sleep(0.05)
        with s.slot():
            pass
        assert shed == ["accept_queue"]
    finally:
        watcher.cancel()


def test_the_accept_queue_of_a_real_listening_socket_is_read() -> None:
    import socket

    from gateway.api.shedding import AcceptQueue

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    clients = [socket.create_connection(server.getsockname()) for _ in range(5)]  # never accepted
    queue = AcceptQueue()
    try:
        deadline = time.monotonic() + 2
        while (queue() or 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (queue() or 0) >= 5  # this process may listen elsewhere too (nothing queued there)
    finally:
        queue.close()
        for c in clients:
            c.close()
        server.close()
