"""A thread that samples a process group's RSS and open files from /proc while a scenario runs,
keeping the peaks (an end-of-run reading misses what a burst held at its height)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.perf.procs import group_pids, group_rss_mib


class PeakSampler:
    def __init__(self, pgid: int, *, every_s: float = 0.1, also: Callable[[float], None] | None = None) -> None:
        """`also(seconds since start)` runs at every sample too (e.g. to watch an upstream counter)."""
        self._pgid, self._every, self._also = pgid, every_s, also
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.rss_before = group_rss_mib(pgid)
        self.peak_rss = self.rss_before
        self.peak_files = 0
        self._started = time.monotonic()

    def __enter__(self) -> PeakSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._sample()
            if self._also is not None:
                with contextlib.suppress(Exception):  # a missed sample is no failure
                    self._also(time.monotonic() - self._started)

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, group_rss_mib(self._pgid))
        files = 0
        for pid in group_pids(self._pgid):
            with contextlib.suppress(OSError):
                files += len(os.listdir(f"/proc/{pid}/fd"))
        self.peak_files = max(self.peak_files, files)


TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts")


def tcp_counters() -> dict[str, int]:
    """The machine's TcpExt counters that show connections lost to a full accept queue
    (ListenOverflows: a SYN or handshake dropped; the client retries after 1 s, 3 s, 7 s...)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
    if len(lines) < 2:
        return {}
    values = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return {k: int(values[k]) for k in TCP_COUNTERS if k in values}
