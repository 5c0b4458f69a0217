"""Loopback ports handed to servers (gateway/ports.py): below the kernel's ephemeral range, free
when handed out, never the same twice in a row, and one in use is passed over."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.ports import FIRST, LoopbackPorts


def _ephemeral_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_ports_come_from_below_the_ephemeral_range_free_and_each_once() -> None:
    ports = LoopbackPorts()
    taken = [ports.take() for _ in range(50)]
    assert len(set(taken)) == 50
    assert all(FIRST <= p < _ephemeral_start() for p in taken)
    for port in taken:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free: a server can bind it


def test_a_port_in_use_is_passed_over() -> None:
    ports = LoopbackPorts()
    first = ports.take()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first + 1))  # the next in turn, taken meanwhile
        busy.listen()
        second = ports.take()
    assert second != first + 1 and second != first
