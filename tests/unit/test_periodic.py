"""The background loops (gateway/periodic.py and the app's other loops that run for its life): a
failed round is logged and the loop goes on; a cancel ends it, even when the step turns the cancel
into an error of its own or loses it (asyncio.wait_for on Python 3.11, inside redis-py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.spool import SettlementSpool
from gateway.periodic import repeat
from gateway.routing.breaker import RouteHealth


async def test_a_failed_round_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    rounds = 0

    async def step() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise RuntimeError("a bad round")

    task = asyncio.create_task(repeat(step, 0.001, "test loop"))
    while rounds < 3:
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled() and "test loop failed" in caplog.text


async def test_a_cancel_the_step_turns_into_an_error_still_ends_the_loop() -> None:
    entered = asyncio.Event()
    converting = True

    async def step() -> None:  # as a Redis client waiting on a reply may answer a cancel
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not converting:
                raise
            raise ConnectionError("connection closed while waiting for a reply") from None

    task = asyncio.create_task(repeat(step, 0.001, "test loop"))
    await entered.wait()
    task.cancel()
    try:
        done, _ = await asyncio.wait({task}, timeout=10)  # the bound only keeps a regression from hanging
        assert task in done and task.cancelled()
    finally:
        converting = False  # a loop that went on (the old behaviour) is stopped for the test's teardown
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)


class LostCancel:
    """A call that finishes just as its task is cancelled, awaited through asyncio.wait_for as
    redis-py sends every command: on Python 3.11 wait_for then returns the call's result and the
    cancel is lost (no exception reaches the caller; task.cancelling() still counts it). Later
    Pythons raise it. `arm` it with the task the cancel is for; each call after that loses one."""

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.calls = 0

    def arm(self, task: asyncio.Task[Any]) -> None:
        self.task = task

    async def __call__(self) -> None:
        self.calls += 1
        if self.task is None:
            return
        task = self.task

        async def the_call() -> None:
            task.cancel()  # comes while the reply is in hand

        await asyncio.wait_for(the_call(), 5)
        if task.cancelling() == 0:  # a regression could not hang here: this task is cancelled
            raise AssertionError("not the task the cancel was for")


async def _ends_after_a_lost_cancel(
    start: Callable[[LostCancel], Awaitable[None]], lost: LostCancel
) -> asyncio.Task[None]:
    task = asyncio.create_task(start(lost))
    while lost.calls == 0:  # the loop is running
        await asyncio.sleep(0.001)
    lost.arm(task)
    try:
        done, _ = await asyncio.wait({task}, timeout=10)  # the bound only keeps a regression from hanging
        assert task in done and task.cancelled(), f"still running after {lost.calls} calls"
    finally:
        lost.task = None  # a loop that went on (the old behaviour) is stopped for the test's teardown
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
    return task


async def test_a_cancel_lost_inside_the_step_still_ends_the_loop() -> None:
    lost = LostCancel()

    async def start(step: LostCancel) -> None:
        await repeat(step, 0.001, "test loop")

    await _ends_after_a_lost_cancel(start, lost)


async def test_the_settlement_spool_drain_ends_after_a_lost_cancel(tmp_path: Path) -> None:
    spool = SettlementSpool(tmp_path / "spool")
    spool.put("r1", {"request_id": "r1"})

    async def start(lost: LostCancel) -> None:
        async def settle(record: dict[str, Any]) -> bool:
            await lost()
            return False  # Redis still away: the record stays, the drain goes on

        await spool.drain_forever(settle, every_s=0.001)

    await _ends_after_a_lost_cancel(start, LostCancel())
    assert spool.pending()  # nothing was settled


async def test_the_route_health_flush_ends_after_a_lost_cancel() -> None:
    class Flushing(RouteHealth):
        def __init__(self, lost: LostCancel) -> None:  # no Redis: the flush is the lost call
            self._lost = lost

        async def flush(self) -> None:
            await self._lost()

    async def start(lost: LostCancel) -> None:
        await Flushing(lost).flush_forever(interval_s=0.001)

    await _ends_after_a_lost_cancel(start, LostCancel())
