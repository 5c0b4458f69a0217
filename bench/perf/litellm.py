"""LiteLLM's proxy as the peer measured beside the gateway: installed into a throwaway venv (never a
dependency of this project), configured to route hidream-i1-full to the same fake upstream, run
without a database, each instance a session leader stopped by its PID.
The flags and environment follow /work/shared/bench/peers/litellm/run.sh."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from bench.perf.procs import spawn, stop_group, wait_idle
from bench.perf.stack import BODY, MODEL, Server
from tests.fakes.server import free_port

VERSION = "1.106.2"
CONSTRAINTS = Path(__file__).resolve().parent / "litellm-constraints.txt"
DEFAULT_VENV = Path("/tmp/perfbench/litellm-venv")
# Settings a caller's environment may carry that would give LiteLLM a database or a cache.
DROPPED_ENV = ("DATABASE_URL", "DIRECT_URL", "DATABASE_HOST", "DATABASE_USERNAME", "DATABASE_PASSWORD",
               "DATABASE_NAME", "REDIS_HOST", "REDIS_URL", "REDIS_PORT", "REDIS_PASSWORD")  # fmt: skip


def installed_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(venv: Path = DEFAULT_VENV) -> str:
    """Create the venv and install the pinned litellm[proxy] unless it is already there (minutes)."""
    if installed_version(venv) == VERSION and (venv / "bin" / "litellm").exists():
        return VERSION
    print(f"installing litellm[proxy]=={VERSION} into {venv} (a few minutes)...", flush=True)
    python3 = shutil.which("python3") or "python3"
    if not (venv / "bin" / "python").exists():
        subprocess.run([python3, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, f"litellm[proxy]=={VERSION}", "-c", str(CONSTRAINTS)], check=True)
    found = installed_version(venv)
    if found != VERSION:
        raise RuntimeError(f"litellm {found} in {venv}, wanted {VERSION}")
    return VERSION


def write_config(path: Path, upstream_url: str, master_key: str) -> Path:
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {"model": f"openai/{MODEL}", "api_base": upstream_url + "/v1", "api_key": "fake"},
                "model_info": {"mode": "image_generation"},
            }
        ],
        # No database_url: the proxy runs without Postgres and accepts only the master key.
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"set_verbose": False, "callbacks": [], "success_callback": [], "failure_callback": []},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class LiteLLMPeers:
    """LiteLLM instances, one per worker count, all routed to one upstream."""

    def __init__(self, workdir: Path, upstream_url: str, venv: Path = DEFAULT_VENV) -> None:
        self.workdir = workdir / "litellm"
        self.upstream_url = upstream_url
        self.venv = venv
        self.master_key = "sk-bench-" + secrets.token_hex(12)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, workers: int, *, ready_timeout_s: float = 240.0) -> Server:
        name = f"litellm-w{workers}"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = write_config(self.workdir / f"config-{name}.yaml", self.upstream_url, self.master_key)
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV and not k.startswith("GATEWAY_")}
        # ERROR: no per-request access log. LOCAL_MODEL_COST_MAP: no fetch from the internet at import.
        env |= {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        args = [str(self.venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                "--port", str(port), "--num_workers", str(workers)]  # fmt: skip
        proc = spawn(args, env, self.workdir / f"{name}.log", cwd=self.workdir)
        self._procs[name] = proc
        self._wait_ready(name, proc, url, ready_timeout_s)
        # The first 200 proves one worker is up; the others are still importing the app.
        wait_idle([proc.pid], quiet_s=2.0, timeout_s=90)
        return Server(name, url, proc.pid, workers, key=self.master_key)

    def stop_all(self) -> None:
        for name in list(self._procs):
            stop_group(self._procs.pop(name))

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {self.master_key}"}
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.workdir / (name + '.log')}")
            try:
                resp = httpx.post(url + "/v1/images/generations", json=BODY, headers=headers, timeout=5)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s ({last})")


@contextmanager
def litellm_peers(workdir: Path, upstream_url: str, venv: Path = DEFAULT_VENV) -> Iterator[LiteLLMPeers]:
    peers = LiteLLMPeers(workdir, upstream_url, venv)
    try:
        yield peers
    finally:
        peers.stop_all()
