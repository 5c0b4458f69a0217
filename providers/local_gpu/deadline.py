"""`asyncio.timeout` for one awaited call, as a plain coroutine: every owned-GPU image is one such
call, and asyncio.timeout's context manager (an object, two coroutines and a reschedule) cost about
300 bytecodes a request, against about 40 here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(seconds: float, work: Awaitable[T]) -> T:
    """`await work`, cancelled and TimeoutError raised once it has taken `seconds`: what
    `async with asyncio.timeout(seconds): return await work` does, the same way (the task's cancel
    is taken back once it expired, and a cancel from elsewhere is passed on as it is)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("within() must be awaited in a task")
    cancelling = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        result = await work
    except asyncio.CancelledError:
        if expired and task.uncancel() <= cancelling:
            raise TimeoutError from None
        raise
    except BaseException:
        if expired:
            task.uncancel()
        raise
    finally:
        handle.cancel()
    if expired:
        task.uncancel()
    return result
