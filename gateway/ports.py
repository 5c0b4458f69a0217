"""Loopback ports for servers this process starts and hands the port to (the tiny worker of
`gateway serve --tiny-worker`; the tests' servers): from below the kernel's ephemeral range, the
ports it gives outgoing connections (32768-60999 by default). A port from `bind(0)` is in that
range, and between reading it and the server binding it an outgoing connection can take it: the
soak test's fake upstream failed so ("address already in use") after tests that open many
connections."""

from __future__ import annotations

import random
import socket
from pathlib import Path

FIRST = 10_000


class LoopbackPorts:
    """Handed out in turn from a random start, each checked free: none twice until all were."""

    def __init__(self) -> None:
        self._end = _ephemeral_start()
        self._next = random.randrange(FIRST, self._end) if self._end - FIRST >= 1000 else 0

    def take(self) -> int:
        for _ in range(self._end - FIRST if self._next else 0):
            port = self._next
            self._next = port + 1 if port + 1 < self._end else FIRST
            if bindable(port):
                return port
        with socket.socket() as s:  # no room below the ephemeral range on this machine
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def bindable(port: int) -> bool:
    """Whether a server could bind this loopback port now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
