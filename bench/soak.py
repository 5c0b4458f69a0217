"""The soak: mixed traffic for a long while at half of the capacity measured in the same run, on
a real stack (bench.perf's: redis-server with its append-only file, the fast fake upstream serving
both the GPU worker's protocol and fal's queue, `gateway serve --workers 2`).

    python -m bench.soak                    # 30 minutes
    python -m bench.soak --duration 60      # a minute

First a short closed-loop ramp measures capacity (generations, b64_json); then arrivals at
`--load` (0.5) of it, a seeded Poisson process, of the mix in bench/soak_traffic.py: generations
(b64_json and url, and some of the URLs fetched), edits, bad input (400), a team over its
requests-per-minute limit (429), idempotent retries, callers that go away mid-request, streams.
Every few seconds it reads the RSS and open files of every gateway process (/proc). At the end:
the answers by kind and status against the expected ones, and the ledger in Redis against the
answers (each served request charged once at the model's price, nothing else charged, no
reservation left). A table, and JSON under bench/results/. Exits 1 if RSS or open files grew
more than 10 % between the start and the end of the time after warm-up, on any unexpected answer,
or if the ledger is off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import redis
import yaml

from bench.perf.loadclient import Connection, encode_request, percentile, raise_open_files_limit, run_async
from bench.perf.procs import group_pids, group_rss_mib
from bench.perf.stack import TEAM_BUDGET_USD, Server, StackOptions, new_team_key, perf_stack
from bench.soak_traffic import EXPECTED, MODEL, Keys, Tally, Traffic
from gateway.accounting.keys import team_prefix

RESULTS = Path(__file__).resolve().parent / "results"
GROWTH_LIMIT = 0.10
LIMITED_RPM = 20


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # since the traffic began
    rss_mib: float  # all gateway processes
    open_files: int
    processes: int
    load1: float  # the machine's load average over the last minute (it is shared)


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    team: str
    served: int  # answers that should be charged
    charged: int  # ledger lines with a charge
    charged_usd: float
    expected_usd: float
    reservations_left: int
    problems: list[str]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of mixed traffic (default 30 min)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before RSS/open files count (10 %%, 10..180)")
    p.add_argument("--load", type=float, default=0.5, help="share of the measured capacity sent")
    p.add_argument("--capacity-rps", type=float, default=None, help="skip the ramp; use this capacity")
    p.add_argument("--ramp-step-s", type=float, default=3.0, help="seconds per concurrency step of the ramp")
    p.add_argument("--max-growth", type=float, default=GROWTH_LIMIT,
                   help="RSS and open files may grow this much after warm-up (default 0.10)")  # fmt: skip
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS/open files samples")
    p.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    p.add_argument("--delay-ms", type=float, default=50.0, help="the fake GPU worker's time per image")
    p.add_argument("--fal-delay-ms", type=float, default=100.0, help="the fake fal's time per job")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="where the JSON goes (default bench/results/)")
    p.add_argument("--memtrace", type=Path, default=None,
                   help="trace the gateway's memory into this folder (bench/memtrace.py)")  # fmt: skip
    p.add_argument("--memtrace-every-s", type=float, default=30.0, help="seconds between memtrace snapshots")
    p.add_argument("--memtrace-light", action="store_true",
                   help="with --memtrace: no tracemalloc, only RSS by kind of mapping and glibc's arenas "
                        "(cheap: the gateway runs at full speed)")  # fmt: skip
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the gateway (repeatable), e.g. GATEWAY_HEAP_TRIM_S=0")  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    warmup = args.warmup if args.warmup is not None else min(180.0, max(10.0, args.duration * 0.1))
    raise_open_files_limit()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    env = {"GATEWAY_FAL_POLL_INITIAL_S": "0.05", "GATEWAY_FAL_POLL_MAX_S": "0.2"}
    env |= dict(pair.split("=", 1) for pair in args.env)
    module = "gateway.cli"
    if args.memtrace is not None:
        env |= {
            "BENCH_MEMTRACE_DIR": str(args.memtrace.resolve()),
            "BENCH_MEMTRACE_EVERY_S": str(args.memtrace_every_s),
        }
        if args.memtrace_light:
            env["BENCH_MEMTRACE_FRAMES"] = "0"
        module = "bench.memtrace"
    options = StackOptions(workdir=workdir, delay_ms=args.delay_ms, fal_delay_ms=args.fal_delay_ms,
                           providers=("local_gpu", "fal"), gateway_env=env, gateway_module=module)  # fmt: skip
    load_before = os.getloadavg()
    with perf_stack(options) as stack:
        gateway = stack.start_gateway(args.workers, name="soak")
        # Teams of the soak's own (the gateway's first team was charged for start_gateway's check).
        teams = {"main": new_team_key(gateway.url, stack.admin_key, "main")}
        teams["capacity"] = new_team_key(gateway.url, stack.admin_key, "capacity")
        teams["disconnect"] = new_team_key(gateway.url, stack.admin_key, "disconnect")
        teams["limited"] = _limited_team(gateway.url, stack.admin_key)
        tally = Tally()
        if args.capacity_rps is not None:
            capacity, ramp = args.capacity_rps, []
        else:
            capacity, ramp = _capacity(gateway, teams["capacity"][1], tally, args.ramp_step_s)
        rate = capacity * args.load
        keys = Keys(main=teams["main"][1], limited=teams["limited"][1], disconnect=teams["disconnect"][1])
        traffic = Traffic(gateway.url, keys, tally, args.seed)
        started = time.time()
        samples = _drive(traffic, gateway, rate, args.duration, args.sample_s, args.seed)
        price = _price_micros(stack.pricing_file)
        ledger = [check_ledger(stack.redis_url, name, team_id, tally, price) for name, (team_id, _) in teams.items()]
        disconnects = _disconnect_outcomes(stack.redis_url, teams["disconnect"][0])
    load_after = os.getloadavg()
    report = _report(args, warmup, capacity, ramp, rate, started, tally, samples, ledger, disconnects,
                     load_before, load_after)  # fmt: skip
    out = args.json or RESULTS / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=list) + "\n")
    _print(report, out)
    return 0 if report["ok"] else 1


# --- capacity -------------------------------------------------------------------------------------


def _capacity(gateway: Server, key: str, tally: Tally, step_s: float) -> tuple[float, list[dict[str, float]]]:
    """Closed loop, doubling the callers until throughput stops growing by 5 %: the best rate."""
    body = json.dumps({"model": MODEL, "prompt": "capacity", "response_format": "b64_json"}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    host, port, head = encode_request("POST", gateway.url + "/v1/images/generations", headers, body)
    steps: list[dict[str, float]] = []

    async def step(concurrency: int) -> float:
        done = 0

        async def caller(until: float) -> None:
            nonlocal done
            conn = Connection(host, port)
            while time.monotonic() < until:
                answer = await conn.request(head, body, timeout_s=60)
                tally.note("capacity", answer.status)
                if answer.status == 200:
                    tally.served["capacity"].add(answer.headers["x-request-id"])
                    done += 1
            conn.close()

        started = time.monotonic()
        await asyncio.gather(*(caller(started + step_s) for _ in range(concurrency)))
        return done / (time.monotonic() - started)

    best, concurrency = 0.0, 2
    while concurrency <= 64:
        rps = run_async(lambda c=concurrency: step(c))
        steps.append({"concurrency": concurrency, "rps": round(rps, 1)})
        if rps < best * 1.05:
            break
        best = max(best, rps)
        concurrency *= 2
    return best, steps


# --- the traffic and the samples ------------------------------------------------------------------


def _drive(
    traffic: Traffic, gateway: Server, rate: float, duration_s: float, sample_s: float, seed: int
) -> list[Sample]:
    samples: list[Sample] = []

    async def sampler(t0: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            samples.append(_sample(gateway.pgid, time.monotonic() - t0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sample_s)
        samples.append(_sample(gateway.pgid, time.monotonic() - t0))

    async def drive() -> float:
        rng = random.Random(seed + 1)
        t0 = traffic.tally.t0 = time.monotonic()
        stop = asyncio.Event()
        watching = asyncio.ensure_future(sampler(t0, stop))
        running: set[asyncio.Task[None]] = set()
        at = t0
        while True:
            at += rng.expovariate(rate)
            if at - t0 >= duration_s:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            task = asyncio.ensure_future(traffic.one(traffic.pick()))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
        stop.set()
        await watching
        traffic.pool.close()
        return 0.0

    run_async(drive)
    return samples


def _sample(pgid: int, t_s: float) -> Sample:
    pids = group_pids(pgid)
    files = 0
    for pid in pids:
        try:
            files += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return Sample(round(t_s, 1), round(group_rss_mib(pgid), 1), files, len(pids), round(os.getloadavg()[0], 2))


def growth(samples: list[Sample], warmup_s: float, field: str) -> tuple[float, float, float]:
    """(first, last, growth) of a sampled figure after warm-up: the medians of the first and the
    last tenth of the samples taken after it (at least one sample each)."""
    after = [float(getattr(s, field)) for s in samples if s.t_s >= warmup_s]
    if len(after) < 2:
        raise ValueError(f"fewer than 2 samples after a warm-up of {warmup_s} s; run longer")
    k = max(1, len(after) // 10)
    first, last = statistics.median(after[:k]), statistics.median(after[-k:])
    return first, last, last / first - 1 if first else float("inf")


# --- the ledger -----------------------------------------------------------------------------------


def _price_micros(pricing_file: Path) -> int:
    catalog = yaml.safe_load(pricing_file.read_text())
    return round(float(catalog["models"][MODEL]["price_per_image_usd"]) * 1_000_000)


def _ledger(redis_url: str, team_id: str) -> tuple[list[tuple[str, str, int]], int]:
    """(request id, status, charged micro-dollars) per ledger line, and reservations still held."""
    with redis.Redis.from_url(redis_url) as r:
        events = r.xrange(team_prefix(team_id) + "ledger")
        held = int(r.hlen(team_prefix(team_id) + "res"))
    lines = [(f[b"request_id"].decode(), f[b"status"].decode(), int(f[b"charged_micros"])) for _, f in events]
    return lines, held


def _settled(redis_url: str, team_id: str, settle_s: float = 30.0) -> tuple[list[tuple[str, str, int]], int]:
    """The ledger once no reservation is left and it stopped growing (or settle_s went by)."""
    deadline = time.monotonic() + settle_s
    last = -1
    while True:
        lines, held = _ledger(redis_url, team_id)
        if (held == 0 and len(lines) == last) or time.monotonic() > deadline:
            return lines, held
        last = len(lines)
        time.sleep(1.0)


def check_ledger(
    redis_url: str, name: str, team_id: str, tally: Tally, price: int, settle_s: float = 30.0
) -> LedgerCheck:
    lines, held = _settled(redis_url, team_id, settle_s)
    charged = [rid for rid, _, micros in lines if micros > 0]
    problems: list[str] = []
    if len(charged) != len(set(charged)):
        problems.append(f"{len(charged) - len(set(charged))} requests charged twice")
    if any(micros not in (0, price) for _, _, micros in lines):
        problems.append("a line charged other than 0 or the price")
    if name != "disconnect":  # a caller gone mid-request saw no answer: charged only if it was sent
        served = tally.served[name]
        if served - set(charged):
            problems.append(f"{len(served - set(charged))} served answers not charged")
        if set(charged) - served:
            problems.append(f"{len(set(charged) - served)} charges for no answer served")
        if tally.refused[name] & set(charged):
            problems.append(f"{len(tally.refused[name] & set(charged))} error answers charged")
    if held:
        problems.append(f"{held} reservations left")
    expected = len(tally.served[name]) * price if name != "disconnect" else len(set(charged)) * price
    total = sum(micros for _, _, micros in lines)
    if total != expected:
        problems.append(f"charged {total} micro-USD, expected {expected}")
    served_n = len(tally.served[name]) if name != "disconnect" else len(set(charged))
    return LedgerCheck(name, served_n, len(charged), total / 1e6, expected / 1e6, held, problems)


def _disconnect_outcomes(redis_url: str, team_id: str) -> dict[str, int]:
    lines, _ = _ledger(redis_url, team_id)
    out: dict[str, int] = defaultdict(int)
    for _, status, _ in lines:
        out[status] += 1
    return dict(out)


def _limited_team(url: str, admin_key: str) -> tuple[str, str]:
    limits = {"requests_per_minute": LIMITED_RPM, "images_per_minute": 10_000, "max_in_flight": 1000}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10) as admin:
        team = admin.post("/admin/teams", json={"name": "soak-limited", "monthly_budget_usd": TEAM_BUDGET_USD,
                                                 "limits": limits})  # fmt: skip
        team.raise_for_status()
        key = admin.post(f"/admin/teams/{team.json()['id']}/keys", json={"name": "soak"})
        key.raise_for_status()
        return str(team.json()["id"]), str(key.json()["key"])


# --- the report -----------------------------------------------------------------------------------


def _report(
    args: argparse.Namespace, warmup: float, capacity: float, ramp: list[dict[str, float]], rate: float,
    started: float, tally: Tally, samples: list[Sample], ledger: list[LedgerCheck], disconnects: dict[str, int],
    load_before: tuple[float, float, float], load_after: tuple[float, float, float],
) -> dict[str, object]:  # fmt: skip
    rss = growth(samples, warmup, "rss_mib")
    files = growth(samples, warmup, "open_files")
    failures = [f"{n} x {what}" for what, n in tally.unexpected.most_common()]
    for name, figure in (("RSS", rss), ("open files", files)):
        if figure[2] > args.max_growth:
            failures.append(f"{name} grew {figure[2]:.1%} after warm-up ({figure[0]:g} -> {figure[1]:g})")
    failures += [f"ledger {c.team}: {p}" for c in ledger for p in c.problems]
    by_kind: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind, status), n in sorted(tally.by_kind.items()):
        by_kind[kind][str(status)] = n
    latencies = tally.latencies
    return {
        "ok": not failures,
        "failures": failures,
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": args.duration,
        "warmup_s": warmup,
        "max_growth": args.max_growth,
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "gateway_workers": args.workers,
        "capacity_rps": round(capacity, 1),
        "ramp": ramp,
        "load": args.load,
        "rate_rps": round(rate, 1),
        "requests": sum(n for (kind, _), n in tally.by_kind.items() if kind != "capacity"),
        "by_kind": by_kind,
        "expected": {k: sorted(v) for k, v in EXPECTED.items()},
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "rss_mib": {
            "first": rss[0],
            "last": rss[1],
            "growth": round(rss[2], 4),
            "max": max(s.rss_mib for s in samples),
        },  # fmt: skip
        "open_files": {
            "first": files[0],
            "last": files[1],
            "growth": round(files[2], 4),
            "max": max(s.open_files for s in samples),
        },  # fmt: skip
        "unexpected": dict(tally.unexpected.most_common()),
        "unexpected_at_s": [round(t - tally.t0, 1) for t in tally.unexpected_at],
        "unexpected_by_minute": {str(m): n for m, n in sorted(tally.unexpected_by_minute.items())},
        "ledger": [asdict(c) for c in ledger],
        "disconnect_ledger": disconnects,
        "samples": [asdict(s) for s in samples],
    }


def _print(report: dict[str, object], out: Path) -> None:
    rss, files = report["rss_mib"], report["open_files"]
    assert isinstance(rss, dict) and isinstance(files, dict)
    print(f"soak: {report['duration_s']:g} s at {report['rate_rps']} req/s = {report['load']} x capacity "
          f"{report['capacity_rps']} req/s (ramp {report['ramp']}); {report['cpus']} CPUs, load average "
          f"{report['loadavg_before']} -> {report['loadavg_after']}")  # fmt: skip
    print(f"{'kind':<18} {'status':>6} {'count':>8}")
    by_kind = report["by_kind"]
    assert isinstance(by_kind, dict)
    for kind, statuses in by_kind.items():
        for status, n in statuses.items():
            print(f"{kind:<18} {status:>6} {n:>8}")
    print(f"requests {report['requests']}, p50 {report['p50_s']} s, p99 {report['p99_s']} s (200s)")
    print(f"RSS (MiB, all gateway processes, after {report['warmup_s']:g} s warm-up): {rss['first']} -> "
          f"{rss['last']} ({rss['growth']:+.1%}), max {rss['max']}")  # fmt: skip
    print(f"open files: {files['first']} -> {files['last']} ({files['growth']:+.1%}), max {files['max']}")
    ledger = report["ledger"]
    assert isinstance(ledger, list)
    for c in ledger:
        print(f"ledger {c['team']:<10} served {c['served']:>7} charged {c['charged']:>7} "
              f"${c['charged_usd']:.2f} (expected ${c['expected_usd']:.2f}), reservations left "
              f"{c['reservations_left']}" + ("" if not c["problems"] else f"  {c['problems']}"))  # fmt: skip
    print(f"callers gone mid-request, as settled: {report['disconnect_ledger']}")
    if report["unexpected_by_minute"]:
        print(f"unexpected answers by minute of the run: {report['unexpected_by_minute']}")
    failures = report["failures"]
    assert isinstance(failures, list)
    print("OK" if report["ok"] else "FAILED:\n  " + "\n  ".join(failures[:40]))
    print(f"JSON: {out}")


if __name__ == "__main__":
    sys.exit(main())
