"""Load shedding: past capacity, refuse new image requests at once (503 + retry-after) instead of
letting every request queue until all of them time out.

Two signals, both per worker process and cheap to read on every request:
- requests in flight in this process, against a cap (memory and sockets are finite);
- event-loop lag, measured by a ticker: when the loop is so busy that a callback waits longer than
  `max_lag_s` to run, the process is past what its CPU can serve, and every request it takes on
  adds to the wait of all the others. New requests are refused until the lag falls back.

A refused request has touched nothing: no admission, no reservation, no charge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.errors import ServiceUnavailableError


class OverloadedError(ServiceUnavailableError):
    default_code = "overloaded"
    kind = "overloaded"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, headers={"retry-after": "1"})
        self.reason = reason  # in_flight | loop_lag


class LoadShedder:
    def __init__(
        self,
        *,
        max_in_flight: int,
        max_lag_s: float,
        tick_s: float = 0.02,
        on_shed: Callable[[str], None] | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_lag_s = max_lag_s
        self._tick_s = tick_s
        self._on_shed = on_shed or (lambda reason: None)
        self.in_flight = 0
        self.lag_s = 0.0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of this process's request slots, or raise OverloadedError at once."""
        if self.in_flight >= self.max_in_flight:
            self._on_shed("in_flight")
            raise OverloadedError(
                f"This gateway process has {self.in_flight} requests in flight, its limit; retry shortly.",
                reason="in_flight",
            )
        if self.max_lag_s > 0 and self.lag_s > self.max_lag_s:
            self._on_shed("loop_lag")
            raise OverloadedError("The gateway is over capacity right now; retry shortly.", reason="loop_lag")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def watch_loop(self) -> None:
        """Run for the life of the process: how late each tick runs is the loop's lag."""
        while True:
            due = time.monotonic() + self._tick_s
            await asyncio.sleep(self._tick_s)
            late = max(0.0, time.monotonic() - due)
            # Rise at once, fall smoothly, so one quick tick amid a backlog does not reopen the gate.
            self.lag_s = late if late > self.lag_s else 0.5 * self.lag_s + 0.5 * late
