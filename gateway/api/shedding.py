"""Load shedding: past capacity, refuse new image requests at once (503 + retry-after) instead of
letting every request queue until all of them time out.

Three signals, all per worker process and cheap to read on every request:
- requests in flight in this process (counted once their body is in), against a cap (memory and
  sockets are finite);
- event-loop lag, measured by a ticker: when the loop is so busy that a callback waits longer than
  `max_lag_s` to run, the process is past what its CPU can serve, and every request it takes on
  adds to the wait of all the others. New requests are refused until the lag falls back;
- the listening socket's accept queue (Linux TCP_INFO), read by the same ticker: callers that open
  a connection per request wait there, where no in-process measure sees them, and past the
  kernel's limit their connections are dropped and time out. While more than `max_accept_queue`
  connections wait, new requests are refused, which drains the queue ten times faster than serving.
  (A burst the process can hold, 5,000 requests for 10 s jobs at once, peaked at 342 here; a
  sustained 2x overload filled it to 3,700.)

A refused request has touched nothing: no admission, no reservation, no charge.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import time
from collections.abc import Callable

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
        max_accept_queue: int = 0,
        accept_queue: Callable[[], int | None] | None = None,
        tick_s: float = 0.02,
        on_shed: Callable[[str], None] | None = None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_lag_s = max_lag_s
        self.max_accept_queue = max_accept_queue
        self._accept_queue = accept_queue or (lambda: None)
        self._tick_s = tick_s
        self._on_shed = on_shed or (lambda reason: None)
        self.in_flight = 0
        self._counted = _InFlight(self)
        self.lag_s = 0.0
        self.queued = 0  # connections waiting in the listening socket's accept queue

    def check(self) -> None:
        """Raise OverloadedError if this process would refuse a request now; take nothing.

        Called as a request arrives, before its body is read, so that a refusal costs next to
        nothing; the slot itself is taken only once the body is in (see `slot`)."""
        if self.in_flight >= self.max_in_flight:
            self._on_shed("in_flight")
            raise OverloadedError(
                f"This gateway process has {self.in_flight} requests in flight, its limit; retry shortly.",
                reason="in_flight",
            )
        if self.max_lag_s > 0 and self.lag_s > self.max_lag_s:
            self._on_shed("loop_lag")
            raise OverloadedError("The gateway is over capacity right now; retry shortly.", reason="loop_lag")
        if self.max_accept_queue > 0 and self.queued > self.max_accept_queue:
            self._on_shed("accept_queue")
            raise OverloadedError("The gateway is over capacity right now; retry shortly.", reason="accept_queue")

    def slot(self) -> _InFlight:
        """Hold one of this process's request slots (`with shedder.slot():`), or raise
        OverloadedError at once.

        Taken once a request's body has arrived: a caller that sends its headers and then trickles
        (or never sends) its body holds no slot, so such callers cannot starve every other team
        (the connection itself is bounded by the server's body timeout)."""
        self.check()
        return self._counted

    def held(self) -> _InFlight:
        """Count a request that took its slot already (through `slot`) for as long as its answer
        outlives its handler (a stream), without checking again: it is admitted and must go on."""
        return self._counted

    async def watch_loop(self) -> None:
        """Run for the life of the process: how late each tick runs is the loop's lag."""
        while True:
            due = time.monotonic() + self._tick_s
            await asyncio.sleep(self._tick_s)
            late = max(0.0, time.monotonic() - due)
            # Rise at once, fall smoothly, so one quick tick amid a backlog does not reopen the gate.
            self.lag_s = late if late > self.lag_s else 0.5 * self.lag_s + 0.5 * late
            self.queued = self._accept_queue() or 0


class AcceptQueue:
    """The accept-queue length of this process's listening TCP sockets (Linux: TCP_INFO's
    tcpi_unacked on a LISTEN socket). The sockets are found among the process's open files, since
    the server, not the app, opens them (uvicorn's workers inherit them), and looked for again until
    they appear (a single-process server listens only after the app has started)."""

    def __init__(self, rescan_s: float = 1.0) -> None:
        self._sockets: list[socket.socket] = []
        self._rescan_s = rescan_s
        self._scanned = float("-inf")

    def __call__(self) -> int | None:
        if not self._sockets and time.monotonic() - self._scanned > self._rescan_s:
            self._scanned = time.monotonic()
            self._sockets = listening_sockets()
        total = 0
        for sock in self._sockets:
            try:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
            except OSError:
                return None
            total += struct.unpack_from("I", info, 24)[0]
        return total

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []


def listening_sockets() -> list[socket.socket]:
    """Duplicates of this process's listening TCP sockets (empty where /proc is not Linux's)."""
    found: list[socket.socket] = []
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return found
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            tcp = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
        except OSError:
            listening = tcp = False
        if listening and tcp:
            found.append(sock)
        else:
            sock.close()
    return found


class _InFlight:
    """A request counted in its shedder's in_flight for the length of a `with` block (a class,
    not a generator: one is entered by every request, and a generator's context manager costs
    about four times as much). Holds nothing of its own, so one serves every request."""

    __slots__ = ("_shedder",)

    def __init__(self, shedder: LoadShedder) -> None:
        self._shedder = shedder

    def __enter__(self) -> None:
        self._shedder.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        self._shedder.in_flight -= 1
