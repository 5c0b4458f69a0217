"""The full decode of an admitted edit's uploads: on a few threads of its own, within a
per-process memory budget.

Decoded pixels are large (a 40 MP upload holds 160 MB as PNG or JPEG, 480 MB as WebP), and a dozen
edits decoding at once took a process to about 1 GiB. So each decode first takes its estimated memory
from the budget, waiting in arrival order while the budget is spent, and gives it back when its
thread has finished. The threads are few and kept: glibc keeps what a thread freed in that
thread's malloc arena for its next allocation, so decodes spread over the default executor's
threads (up to 32) left a 40 MP image's worth of memory behind in each of them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Gauge

from gateway.images.png import CHECK_BYTES, checked_without_pixels
from gateway.images.validation import ValidRequest, decode_fully
from providers.base import InputImage


def decode_bytes(image: InputImage) -> int:
    """The memory a full decode of `image` holds, from its header. Pillow keeps every mode a PNG or
    JPEG decodes to in at most 4 bytes a pixel; for a WebP, libwebp's animation decoder (which
    Pillow uses for every WebP) holds two canvases more. Measured for 40 MP with Pillow 13: 4.0 and
    12.0 bytes a pixel. A PNG that png.check_png checks by its structure decodes no pixels: it holds
    one inflated piece at a time (a 40 MP PNG reserved 160 MB, and a 256 MiB budget checked one such
    upload at a time)."""
    per_pixel = 12 if image.content_type == "image/webp" else 4
    pixels = image.width * image.height * per_pixel
    if image.content_type == "image/png" and checked_without_pixels(image.data):
        return min(pixels, CHECK_BYTES)
    return pixels


class UploadDecoder:
    def __init__(
        self,
        budget_bytes: int,
        waiting: Gauge,
        *,
        threads: int,
        decode: Callable[[InputImage, str], None] = decode_fully,
    ) -> None:
        self._decode = decode
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="upload-decode")
        self._capacity = budget_bytes
        self._free = budget_bytes
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._waiting = waiting  # decodes waiting for memory, in this process

    async def check(self, valid: ValidRequest) -> None:
        """Decode every upload of an edit; a truncated or corrupt one is an InvalidRequestError
        naming it."""
        for image in valid.images:
            await self.decode(image, "image")
        if valid.mask is not None:
            await self.decode(valid.mask, "mask")

    async def decode(self, image: InputImage, param: str) -> None:
        cost = min(decode_bytes(image), self._capacity)  # one larger than the whole budget decodes alone
        await self._take(cost)
        thread = asyncio.get_running_loop().run_in_executor(self._threads, self._decode, image, param)

        def finished(done: asyncio.Future[None]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved here too: a caller that went away no longer awaits it
            self._give(cost)

        # The memory is given back when the thread ends, not when the caller stops waiting: a
        # cancelled request's decode runs on, holding its pixels, until it finishes.
        thread.add_done_callback(finished)
        await asyncio.shield(thread)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _take(self, cost: int) -> None:
        if not self._queue and cost <= self._free:
            self._free -= cost
            return
        turn = asyncio.get_running_loop().create_future()
        self._queue.append((cost, turn))
        self._waiting.inc()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():  # still queued: leave the queue, and let those behind move up
                if (cost, turn) in self._queue:
                    self._queue.remove((cost, turn))
                self._grant()
            else:  # granted just as it was cancelled: hand the memory on
                self._give(cost)
            raise
        finally:
            self._waiting.dec()

    def _give(self, cost: int) -> None:
        self._free += cost
        self._grant()

    def _grant(self) -> None:
        while self._queue:
            cost, turn = self._queue[0]
            if turn.cancelled():
                self._queue.popleft()
                continue
            if cost > self._free:
                return
            self._queue.popleft()
            self._free -= cost
            turn.set_result(None)
