"""providers/local_gpu/deadline.within behaves as asyncio.timeout around one await."""

from __future__ import annotations

import asyncio

import pytest

from providers.local_gpu.deadline import within


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_a_call_in_time_gives_its_result_and_leaves_no_cancel_behind() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    assert await within(60, quick()) == 7
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # no cancel arrives later either


async def test_a_call_past_its_time_is_cancelled_and_raises_timeout_error() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await _forever()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await within(0.01, slow())
    task = asyncio.current_task()
    assert cancelled.is_set() and task is not None and task.cancelling() == 0
    assert await within(60, asyncio.sleep(0, "after")) == "after"  # the task goes on as before


async def test_a_cancel_from_elsewhere_is_a_cancel_not_a_timeout() -> None:
    for guard in (within, _asyncio_timeout):
        started = asyncio.Event()

        async def caller(guard: object = guard, started: asyncio.Event = started) -> None:
            started.set()
            await guard(60, _forever())  # type: ignore[operator]

        task = asyncio.create_task(caller())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_inner_timeout_inside_an_outer_one_is_told_apart_as_asyncio_does() -> None:
    async def nested() -> str:
        try:
            await within(0.01, _forever())
        except TimeoutError:
            return "inner"
        return "none"

    assert await within(60, nested()) == "inner"
    with pytest.raises(TimeoutError):
        await within(0.01, within(60, _forever()))


async def test_work_that_swallows_the_cancel_returns_as_under_asyncio_timeout() -> None:
    async def stubborn() -> str:
        try:
            await _forever()
        except asyncio.CancelledError:
            return "kept going"
        return "never"

    assert await within(0.01, stubborn()) == "kept going"
    async with asyncio.timeout(0.01):
        theirs = await stubborn()
    assert theirs == "kept going"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def _asyncio_timeout(seconds: float, work: object) -> object:
    async with asyncio.timeout(seconds):
        return await work  # type: ignore[misc]
