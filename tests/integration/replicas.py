"""Several gateway replicas as real processes on one real redis-server, behind the fake fal."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fakes.server import free_port
from tests.processes import Process, python
from tests.redis_server import RedisServer


@dataclass
class Cluster:
    bases: list[str]
    admin_key: str
    redis: RedisServer
    fal: str
    processes: list[Process]

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.bases[0], headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)

    def team(
        self, name: str, *, budget: float = 1000.0, rpm: int = 10_000, ipm: int = 10_000, inflight: int = 1000
    ) -> tuple[str, str]:
        limits = {"requests_per_minute": rpm, "images_per_minute": ipm, "max_in_flight": inflight}
        with self.admin() as admin:
            team = admin.post(
                "/admin/teams", json={"name": name, "monthly_budget_usd": budget, "limits": limits}
            ).json()
            key = admin.post(f"/admin/teams/{team['id']}/keys").json()["key"]
        return team["id"], key


@contextmanager
def running_cluster(
    tmp: Path, *, fal_inference_s: float = 0.3, gateway_env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """Two `gateway serve --workers 2` replicas on one real redis-server, behind the fake fal;
    `gateway_env`: more settings for both (GATEWAY_* variables)."""
    server = RedisServer(tmp / "redis")
    server.start()
    fal_key = f"{secrets.token_hex(4)}:{secrets.token_hex(8)}"
    admin_key = "adm-" + secrets.token_hex(8)
    fal_port = free_port()
    fal = Process(
        "fake-fal",
        python(
            "tests.fakes.fal_server", "--port", str(fal_port), "--key", fal_key, "--inference-s", str(fal_inference_s)
        ),
        {},
        tmp / "fal.log",
    )
    gateways: list[Process] = []
    bases: list[str] = []
    try:
        fal.wait_http(f"http://127.0.0.1:{fal_port}/_fake/stats")
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            base = f"http://127.0.0.1:{port}"
            env = {
                "GATEWAY_REDIS_URL": server.url,
                "GATEWAY_ADMIN_KEY": admin_key,
                "GATEWAY_FAL_KEY": fal_key,
                "GATEWAY_FAL_QUEUE_URL": f"http://127.0.0.1:{fal_port}",
                "GATEWAY_FAL_POLL_INITIAL_S": "0.02",
                "GATEWAY_FAL_POLL_MAX_S": "0.1",
                "GATEWAY_DATA_DIR": str(tmp / f"data{i}"),
                # As the README asks of replicas: one public address (the first replica's stands
                # for a load balancer's) and one image store (a shared directory here;
                # tests/integration/test_store_replicas.py gives them a bucket instead).
                "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{ports[0]}",
                "GATEWAY_IMAGE_STORE": f"file://{tmp / 'images'}",
                **(gateway_env or {}),
            }
            args = python("gateway.cli", "serve", "--port", str(port), "--workers", "2")
            gateways.append(Process(f"gateway{i}", args, env, tmp / f"gw{i}.log"))
            bases.append(base)
        for gw, base in zip(gateways, bases, strict=True):
            gw.wait_http(base + "/health")
        yield Cluster(bases, admin_key, server, f"http://127.0.0.1:{fal_port}", gateways)
    finally:
        for gw in gateways:
            gw.stop()
        fal.stop()
        server.stop()
