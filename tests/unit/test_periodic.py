"""The background loop (gateway/periodic.py): a failed round is logged and the loop goes on; a
cancel ends it, even when the step turns the cancel into an error of its own."""

from __future__ import annotations

import asyncio

import pytest

from gateway.periodic import repeat


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
