"""The decode-memory budget: decodes wait their turn in arrival order, a caller that leaves while
waiting leaves the queue, and a decode whose caller left keeps its memory until its thread ends."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge

from gateway.images.decoding import UploadDecoder, decode_bytes
from providers.base import InputImage

UNIT = decode_bytes(InputImage(b"", "image/png", 10, 10))  # the memory of one 10x10 PNG


def image(name: str, side: int = 10, content_type: str = "image/png") -> InputImage:
    return InputImage(name.encode(), content_type, side, side)


class Held:
    """A decode stand-in that runs until released, recording which images are decoding."""

    def __init__(self) -> None:
        self.running: list[str] = []
        self.started: dict[str, threading.Event] = {}
        self.release: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def prepare(self, name: str) -> None:
        self.started[name], self.release[name] = threading.Event(), threading.Event()

    def __call__(self, img: InputImage, param: str) -> None:
        name = img.data.decode()
        with self._lock:
            self.running.append(name)
        self.started[name].set()
        assert self.release[name].wait(10), "never released"
        with self._lock:
            self.running.remove(name)

    async def until_started(self, name: str) -> None:
        assert await asyncio.to_thread(self.started[name].wait, 10), f"{name} never started"

    def free_all(self) -> None:
        for event in self.release.values():
            event.set()


@pytest.fixture
def held() -> Iterator[Held]:
    h = Held()
    yield h
    h.free_all()


class Decoders:
    """Makes decoders on two threads each, and closes them after the test."""

    def __init__(self) -> None:
        self._made: list[UploadDecoder] = []

    def make(self, budget: int, waiting: Gauge, decode: Callable[[InputImage, str], None]) -> UploadDecoder:
        self._made.append(UploadDecoder(budget, waiting, threads=2, decode=decode))
        return self._made[-1]

    def close(self) -> None:
        for decoder in self._made:
            decoder.close()


@pytest.fixture
def decoders() -> Iterator[Decoders]:
    made = Decoders()
    yield made
    made.close()


def gauge() -> Gauge:
    return Gauge("waiting", "decodes waiting", registry=CollectorRegistry())


def waiting(g: Gauge) -> float:
    return float(next(iter(g.collect())).samples[0].value)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Lets the event loop run until `predicate` holds (it depends on tasks, not on threads)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


def test_webp_counts_three_times_the_memory_of_png() -> None:
    assert decode_bytes(image("a", 100)) == 100 * 100 * 4
    assert decode_bytes(image("a", 100, "image/webp")) == 3 * decode_bytes(image("a", 100))


async def test_decodes_past_the_budget_wait_in_arrival_order(held: Held, decoders: Decoders) -> None:
    g = gauge()
    decoder = decoders.make(2 * UNIT, g, decode=held)
    for name in ("a", "b", "big", "c"):
        held.prepare(name)
    a = asyncio.ensure_future(decoder.decode(image("a"), "image"))
    b = asyncio.ensure_future(decoder.decode(image("b"), "image"))
    await held.until_started("a")
    await held.until_started("b")
    big = asyncio.ensure_future(decoder.decode(image("big", 14), "image"))  # two units: waits for both
    c = asyncio.ensure_future(decoder.decode(image("c"), "image"))  # would fit after one; queued behind big
    await until(lambda: waiting(g) == 2, "big and c queued")
    held.release["a"].set()
    await a
    assert not held.started["c"].is_set() and sorted(held.running) == ["b"]
    held.release["b"].set()
    await b
    await held.until_started("big")
    held.release["big"].set()
    await big
    await held.until_started("c")
    held.release["c"].set()
    await c
    assert waiting(g) == 0


async def test_a_caller_that_leaves_while_queued_lets_the_next_one_in(held: Held, decoders: Decoders) -> None:
    g = gauge()
    decoder = decoders.make(UNIT, g, decode=held)
    for name in ("a", "gone", "next"):
        held.prepare(name)
    a = asyncio.ensure_future(decoder.decode(image("a"), "image"))
    await held.until_started("a")
    gone = asyncio.ensure_future(decoder.decode(image("gone"), "image"))
    following = asyncio.ensure_future(decoder.decode(image("next"), "image"))
    await until(lambda: waiting(g) == 2, "two queued")
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    held.release["a"].set()
    await a
    await held.until_started("next")
    held.release["next"].set()
    await following
    assert not held.started["gone"].is_set() and waiting(g) == 0


async def test_a_decode_whose_caller_left_holds_its_memory_until_its_thread_ends(
    held: Held, decoders: Decoders
) -> None:
    g = gauge()
    decoder = decoders.make(UNIT, g, decode=held)
    for name in ("left", "next"):
        held.prepare(name)
    left = asyncio.ensure_future(decoder.decode(image("left"), "image"))
    await held.until_started("left")
    left.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left
    following = asyncio.ensure_future(decoder.decode(image("next"), "image"))
    await until(lambda: waiting(g) == 1, "next queued behind the orphaned decode")
    assert held.running == ["left"]
    held.release["left"].set()
    await held.until_started("next")
    held.release["next"].set()
    await following


async def test_an_image_larger_than_the_whole_budget_decodes_alone(held: Held, decoders: Decoders) -> None:
    decoder = decoders.make(UNIT, gauge(), decode=held)
    held.prepare("huge")
    huge = asyncio.ensure_future(decoder.decode(image("huge", 1000), "image"))
    await held.until_started("huge")
    held.release["huge"].set()
    await huge


async def test_a_failed_decode_reaches_its_caller_and_gives_its_memory_back(decoders: Decoders) -> None:
    def corrupt(img: InputImage, param: str) -> None:
        raise ValueError(param)

    decoder = decoders.make(UNIT, gauge(), decode=corrupt)
    for _ in range(2):  # the second would wait forever if the first kept its memory
        with pytest.raises(ValueError, match="mask"):
            await decoder.decode(image("x"), "mask")
