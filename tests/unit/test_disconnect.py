"""until_disconnect cancels the request's work when the caller goes away, told by the server's
ON_DISCONNECT extension or, without one, by a task waiting on receive()."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.api.disconnect import until_disconnect
from gateway.errors import ClientGone


class FakeServer:
    def __init__(self) -> None:
        self.watching: list[Callable[[], None]] = []
        self.stopped = 0

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        self.watching.append(callback)
        return self._stop

    def _stop(self) -> None:
        self.stopped += 1

    def lose(self) -> None:
        for callback in self.watching:
            callback()


async def _never() -> dict[str, object]:
    await asyncio.Event().wait()
    return {}


async def test_the_server_telling_of_a_lost_caller_cancels_the_work_as_client_gone() -> None:
    server = FakeServer()
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    task = asyncio.create_task(until_disconnect(_never, work(), server.watch))
    await started.wait()
    server.lose()
    with pytest.raises(ClientGone):
        await task
    assert cancelled.is_set() and server.stopped == 1
    assert task.cancelling() == 0  # the cancel was taken back: ClientGone is what leaves


async def test_work_done_ends_the_watch_and_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    server = FakeServer()

    async def quick() -> int:
        return 5

    assert await until_disconnect(_never, quick(), server.watch) == 5
    assert server.stopped == 1
    task = asyncio.create_task(until_disconnect(_never, asyncio.Event().wait(), server.watch))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.stopped == 2


async def test_without_the_extension_a_disconnect_message_cancels_the_work() -> None:
    gone = asyncio.Event()

    async def receive() -> dict[str, object]:
        await gone.wait()
        return {"type": "http.disconnect"}

    task = asyncio.create_task(until_disconnect(receive, asyncio.Event().wait()))
    await asyncio.sleep(0)
    gone.set()
    with pytest.raises(ClientGone):
        await task
