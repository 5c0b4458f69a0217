"""What one request costs Redis, and so how many requests one Redis (and a three-node cluster)
carries: the gateway's real scripts and Redis calls, driven by the gateway's own classes.

    python -m bench.redis_scale                          # single Redis and a 3-node cluster: ~3 min
    python -m bench.redis_scale --deployments single --seconds 10

Per deployment (a redis-server with its append-only file, fsync every second, as deployed; a
three-node Redis Cluster with the same persistence) and `--teams` teams:

1. **requests**: `--concurrency` callers in one process, each doing what a request does to Redis:
   the route health read (`RouteHealth.stats`, cached per process, refreshed behind), admission
   (`Meter.admit`: admit.lua), the success noted (`RouteHealth.succeeded`, flushed in batches by
   the background task every 0.25 s: route_record.lua), settlement (`Meter.settle`: settle.lua,
   with the event fields the gateway writes). Each caller picks a team at random per request.
2. **scripts apart**: the same number of admissions, then their settlements, each phase measured
   alone, for each script's own cost.
3. **per process**: what each gateway process does to Redis whatever its traffic: the job queue
   poll (twice a second), the route health refresh (twice a second) and the budget gauges'
   refresh (every 15 s, two reads per team), each called many times and measured.
4. on a cluster, **one hot team**: every request from one team, whose keys share one slot.

Measured on Redis' side: the CPU seconds of each redis-server process over the phase (/proc:
scripts, sockets, the AOF buffer) and INFO commandstats (usec per call: time inside the command).
From them, per request: Redis CPU us, the ceiling 1e6 / that (Redis runs commands and scripts on
one thread: one core's worth), and for a cluster the ceiling set by its busiest node. The client
is one Python process on the same machine; its rate is what it could send, not Redis' limit,
and the ceilings are figures of CPU per request, which hardly depend on the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.redis_nodes import NodeReading, Nodes, cluster, single
from gateway.accounting.billing_metrics import BillingMetrics
from gateway.accounting.keys import KeyStore, TeamLimits, team_prefix
from gateway.accounting.metering import Admission, Meter, Settlement
from gateway.ids import RandomIds, request_id
from gateway.jobs.store import JobStore
from gateway.metrics import Metrics
from gateway.redis.client import RedisClient, connect
from gateway.redis.scripts import ScriptClient, script_client_for
from gateway.routing.breaker import RouteHealth

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "hidream-i1-full"
ROUTES = [("local_gpu", MODEL), ("fal", MODEL)]  # the model's routes in pricing.yaml, read per request
PRICE, COST = 50_000, 30_000  # micro-USD
HOLD_S = 360.0  # the request deadline + 60 s, as the service holds a reservation
LIMITS = TeamLimits(requests_per_minute=1_000_000, images_per_minute=1_000_000, max_in_flight=100_000)
PROCESS_RATES = {"job_poll": 2.0, "route_refresh": 2.0, "billing_refresh": 1 / 15}  # calls per second per process


@dataclass(frozen=True, slots=True)
class Phase:
    deployment: str
    name: str
    operations: int  # requests, or calls of a per-process operation
    wall_s: float
    nodes: list[NodeReading]

    @property
    def cpu_us_per_op(self) -> float:
        return 1e6 * sum(n.cpu_s for n in self.nodes) / self.operations

    @property
    def busiest_cpu_us_per_op(self) -> float:
        """The busiest node's CPU per operation of the whole deployment (a cluster's ceiling)."""
        return 1e6 * max(n.cpu_s for n in self.nodes) / self.operations

    def usec_per_op(self, command: str) -> float:
        return sum(n.commands[command].usec for n in self.nodes if command in n.commands) / self.operations

    def calls_per_op(self, command: str) -> float:
        return sum(n.calls(command) for n in self.nodes) / self.operations

    def as_json(self) -> dict[str, object]:
        return asdict(self) | {"cpu_us_per_op": self.cpu_us_per_op, "busiest_cpu_us_per_op": self.busiest_cpu_us_per_op}


@dataclass(slots=True)
class Gateway:
    """The gateway's Redis-facing parts, as one process has them."""

    redis: RedisClient
    scripts: ScriptClient | None
    meter: Meter
    health: RouteHealth
    jobs: JobStore
    billing: BillingMetrics

    @classmethod
    def on(cls, url: str) -> Gateway:
        # Room for every caller and the background reads at once: redis-py's cluster client raises
        # MaxConnectionsError past its per-node limit instead of waiting (the gateway's default, 64,
        # is hit by 64 callers of one hot team plus a route refresh).
        redis = connect(url, max_connections=256)
        scripts = script_client_for(url)
        return cls(redis, scripts, Meter(redis, scripts=scripts), RouteHealth(redis), JobStore(redis, keep_s=3600),
                   BillingMetrics(redis, Metrics()))  # fmt: skip

    async def aclose(self) -> None:
        await self.redis.aclose()
        if self.scripts is not None:
            await self.scripts.aclose()


def _fields(team_id: str) -> tuple[tuple[str, str], ...]:
    """The event fields the service writes with a success (gateway/service.py _fields)."""
    return (("team_id", team_id), ("key_id", "key_" + team_id[-8:]), ("provider", "local_gpu"),
            ("size", "1024x1024"), ("requested_images", "1"), ("kind", "generation"), ("latency_ms", "412"),
            ("error_kind", ""))  # fmt: skip


async def _requests(gw: Gateway, teams: Sequence[str], seconds: float, concurrency: int, seed: int) -> int:
    rng, ids = random.Random(seed), RandomIds()
    stop_at = time.monotonic() + seconds
    done = 0

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            team = teams[rng.randrange(len(teams))]
            await gw.health.stats(ROUTES)
            admitted = await gw.meter.admit(team, request_id(ids), 1, PRICE, HOLD_S)
            assert isinstance(admitted, Admission)
            await gw.health.succeeded("local_gpu", MODEL, 0.412)
            settled = Settlement("succeeded", 1, PRICE, COST, MODEL, _fields(team))
            if await gw.meter.settle(admitted, settled) != PRICE:
                raise RuntimeError("a settlement charged other than the price")
            done += 1

    flusher = asyncio.create_task(gw.health.flush_forever())
    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
    await gw.health.flush()
    return done


async def _bounded(calls: Sequence[Callable[[], Awaitable[object]]], concurrency: int) -> None:
    queue = list(reversed(calls))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _measure(nodes: Nodes, deployment: str, name: str, work: Callable[[], Awaitable[int]]) -> Phase:
    cpu = nodes.reset()
    started = time.monotonic()
    operations = await work()
    wall = time.monotonic() - started
    phase = Phase(deployment, name, operations, wall, nodes.read(cpu))
    print(_line(phase), flush=True)
    return phase


async def run_deployment(nodes: Nodes, args: argparse.Namespace) -> list[Phase]:
    gw = Gateway.on(nodes.url)
    d = nodes.kind
    try:
        keys = KeyStore(gw.redis)
        teams = [(await keys.create_team(f"scale-{i}", 10_000_000.0, LIMITS)).id for i in range(args.teams)]
        spread = {n.port: 0 for n in nodes.nodes}
        for t in teams:
            spread[nodes.port_of(team_prefix(t) + "team")] += 1
        print(f"== {d} ({nodes.url}): {args.teams} teams by node {spread}", flush=True)
        await _requests(gw, teams, args.warmup, args.concurrency, args.seed)  # connections, scripts loaded, windows
        phases = [await _measure(nodes, d, "requests", lambda: _requests(gw, teams, args.seconds, args.concurrency,
                                                                         args.seed + 1))]  # fmt: skip
        phases += await _scripts_apart(gw, nodes, d, teams, phases[0].operations, args)
        phases += await _per_process(gw, nodes, d, args)
        if len(nodes.nodes) > 1:
            hot = teams[:1]
            phases.append(await _measure(nodes, d, "requests, one hot team", lambda: _requests(
                gw, hot, args.seconds, args.concurrency, args.seed + 2)))  # fmt: skip
        return phases
    finally:
        await gw.aclose()


async def _scripts_apart(
    gw: Gateway, nodes: Nodes, d: str, teams: Sequence[str], n: int, args: argparse.Namespace
) -> list[Phase]:
    rng, ids = random.Random(args.seed + 3), RandomIds()
    n = max(1000, min(n, 20_000))  # as many as the steady phase served, within what stays realistic in flight
    admitted: list[Admission] = []

    async def admit_one() -> None:
        got = await gw.meter.admit(teams[rng.randrange(len(teams))], request_id(ids), 1, PRICE, HOLD_S)
        assert isinstance(got, Admission)
        admitted.append(got)

    async def admit_all() -> int:
        await _bounded([admit_one] * n, args.concurrency)
        return n

    async def settle_all() -> int:
        async def settle(a: Admission) -> None:
            await gw.meter.settle(a, Settlement("succeeded", 1, PRICE, COST, MODEL, _fields(a.team_id)))

        await _bounded([lambda a=a: settle(a) for a in admitted], args.concurrency)  # type: ignore[misc]
        return len(admitted)

    return [await _measure(nodes, d, "admit.lua alone", admit_all),
            await _measure(nodes, d, "settle.lua alone", settle_all)]  # fmt: skip


async def _per_process(gw: Gateway, nodes: Nodes, d: str, args: argparse.Namespace) -> list[Phase]:
    """Each background operation many times over, for its cost per call."""

    async def repeat(call: Callable[[], Awaitable[object]], n: int) -> int:
        await _bounded([call] * n, 8)
        return n

    fresh = RouteHealth(gw.redis, cache_s=0)  # every stats() call reads Redis, as the refresh does
    return [
        await _measure(nodes, d, "job_poll", lambda: repeat(lambda: gw.jobs.lease("scale-bench", 60.0), 4000)),
        await _measure(nodes, d, "route_refresh", lambda: repeat(lambda: fresh.stats(ROUTES), 2000)),
        await _measure(nodes, d, "billing_refresh", lambda: repeat(gw.billing.refresh, 20)),
    ]


# --- the report -----------------------------------------------------------------------------------


def _line(p: Phase) -> str:
    busy = sum(n.cpu_s for n in p.nodes) / p.wall_s
    nodes = " ".join(f"{n.port}:{n.cpu_s:.2f}s/{n.calls('evalsha')}" for n in p.nodes)
    rate = p.operations / p.wall_s
    return (f"  {p.deployment:<8} {p.name:<24} {p.operations:>7} in {p.wall_s:5.1f} s ({rate:7.0f}/s)"
            f"  Redis CPU {p.cpu_us_per_op:7.1f} us/op, busiest node {p.busiest_cpu_us_per_op:7.1f}, Redis busy "
            f"{busy:.2f} cores  evalsha {p.calls_per_op('evalsha'):.2f}/op {p.usec_per_op('evalsha'):.1f} us/op"
            f"  [node: cpu/evalsha calls] {nodes}")  # fmt: skip


def model(phases: Sequence[Phase]) -> dict[str, dict[str, float]]:
    """Per deployment: CPU per request and per process-second, and the ceilings they give."""
    out: dict[str, dict[str, float]] = {}
    for d in dict.fromkeys(p.deployment for p in phases):
        by = {p.name: p for p in phases if p.deployment == d}
        req = by["requests"]
        per_process = sum(by[name].cpu_us_per_op * rate for name, rate in PROCESS_RATES.items())
        busiest_process = sum(by[name].busiest_cpu_us_per_op * rate for name, rate in PROCESS_RATES.items())
        figures = {
            "cpu_us_per_request": req.cpu_us_per_op,
            "evalsha_usec_per_request": req.usec_per_op("evalsha"),
            "admit_cpu_us": by["admit.lua alone"].cpu_us_per_op,
            "admit_usec_per_call": _usec_per_call(by["admit.lua alone"]),
            "settle_cpu_us": by["settle.lua alone"].cpu_us_per_op,
            "settle_usec_per_call": _usec_per_call(by["settle.lua alone"]),
            "per_process_cpu_us_per_s": per_process,
            "ceiling_rps": 1e6 / req.busiest_cpu_us_per_op,
            "ceiling_rps_all_cores": 1e6 * len(req.nodes) / req.cpu_us_per_op,
            "busiest_node_share": max(n.cpu_s for n in req.nodes) / sum(n.cpu_s for n in req.nodes),
            "busiest_per_process_cpu_us_per_s": busiest_process,
            # NaN when the file was rewritten during the phase (its size started again)
            "aof_bytes_per_request": sum(n.aof_bytes for n in req.nodes) / req.operations
            if not any(n.aof_rewrites for n in req.nodes) else float("nan"),
            "aof_rewrites": sum(n.aof_rewrites for n in req.nodes),
            "client_rps": req.operations / req.wall_s,
        }  # fmt: skip
        if "requests, one hot team" in by:
            figures["ceiling_rps_one_hot_team"] = 1e6 / by["requests, one hot team"].busiest_cpu_us_per_op
        out[d] = figures
    return out


def _usec_per_call(p: Phase, command: str = "evalsha") -> float:
    calls = p.calls_per_op(command)
    return p.usec_per_op(command) / calls if calls else float("nan")


def report(figures: dict[str, dict[str, float]]) -> str:
    lines = ["| | " + " | ".join(figures) + " |", "|---|" + "---:|" * len(figures)]
    rows = [
        ("Redis CPU per request, us (/proc, all nodes)", "cpu_us_per_request", 1),
        ("  of which inside EVALSHA, us (admit, settle, route batches)", "evalsha_usec_per_request", 1),
        ("admit.lua alone: Redis CPU us / usec per call", ("admit_cpu_us", "admit_usec_per_call"), 1),
        ("settle.lua alone: Redis CPU us / usec per call", ("settle_cpu_us", "settle_usec_per_call"), 1),
        ("busiest node's share of the CPU", "busiest_node_share", 2),
        ("ceiling, requests/s (busiest node at one core)", "ceiling_rps", 0),
        ("ceiling with one hot team, requests/s", "ceiling_rps_one_hot_team", 0),
        ("per gateway process whatever its traffic, Redis CPU us/s", "per_process_cpu_us_per_s", 0),
        ("  on the busiest node", "busiest_per_process_cpu_us_per_s", 0),
        ("append-only file, bytes per request (— when rewritten meanwhile)", "aof_bytes_per_request", 0),
        ("  rewrites of it during the phase", "aof_rewrites", 0),
        ("what the one client process sent, requests/s", "client_rps", 0),
    ]
    for label, key, digits in rows:
        cells = []
        for f in figures.values():
            if isinstance(key, tuple):
                cells.append(" / ".join(f"{f[k]:.{digits}f}" for k in key))
            else:
                cells.append(f"{f[key]:,.{digits}f}" if key in f and not math.isnan(f[key]) else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if "single" in figures and "cluster" in figures:
        s, c = figures["single"], figures["cluster"]
        hot = c.get("ceiling_rps_one_hot_team", float("nan"))
        lines.append(f"\ncluster / single ceiling: {c['ceiling_rps'] / s['ceiling_rps']:.2f}x (teams spread by slot); "
                     f"one hot team on the cluster / single: {hot / s['ceiling_rps']:.2f}x; CPU per request "
                     f"cluster / single: {c['cpu_us_per_request'] / s['cpu_us_per_request']:.2f}x")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.redis_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--deployments", default="single,cluster", help="single, cluster or both (comma-separated)")
    p.add_argument("--teams", type=int, default=300, help="teams the requests are spread over")
    p.add_argument("--seconds", type=float, default=15.0, help="per measured request phase")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight in the client")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="redis-scale-"))
    phases: list[Phase] = []
    for deployment in [d.strip() for d in args.deployments.split(",") if d.strip()]:
        start = {"single": single, "cluster": cluster}[deployment]
        with start(workdir / deployment) as nodes:
            phases += asyncio.run(run_deployment(nodes, args))
    figures = model(phases)
    print()
    print(report(figures))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"redis-scale-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "model": figures,
                               "phases": [ph.as_json() for ph in phases]}, indent=1, default=str))  # fmt: skip
    print(f"\nJSON: {out}\nRedis folders: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
