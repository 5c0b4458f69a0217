"""Redis as bench.redis_scale measures it: one redis-server with its append-only file (fsync every
second, as docker-compose.yml and the embedded default run it) or a three-node Redis Cluster
(tests/redis_cluster.py: the same persistence), each node a process whose CPU time is read from
/proc and whose INFO commandstats are reset and read around a measured phase."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.perf.procs import TICK_S
from bench.stack import wait_for_redis
from gateway.redis.embedded import find_redis_server
from tests.fakes.server import free_port
from tests.redis_cluster import RedisClusterServer


@dataclass(frozen=True, slots=True)
class Node:
    port: int
    pid: int


@dataclass(frozen=True, slots=True)
class CommandStat:
    calls: int
    usec: int


@dataclass(frozen=True, slots=True)
class NodeReading:
    """One node over a phase: CPU seconds of the whole redis-server process (every thread: the
    main one runs the scripts, reads and writes the sockets and the AOF buffer) and its commands."""

    port: int
    cpu_s: float
    commands: dict[str, CommandStat]
    aof_bytes: int  # appended to the append-only file (meaningless when it was rewritten meanwhile)
    aof_rewrites: int  # rewrites of it during the phase (each a forked child writing the whole dataset)

    def calls(self, name: str) -> int:
        stat = self.commands.get(name)
        return stat.calls if stat else 0


def pid_cpu_s(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def commandstats(port: int) -> dict[str, CommandStat]:
    with redis.Redis(port=port) as client:
        info = client.info("commandstats")
    out = {}
    for key, value in info.items():
        name = key.removeprefix("cmdstat_").lower()
        out[name] = CommandStat(int(value["calls"]), int(value["usec"]))
    return out


def aof_size(port: int) -> tuple[int, int]:
    """(the append-only file's size, how many times it was rewritten since the start)."""
    with redis.Redis(port=port) as client:
        info = client.info("persistence")
    return int(info.get("aof_current_size", 0)), int(info.get("aof_rewrites", 0))


class Nodes:
    """The nodes of one Redis deployment; `url` is what the gateway would be given."""

    def __init__(self, url: str, nodes: list[Node], kind: str) -> None:
        self.url = url
        self.nodes = nodes
        self.kind = kind

    def reset(self) -> dict[int, tuple[float, int, int]]:
        """CONFIG RESETSTAT on every node; returns each node's CPU seconds and AOF figures so far."""
        for n in self.nodes:
            with redis.Redis(port=n.port) as client:
                client.config_resetstat()
        return {n.port: (pid_cpu_s(n.pid), *aof_size(n.port)) for n in self.nodes}

    def read(self, before: dict[int, tuple[float, int, int]]) -> list[NodeReading]:
        out = []
        for n in self.nodes:
            cpu, size, rewrites = before[n.port]
            now_size, now_rewrites = aof_size(n.port)
            out.append(NodeReading(n.port, pid_cpu_s(n.pid) - cpu, commandstats(n.port), now_size - size,
                                   now_rewrites - rewrites))  # fmt: skip
        return out

    def port_of(self, key: str) -> int:
        if len(self.nodes) == 1:
            return self.nodes[0].port
        with redis.Redis(port=self.nodes[0].port) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        raise RuntimeError(f"no node serves the slot of {key}")


@contextlib.contextmanager
def single(workdir: Path) -> Iterator[Nodes]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--maxmemory-policy", "noeviction", "--dir", str(workdir),
         "--logfile", str(workdir / "redis.log")],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_for_redis(url)
        yield Nodes(url, [Node(port, proc.pid)], "single")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[Nodes]:
    server = RedisClusterServer(workdir)
    server.start()
    try:
        nodes = [Node(port, proc.pid) for port, proc in zip(server.ports, server.procs, strict=True)]
        yield Nodes(server.url, nodes, "cluster")
    finally:
        server.stop()
