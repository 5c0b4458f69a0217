"""The benchmark's world on loopback, every piece a real process: a redis-server, the GPU workers
(bench.fake_worker), the fake fal server and the gateway (`gateway serve`). Also the few admin
calls a run needs: a team and key, fal fault injection, and the team's ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from gateway.accounting.keys import team_prefix
from gateway.redis.embedded import find_redis_server
from tests.fakes.server import free_port
from tests.processes import Process, python

ADMIN_KEY = "adm-bench-" + "k" * 24
FAL_KEY = "bench-key-id:bench-key-secret"


@dataclass(frozen=True, slots=True)
class StackConfig:
    workdir: Path
    pricing_file: Path
    worker_variants: tuple[str, ...]  # one worker process per entry
    worker_step_s: float
    worker_max_queue: int
    fal_inference_s: float
    fal_queue_s: float
    probe_interval_s: float
    fal_poll_initial_s: float
    fal_poll_factor: float
    fal_poll_max_s: float
    request_deadline_s: float
    breaker_cooldown_s: float


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    request_id: str
    status: str
    model: str
    provider: str
    images: int
    provider_cost_micros: int


class Stack:
    """Redis and the workers live for the whole benchmark; fal and the gateway are started fresh
    for every run, so no run inherits another's breaker state, latency history or armed faults."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.redis_port = free_port()
        self._redis: Process | None = None
        self._workers: list[tuple[str, int, Process | None]] = []
        self._fal: Process | None = None
        self._gateway: Process | None = None
        self.fal_url = ""
        self.gateway_url = ""

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    # --- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        c = self.config
        c.workdir.mkdir(parents=True, exist_ok=True)
        # No persistence: an fsync per admission would be noise in the latencies measured here.
        self._redis = Process(
            "redis",
            [find_redis_server(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(c.workdir)],
            {}, c.workdir / "redis.log",
        )  # fmt: skip
        self._wait_redis()
        self._workers = [(variant, free_port(), None) for variant in c.worker_variants]
        for i in range(len(self._workers)):
            self.start_worker(i, wait=False)
        for i in range(len(self._workers)):
            self._wait_worker(i)

    def stop(self) -> None:
        self.stop_run()
        for i, (_, _, proc) in enumerate(self._workers):
            if proc is not None:
                proc.stop()
            self._workers[i] = (self._workers[i][0], self._workers[i][1], None)
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def start_run(self, name: str) -> None:
        """A fresh fal and gateway, started side by side, once every worker is ready."""
        c = self.config
        fal_port, gw_port = free_port(), free_port()
        self.fal_url = f"http://127.0.0.1:{fal_port}"
        self.gateway_url = f"http://127.0.0.1:{gw_port}"
        logs = c.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self._fal = Process(
            "fal",
            python("tests.fakes.fal_server", "--port", str(fal_port), "--key", FAL_KEY,
                   "--inference-s", str(c.fal_inference_s), "--queue-s", str(c.fal_queue_s)),
            {}, logs / f"{name}-fal.log",
        )  # fmt: skip
        self._clear_route_health()
        self._gateway = Process(
            "gateway",
            python("gateway.cli", "serve", "--port", str(gw_port)),
            self._gateway_env(),
            logs / f"{name}-gw.log",
        )
        for i in range(len(self._workers)):  # one may be restarting after the last run killed it
            self._wait_worker(i)
        self._fal.wait_http(self.fal_url + "/_fake/stats")
        self._gateway.wait_http(self.gateway_url + "/ready")
        time.sleep(3 * c.probe_interval_s)  # so that the gateway's probes have seen every worker

    def stop_run(self) -> None:
        for proc in (self._gateway, self._fal):
            if proc is not None:
                proc.stop()
        self._gateway = self._fal = None

    def _gateway_env(self) -> dict[str, str]:
        c = self.config
        urls = ",".join(self.worker_urls())
        return {
            "GATEWAY_REDIS_URL": self.redis_url,
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_FAL_KEY": FAL_KEY,
            "GATEWAY_FAL_QUEUE_URL": self.fal_url,
            "GATEWAY_LOCAL_GPU_URLS": urls,
            "GATEWAY_DATA_DIR": str(c.workdir / "gateway-data"),
            "GATEWAY_PUBLIC_URL": self.gateway_url,
            "GATEWAY_PRICING_FILE": str(c.pricing_file),
            "GATEWAY_PROBE_INTERVAL_S": str(c.probe_interval_s),
            "GATEWAY_FAL_POLL_INITIAL_S": str(c.fal_poll_initial_s),
            "GATEWAY_FAL_POLL_FACTOR": str(c.fal_poll_factor),
            "GATEWAY_FAL_POLL_MAX_S": str(c.fal_poll_max_s),
            "GATEWAY_REQUEST_DEADLINE_S": str(c.request_deadline_s),
            "GATEWAY_LOG_LEVEL": "warning",
            # Scaled like every other duration (Settings.breaker_cooldown_s).
            "GATEWAY_BREAKER_COOLDOWN_S": str(c.breaker_cooldown_s),
        }

    # --- workers --------------------------------------------------------------------------------

    def start_worker(self, index: int, *, wait: bool = True) -> None:
        variant, port, old = self._workers[index]
        if old is not None:
            old.stop()
        c = self.config
        proc = Process(
            f"worker-{index}",
            python("bench.fake_worker", "--port", str(port), "--variant", variant,
                   "--step-s", str(c.worker_step_s), "--max-queue", str(c.worker_max_queue)),
            {}, c.workdir / f"worker-{index}.log",
        )  # fmt: skip
        self._workers[index] = (variant, port, proc)
        if wait:
            self._wait_worker(index)

    def kill_worker(self, index: int) -> None:
        """SIGKILL, as a crashed GPU box: no graceful shutdown, connections just drop."""
        proc = self._workers[index][2]
        if proc is not None and proc.proc.poll() is None:
            os.killpg(proc.proc.pid, signal.SIGKILL)
            proc.proc.wait()

    def worker_alive(self, index: int) -> bool:
        proc = self._workers[index][2]
        return proc is not None and proc.proc.poll() is None

    def worker_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for _, port, _ in self._workers]

    async def time_jobs(self, jobs: int = 3) -> dict[str, float]:
        """Each worker's model and its median time for one job, sent straight to it."""

        async def one(client: httpx.AsyncClient, url: str) -> tuple[str, float]:
            model = str((await client.get(url + "/ready")).json()["model"])
            times = []
            for i in range(jobs):
                started = time.monotonic()
                body = {"model": model, "prompt": f"calibrate {i}"}
                (await client.post(url + "/v1/images/generations", json=body)).raise_for_status()
                times.append(time.monotonic() - started)
            return model, statistics.median(times)

        async with httpx.AsyncClient(timeout=60) as client:
            return dict(await asyncio.gather(*(one(client, url) for url in self.worker_urls())))

    def _wait_worker(self, index: int) -> None:
        _, port, proc = self._workers[index]
        assert proc is not None
        proc.wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=120)

    # --- redis ------------------------------------------------------------------------------------

    def _wait_redis(self) -> None:
        wait_for_redis(self.redis_url)

    def _clear_route_health(self) -> None:
        """Breaker states and latency history are shared through Redis; each run starts without."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match="gw:{route:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def ledger(self, team_id: str) -> list[LedgerEntry]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            rows: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(team_prefix(team_id) + "ledger")  # type: ignore[assignment]
        finally:
            client.close()
        out = []
        for _, raw in rows:
            f = {k.decode(): v.decode() for k, v in raw.items()}
            out.append(
                LedgerEntry(
                    request_id=f.get("request_id", ""),
                    status=f.get("status", ""),
                    model=f.get("model", ""),
                    provider=f.get("provider", ""),
                    images=int(f.get("images", "0")),
                    provider_cost_micros=int(f.get("provider_cost_micros", "0")),
                )
            )
        return out

    # --- admin ------------------------------------------------------------------------------------

    def new_team_key(self, name: str) -> tuple[str, str]:
        """A team whose limits and budget never get in the way of the workload: (team id, key)."""
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        limits = {"requests_per_minute": 1_000_000, "images_per_minute": 1_000_000, "max_in_flight": 100_000}
        with httpx.Client(base_url=self.gateway_url, headers=headers, timeout=10) as client:
            team = client.post("/admin/teams", json={"name": name, "monthly_budget_usd": 1_000_000, "limits": limits})
            team.raise_for_status()
            team_id = str(team.json()["id"])
            key = client.post(f"/admin/teams/{team_id}/keys", json={"name": "bench"})
            key.raise_for_status()
            return team_id, str(key.json()["key"])


def wait_for_redis(url: str, timeout_s: float = 10.0) -> None:
    """Until a redis-server just started answers PING (both benchmarks start their own)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()
