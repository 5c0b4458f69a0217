"""A gateway stack as real processes for end-to-end tests: `gateway serve` (two worker processes)
on a real redis-server, the fake fal server, optionally the tiny CPU worker (`--tiny-worker`: the
real worker service running diffusers' HiDream pipeline with small random weights), a team with
a key, and clients of the real `openai` package."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import redis

from gateway.accounting.keys import team_prefix
from tests.api.conftest import wait_for
from tests.fakes.server import free_port
from tests.processes import Process, python
from tests.redis_server import RedisServer


@dataclass
class Stack:
    base: str
    admin: httpx.Client
    fal: str
    redis_url: str
    team_id: str
    key: str
    admin_key: str
    metrics_token: str
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, key: str | None = None, *, strict: bool = False) -> openai.OpenAI:
        """`strict`: the SDK validates every answer against its types (extra fields allowed)."""
        made = openai.OpenAI(
            base_url=self.base + "/v1", api_key=key or self.key, max_retries=0, _strict_response_validation=strict
        )
        self.clients.append(made)  # closed at teardown: an unclosed one leaks its sockets
        return made

    def settled(self, timeout_s: float = 10.0) -> None:
        """Returns once none of the team's requests is in flight (no reservation is left): a served
        request is settled just after its answer is handed over, so an earlier test's last request
        may still be settling when the next test reads what the team was charged."""
        with redis.Redis.from_url(self.redis_url) as r:
            wait_for(lambda: not r.hlen(team_prefix(self.team_id) + "res"), "the team's requests to settle", timeout_s)

    def settled_ledger(self) -> list[tuple[str, int]]:
        """The ledger once none of the team's requests is in flight: all an earlier test sent is in it."""
        self.settled()
        return self.ledger()

    def ledger(self) -> list[tuple[str, int]]:
        """The team's settled requests, oldest first: (status, charged micro-dollars)."""
        r = redis.Redis.from_url(self.redis_url)
        try:
            events = r.xrange(team_prefix(self.team_id) + "ledger")
        finally:
            r.close()
        return [(f[b"status"].decode(), int(f[b"charged_micros"])) for _, f in events]


@contextmanager
def running_stack(
    redis_server: RedisServer,
    tmp: Path,
    *,
    tiny_worker: bool = False,
    team: dict[str, object] | None = None,
    gateway_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """`gateway_env`: more of the gateway's settings (GATEWAY_* variables)."""
    fal_key = f"{secrets.token_hex(4)}:{secrets.token_hex(8)}"
    admin_key = "adm-" + secrets.token_hex(8)
    metrics_token = "met-" + secrets.token_hex(8)
    fal_port, gw_port = free_port(), free_port()
    fal = Process(
        "fake-fal",
        python("tests.fakes.fal_server", "--port", str(fal_port), "--key", fal_key, "--inference-s", "0.05"),
        {},
        tmp / "fal.log",
    )
    base = f"http://127.0.0.1:{gw_port}"
    env = {
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_ADMIN_KEY": admin_key,
        "GATEWAY_METRICS_TOKEN": metrics_token,
        "GATEWAY_FAL_KEY": fal_key,
        "GATEWAY_FAL_QUEUE_URL": f"http://127.0.0.1:{fal_port}",
        "GATEWAY_FAL_POLL_INITIAL_S": "0.02",
        "GATEWAY_DATA_DIR": str(tmp / "data"),
        "GATEWAY_PUBLIC_URL": base,
        "HF_HUB_OFFLINE": "1",
        **(gateway_env or {}),
    }
    args = ["serve", "--port", str(gw_port), "--workers", "2"] + (["--tiny-worker"] if tiny_worker else [])
    gw = Process("gateway", python("gateway.cli", *args), env, tmp / "gw.log")
    admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    try:
        fal.wait_http(f"http://127.0.0.1:{fal_port}/_fake/stats")
        gw.wait_http(base + "/health", timeout_s=300 if tiny_worker else 60)
        made = admin.post("/admin/teams", json={"name": "e2e", "monthly_budget_usd": 50.0, **(team or {})}).json()
        key = admin.post(f"/admin/teams/{made['id']}/keys", json={"name": "e2e"}).json()["key"]
        fal_url = f"http://127.0.0.1:{fal_port}"
        stack = Stack(base, admin, fal_url, redis_server.url, made["id"], key, admin_key, metrics_token)
        yield stack
        for client in stack.clients:
            client.close()
    finally:
        admin.close()
        gw.stop()
        fal.stop()
