"""The benchmark's world on loopback, each piece a real process and its own session: a
redis-server (persisted as in production: append-only file, fsync every second, as
docker-compose.yml and the embedded default run it), the fake upstream (bench.perf.upstream, both
protocols on one port) and any number of gateways (`gateway serve --workers N`), each with a team whose limits never get
in the way and a key made at run time. Reusable by every bench.perf scenario:

    with perf_stack(StackOptions(workdir=...)) as stack:
        ours = stack.start_gateways([1, 2])           # waits for /ready and one good request each
        stack.upstream_stats(); stack.reset_upstream_stats()
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.perf.pricing import write_pricing
from bench.stack import wait_for_redis
from gateway.redis.embedded import find_redis_server
from tests.fakes.server import free_port
from tests.processes import ROOT, Process, python

MODEL = "hidream-i1-full"
BODY = {"model": MODEL, "prompt": "a red fox in the snow, studio light", "n": 1, "size": "1024x1024"}
# The admin API's maxima (16 667 requests a second, $10M): no benchmark run comes near them.
TEAM_LIMITS = {"requests_per_minute": 1_000_000, "images_per_minute": 1_000_000, "max_in_flight": 100_000}
TEAM_BUDGET_USD = 10_000_000.0


@dataclass(frozen=True, slots=True)
class StackOptions:
    workdir: Path
    delay_ms: float = 0.0  # the upstream's time per worker generation
    fal_delay_ms: float | None = None  # per fal job (None: delay_ms)
    image_bytes: int = 0  # pad the upstream's PNGs to about this size
    providers: tuple[str, ...] = ("local_gpu",)  # routes kept in the bench catalog
    gateway_env: Mapping[str, str] = field(default_factory=dict)  # extra settings for every gateway
    # The module run as `python -m <it> serve ...`: bench.memtrace traces the gateway's memory.
    gateway_module: str = "gateway.cli"


@dataclass(frozen=True, slots=True)
class Server:
    """A started server: its base URL, process group (= the leader's PID) and worker processes."""

    name: str
    url: str
    pgid: int
    workers: int
    key: str = ""  # the Bearer key a client sends ("" for the upstream)
    team_id: str = ""


class PerfStack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.workdir = options.workdir
        self.admin_key = "adm-" + secrets.token_urlsafe(24)
        self.fal_key = "bench-" + secrets.token_hex(4) + ":" + secrets.token_hex(16)
        self.redis_port = free_port()
        self.upstream_port = free_port()
        self.pricing_file = write_pricing(self.workdir / "pricing.yaml", options.providers)
        self._procs: dict[str, Process] = {}
        self.gateways: list[Server] = []

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def upstream(self) -> Server:
        return Server("upstream", f"http://127.0.0.1:{self.upstream_port}", self._procs["upstream"].proc.pid, 1)

    @property
    def redis_pgid(self) -> int:
        return self._procs["redis"].proc.pid

    # --- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        o = self.options
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._procs["redis"] = Process(
            "redis",
            [find_redis_server(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.workdir)],
            {}, self.workdir / "logs" / "redis.log",
        )  # fmt: skip
        fal_delay = o.delay_ms if o.fal_delay_ms is None else o.fal_delay_ms
        self._procs["upstream"] = Process(
            "upstream",
            python("bench.perf.upstream", "--port", str(self.upstream_port), "--delay-ms", str(o.delay_ms),
                   "--fal-delay-ms", str(fal_delay), "--image-bytes", str(o.image_bytes)),
            {}, self.workdir / "logs" / "upstream.log",
        )  # fmt: skip
        self._wait_redis()
        self._procs["upstream"].wait_http(self.upstream.url + "/health")

    def stop(self) -> None:
        for name in reversed(list(self._procs)):
            self._procs.pop(name).stop()
        self.gateways.clear()

    # --- gateways -------------------------------------------------------------------------------

    def start_gateways(self, worker_counts: Sequence[int], env: Mapping[str, str] | None = None) -> list[Server]:
        """Start one gateway per entry side by side, then wait for each; names are ours-w<N>."""
        started = [(self._spawn_gateway(f"ours-w{n}", n, env or {}), n) for n in worker_counts]
        return [self._finish_gateway(name, port, n) for (name, port), n in started]

    def start_gateway(
        self,
        workers: int,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        *,
        prefix: Sequence[str] = (),
        checkout: Path | None = None,
        ready_timeout_s: float = 120,
    ) -> Server:
        """`prefix`: a command the gateway runs under (valgrind, say); `checkout`: the project
        checkout whose code it runs (another commit's, as a baseline), by default this one."""
        name, port = self._spawn_gateway(name or f"ours-w{workers}", workers, env or {}, prefix, checkout)
        return self._finish_gateway(name, port, workers, ready_timeout_s)

    def stop_gateway(self, gateway: Server) -> None:
        self._procs.pop(gateway.name).stop()
        self.gateways.remove(gateway)

    def gateway_env(self, url: str, data_dir: Path) -> dict[str, str]:
        env = {
            "GATEWAY_REDIS_URL": self.redis_url,
            "GATEWAY_ADMIN_KEY": self.admin_key,
            "GATEWAY_PRICING_FILE": str(self.pricing_file),
            "GATEWAY_DATA_DIR": str(data_dir),
            "GATEWAY_PUBLIC_URL": url,
            "GATEWAY_LOG_LEVEL": "warning",
        }
        if "local_gpu" in self.options.providers:
            env["GATEWAY_LOCAL_GPU_URLS"] = self.upstream.url
        if "fal" in self.options.providers:
            env["GATEWAY_FAL_KEY"] = self.fal_key
            env["GATEWAY_FAL_QUEUE_URL"] = self.upstream.url
        return env | dict(self.options.gateway_env)

    def _spawn_gateway(
        self, name: str, workers: int, env: Mapping[str, str], prefix: Sequence[str] = (), checkout: Path | None = None
    ) -> tuple[str, int]:
        if name in self._procs:
            raise ValueError(f"a gateway named {name} is already running")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        full_env = self.gateway_env(url, self.workdir / name / "data") | dict(env)
        (self.workdir / name).mkdir(parents=True, exist_ok=True)
        self._procs[name] = Process(
            name,
            [*prefix, *python(self.options.gateway_module, "serve", "--host", "127.0.0.1", "--port", str(port),
                              "--workers", str(workers))],
            full_env, self.workdir / "logs" / f"{name}.log", cwd=checkout or ROOT,
        )  # fmt: skip
        return name, port

    def _finish_gateway(self, name: str, port: int, workers: int, ready_timeout_s: float = 120) -> Server:
        proc = self._procs[name]
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(url + "/ready", timeout_s=ready_timeout_s)
        team_id, key = new_team_key(url, self.admin_key, name)
        providers = self.options.providers
        check_generation(url, key, expect_provider=providers[0] if len(providers) == 1 else None)
        server = Server(name, url, proc.proc.pid, workers, key=key, team_id=team_id)
        self.gateways.append(server)
        return server

    # --- the upstream's counters -----------------------------------------------------------------

    def upstream_stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in httpx.get(self.upstream.url + "/_stats", timeout=5).json().items()}

    def reset_upstream_stats(self) -> None:
        httpx.post(self.upstream.url + "/_stats/reset", timeout=5).raise_for_status()

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self._procs[name].tail(lines)

    def _wait_redis(self) -> None:
        wait_for_redis(self.redis_url)


@contextmanager
def perf_stack(options: StackOptions) -> Iterator[PerfStack]:
    stack = PerfStack(options)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def new_team_key(gateway_url: str, admin_key: str, name: str) -> tuple[str, str]:
    """A team whose limits and budget never get in the way, and one key: (team id, key)."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=10) as client:
        body = {"name": f"bench-{name}-{secrets.token_hex(3)}", "monthly_budget_usd": TEAM_BUDGET_USD,
                "limits": TEAM_LIMITS}  # fmt: skip
        team = client.post("/admin/teams", json=body)
        if team.status_code not in (200, 201):
            raise RuntimeError(f"POST /admin/teams answered {team.status_code}: {team.text[:500]}")
        team_id = str(team.json()["id"])
        key = client.post(f"/admin/teams/{team_id}/keys", json={"name": "bench"})
        if key.status_code not in (200, 201):
            raise RuntimeError(f"POST /admin/teams/{team_id}/keys answered {key.status_code}: {key.text[:500]}")
        return team_id, str(key.json()["key"])


def check_generation(url: str, key: str, *, expect_provider: str | None, path: str = "/v1/images/generations") -> None:
    """One image request must succeed before anything is measured (a 4xx under load hides here)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = httpx.post(url + path, json=BODY, headers=headers, timeout=60)
    if resp.status_code != 200:
        raise RuntimeError(f"{url}{path} answered {resp.status_code}: {resp.text[:500]}")
    provider = resp.headers.get("x-gateway-provider")
    if expect_provider is not None and provider != expect_provider:
        raise RuntimeError(f"{url} served by {provider!r}, expected {expect_provider!r}")
