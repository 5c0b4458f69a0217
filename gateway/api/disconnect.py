"""Running a request's work for as long as its caller is there."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.types import Receive

from gateway.errors import ClientGone

T = TypeVar("T")

# The server's ON_DISCONNECT extension: watch(callback) -> a function that ends the watch.
Watch = Callable[[Callable[[], None]], Callable[[], None]]


async def until_disconnect(receive: Receive, work: Awaitable[T], watch: Watch | None = None) -> T:
    """Run `work` in this task, cancelling it if the caller goes away (so the upstream job is
    cancelled and the request settles as cancelled, charged nothing). `receive` is the request's,
    its body read already: the next message it gives is the disconnect. `watch`: the server's
    ON_DISCONNECT extension where it has one (gateway/api/server.py), which tells the same
    without a task waiting on `receive`."""
    this = asyncio.current_task()
    assert this is not None
    gone = False

    def lost() -> None:
        nonlocal gone
        gone = True
        this.cancel()

    async def wait_for_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        lost()

    # Without the server's extension (a test client), a task waits on receive().
    stop: Callable[[], object] = (
        watch(lost) if watch is not None else asyncio.get_running_loop().create_task(wait_for_disconnect()).cancel
    )
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        this.uncancel()
        raise ClientGone() from None
    finally:
        stop()
