"""Python's cycle collector in a gateway process: what the app built at startup is set aside
(gc.freeze), so that a full collection no longer walks it, and every collection's pause is timed
into /metrics (gateway_gc_pause_seconds, by generation).

A worker process holds about 108,000 objects the collector tracks once the app is built (FastAPI,
pydantic, the catalog, the metrics), nearly all of them for its whole life. Under load, objects of
the requests in flight live through two younger collections and are moved into the oldest
generation, and once those moves reach a quarter of it the collector runs a full collection: in
a 25 s run of the peer benchmark's request (c=1 then c=32, one worker) there were 10, each walking
every object, 81 ms on average and 108 ms at most, the event loop stopped meanwhile: the run's
longest answers (c=1 max 73-82 ms against a p99 of 4-5) were these pauses. Frozen, those objects are
skipped by every collection (a full one then took ~10 ms); they are still freed when nothing
refers to them, only a cycle among them would stay (one collection runs first, so none made at
startup does).

Only for a process the app owns (`gateway serve`'s workers): in a test process, apps come and go,
and freezing each one's objects would keep their cycles for the rest of the run.

A pause is noted by the collector's callback and put in the histogram later, by `drain`: the
callback runs wherever an allocation starts a collection, and that can be inside prometheus_client
writing a value, with the value's lock held (one lock for the whole process when workers share
metrics files). Observing there took the same lock again: the worker deadlocked, and stayed so
(found in session 10, a test gateway's worker stuck in `MmapedValue.inc` under `MmapedValue.__init__`).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import deque
from typing import Any

from prometheus_client import Histogram


def freeze_startup_objects() -> int:
    """Collect once, then move every object the collector tracks into its permanent generation;
    how many were moved."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class PauseWatch:
    """Times each collection (gc.callbacks) between start() and stop(): the app's life, so that apps
    sharing a process leave no callback behind. A collection can run on any thread, never two at
    once. The callback only appends to a deque (C code, no lock of Python's or prometheus_client's);
    `drain`, which the app runs every second, observes what was noted into one histogram child per
    generation. At most `keep` pauses wait for it; older ones beyond that are dropped."""

    def __init__(self, pauses: Histogram, keep: int = 10_000) -> None:
        self._children = [pauses.labels(str(generation)) for generation in range(3)]
        self._noted: deque[tuple[int, float]] = deque(maxlen=keep)
        self._started = 0.0
        self._callback = self._on_collection

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)
        self._observe()

    async def drain(self) -> None:
        self._observe()

    def _observe(self) -> None:
        noted = self._noted
        while noted:
            generation, seconds = noted.popleft()
            self._children[generation].observe(seconds)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._noted.append((info["generation"], time.perf_counter() - self._started))
