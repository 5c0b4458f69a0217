"""Real processes for end-to-end tests: the gateway (`gateway serve`), the fake fal server and the
worker, each started with its own command line and stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


class Process:
    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "FAL_"))}
        full_env.update(env)
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,  # `python -m` imports from here first: another checkout runs its own code
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_http(self, url: str, timeout_s: float = 60.0, want: int = 200) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == want:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} in {timeout_s}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()


def python(*module_args: str) -> list[str]:
    return [sys.executable, "-m", *module_args]


def child_pids(pid: int) -> set[int]:
    """The running processes `pid` started (each of its threads' /proc children)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        out |= {int(c) for c in (task / "children").read_text().split()}
    return out
