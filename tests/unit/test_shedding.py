from __future__ import annotations

import asyncio
import time

import pytest

from gateway.shedding import LoadShedder, OverloadedError


def test_slots_are_counted_and_released_and_the_cap_refuses() -> None:
    shed: list[str] = []
    s = LoadShedder(max_in_flight=2, max_lag_s=0.2, on_shed=shed.append)
    with s.slot(), s.slot():
        assert s.in_flight == 2
        with pytest.raises(OverloadedError) as info, s.slot():
            pass
        assert info.value.status_code == 503 and info.value.headers["retry-after"] == "1"
    assert s.in_flight == 0 and shed == ["in_flight"]
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
