"""pricing.yaml reloaded on SIGHUP by a real `gateway serve` (one process, and a supervisor with
two workers): the new prices without a restart, and a bad file keeping the old ones, counted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fakes.server import free_port
from tests.processes import Process, child_pids, python

ADMIN = "adm-sighup-test"
METRICS = "met-sighup-test"


@dataclass
class Served:
    proc: Process
    base: str
    key: str
    pricing: Path
    processes: int  # --workers

    def price(self) -> float:
        r = httpx.get(f"{self.base}/v1/models/hidream-i1-full", headers={"Authorization": f"Bearer {self.key}"})
        assert r.status_code == 200, r.text
        return float(r.json()["price_per_image_usd"])

    def reloads(self, result: str) -> float:
        text = httpx.get(f"{self.base}/metrics", headers={"Authorization": f"Bearer {METRICS}"}).text
        for line in text.splitlines():
            if line.startswith(f'gateway_pricing_reloads_total{{result="{result}"}}'):
                return float(line.split()[-1])
        return 0.0

    def hangup(self) -> None:
        os.kill(self.proc.proc.pid, signal.SIGHUP)

    def workers(self) -> set[int]:
        """The PIDs of the supervisor's worker processes (none with one process)."""
        children = child_pids(self.proc.proc.pid)
        return {c for c in children if "gateway" in _cmdline(c) or "multiprocessing" in _cmdline(c)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20  # only keeps a broken gateway from hanging the test
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def served(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path, pricing_file: Path) -> Iterator[Served]:
    pricing = tmp_path / "pricing.yaml"
    pricing.write_text(pricing_file.read_text())
    port = free_port()
    env = {
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_PRICING_FILE": str(pricing),
        "GATEWAY_PRICING_RELOAD_S": "0",  # no periodic look: only the signal reloads
        "GATEWAY_ADMIN_KEY": ADMIN,
        "GATEWAY_METRICS_TOKEN": METRICS,
        "GATEWAY_LOG_LEVEL": "info",
    }
    args = python("gateway.cli", "serve", "--port", str(port), "--workers", str(request.param))
    proc = Process("gateway", args, env, tmp_path / "gateway.log")
    base = f"http://127.0.0.1:{port}"
    try:
        proc.wait_http(f"{base}/health", timeout_s=120)
        # /health answers from the first process up; a worker still starting would read the file
        # the test is about to change, and so show the new price without any reload.
        _eventually(
            lambda: proc.tail(400).count("Application startup complete") >= request.param,
            "not every worker process started",
        )
        admin = {"Authorization": f"Bearer {ADMIN}"}
        team = httpx.post(f"{base}/admin/teams", headers=admin, json={"name": "sighup", "monthly_budget_usd": 10})
        assert team.status_code in (200, 201), team.text
        key = httpx.post(f"{base}/admin/teams/{team.json()['id']}/keys", headers=admin, json={"name": "k"})
        assert key.status_code in (200, 201), key.text
        yield Served(proc, base, key.json()["key"], pricing, request.param)
    finally:
        proc.stop()


def _every_process_answers(served: Served, price: float) -> bool:
    # Requests are spread over the worker processes: enough in a row that each has answered.
    return all(served.price() == price for _ in range(12))


def test_sighup_reloads_new_prices_in_every_process_without_a_restart(served: Served) -> None:
    assert served.price() == 0.05
    workers = served.workers()
    assert len(workers) >= (served.processes if served.processes > 1 else 0)
    served.pricing.write_text(
        served.pricing.read_text().replace("price_per_image_usd: 0.05", "price_per_image_usd: 0.07")
    )
    time.sleep(0.5)
    assert served.price() == 0.05  # no periodic look: nothing changes until the signal
    served.hangup()
    _eventually(lambda: _every_process_answers(served, 0.07), "the new price was never listed everywhere")
    assert served.proc.proc.poll() is None
    assert served.workers() == workers  # the same processes: reloaded, not replaced
    assert "restarting processes" not in served.proc.tail(400)


def test_sighup_with_a_bad_file_keeps_the_prices_in_use_and_says_why(served: Served) -> None:
    served.pricing.write_text(
        served.pricing.read_text().replace("price_per_image_usd: 0.05", "price_per_image_usd: oops")
    )
    served.hangup()
    _eventually(lambda: served.reloads("rejected") >= 1, "the bad file was never seen")
    assert served.proc.proc.poll() is None
    assert _every_process_answers(served, 0.05)
    assert "price_per_image_usd" in served.proc.tail(400)  # the log names the field
