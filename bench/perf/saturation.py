"""`python -m bench.perf saturation`: the gateway past its capacity (issue 6, point 5). First its
throughput at c=32 (closed loop, one worker process, local_gpu route, fake upstream at --delay-ms),
then an open-loop load at fixed arrival rates stepping past it (default 0.5x, 1x, 2x, 4x). Per step:
p50/p99 latency of the 200s (from each request's scheduled time, so a late client cannot hide
queueing), the share of 200 / 429 / 503 / other answers and client timeouts, whether every 429/503
carried retry-after, and, from the admin usage API (each step runs as a team of its own), whether
the requests charged equal the 200s received. It reports whatever the gateway does; it asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.perf.loadclient import (
    Answer,
    ClientError,
    Connection,
    encode_request,
    percentile,
    raise_open_files_limit,
    run_async,
)
from bench.perf.options import WORKROOT
from bench.perf.peaks import PeakSampler
from bench.perf.pricing import ROOT
from bench.perf.report import machine_meta, write_json
from bench.perf.stack import BODY, PerfStack, Server, StackOptions, new_team_key, perf_stack

NAME = "saturation"
HELP = "open-loop load stepping past capacity: latency, 200/429/503/timeouts, retry-after, charged == served"
PATH = "/v1/images/generations"


@dataclass
class Step:
    multiple: float
    rate_rps: float
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "429", "503", ..., "timeout", "error"
    shed_without_retry_after: int = 0  # 429/503 answers lacking retry-after
    p50_ms: float = float("nan")  # of the 200s, from the scheduled send time
    p99_ms: float = float("nan")
    shed_p50_ms: float = float("nan")  # of the 429/503s: how fast load is refused
    served_rps: float = float("nan")
    client_late_p99_ms: float = float("nan")  # how late the client launched requests (its own limit)
    client_overflow: int = 0  # arrivals not sent: the client's --max-in-flight was reached
    peak_rss_mib: float = float("nan")
    charged_requests: int = -1  # ledger lines with a charge, from /admin/usage
    ledger_lines: int = -1

    def share(self, key: str) -> float:
        return self.statuses.get(key, 0) / max(self.sent, 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the fake upstream's time per image")
    parser.add_argument("--steps", default="0.5,1,2,4", help="arrival rates as multiples of the c=32 throughput")
    parser.add_argument("--step-s", type=float, default=5.0, help="seconds of arrivals per step")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="the client's patience per request")
    parser.add_argument("--capacity-rps", type=float, default=None, help="skip measuring it")
    parser.add_argument("--max-in-flight", type=int, default=10000, help="the client's own bound")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--workdir", type=Path, default=None, help=f"default: a new folder under {WORKROOT}")


def run(args: argparse.Namespace) -> int:
    raise_open_files_limit()
    workdir = args.workdir or WORKROOT / f"{NAME}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    multiples = [float(m) for m in args.steps.split(",")]
    steps: list[Step] = []
    capacity = 0.0
    with perf_stack(StackOptions(workdir=workdir, delay_ms=args.delay_ms)) as stack:
        gateway = stack.start_gateway(1)
        print(f"== {gateway.name} on {gateway.url}; upstream {args.delay_ms:g} ms per image", flush=True)
        capacity = args.capacity_rps or _capacity(gateway)
        print(f"== capacity: {capacity:.0f} req/s at c=32 (closed loop, 3 s)", flush=True)
        for multiple in multiples:
            step = _step(stack, gateway, multiple, capacity, args)
            print(_line(step), flush=True)
            steps.append(step)
    _report(steps, capacity, args, workdir)
    return 0


def _request(url: str, key: str) -> tuple[str, int, bytes, bytes]:
    body = json.dumps(BODY).encode()
    host, port, head = encode_request(
        "POST", url + PATH, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, body
    )
    return host, port, head, body


def _capacity(gateway: Server, concurrency: int = 32, seconds: float = 3.0) -> float:
    host, port, head, body = _request(gateway.url, gateway.key)
    done = 0

    async def caller(until: float) -> None:
        nonlocal done
        conn = Connection(host, port)
        while time.monotonic() < until:
            answer = await conn.request(head, body, timeout_s=30)
            if answer.status != 200:
                raise RuntimeError(f"capacity run: HTTP {answer.status}: {answer.body[:200]!r}")
            done += 1
        conn.close()

    async def main() -> float:
        started = time.monotonic()
        await asyncio.gather(*(caller(started + seconds) for _ in range(concurrency)))
        return done / (time.monotonic() - started)

    return run_async(main)


def _step(stack: PerfStack, gateway: Server, multiple: float, capacity: float, args: argparse.Namespace) -> Step:
    team_id, key = new_team_key(gateway.url, stack.admin_key, f"sat{multiple:g}")
    host, port, head, body = _request(gateway.url, key)
    step = Step(multiple, multiple * capacity)
    n = int(step.rate_rps * args.step_s)
    answers: list[tuple[float, Answer]] = []  # (scheduled time, answer)
    outcomes: Counter[str] = Counter()
    late: list[float] = []

    async def one(conn: Connection, due: float, idle: list[Connection]) -> None:
        try:
            answers.append((due, await conn.request(head, body, timeout_s=args.timeout_s)))
            idle.append(conn)
        except TimeoutError:
            outcomes["timeout"] += 1
        except ClientError:
            outcomes["error"] += 1

    async def main() -> float:
        idle: list[Connection] = []
        running: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        for i in range(n):
            due = started + i / step.rate_rps
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            late.append(max(0.0, time.monotonic() - due))
            if len(running) >= args.max_in_flight:
                step.client_overflow += 1
                continue
            task = asyncio.create_task(one(idle.pop() if idle else Connection(host, port), due, idle))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
        for conn in idle:
            conn.close()
        return time.monotonic() - started

    with PeakSampler(gateway.pgid, every_s=0.2) as sampler:
        elapsed = run_async(main)
    step.peak_rss_mib = sampler.peak_rss
    step.sent = n - step.client_overflow
    ok: list[float] = []
    shed: list[float] = []
    for due, answer in answers:
        outcomes[str(answer.status)] += 1
        if answer.status == 200:
            ok.append(answer.finished - due)
        elif answer.status in (429, 503):
            shed.append(answer.finished - due)
            if "retry-after" not in answer.headers:
                step.shed_without_retry_after += 1
    step.statuses = dict(outcomes)
    step.p50_ms, step.p99_ms = 1000 * percentile(ok, 0.5), 1000 * percentile(ok, 0.99)
    step.shed_p50_ms = 1000 * percentile(shed, 0.5)
    step.served_rps = len(ok) / elapsed
    step.client_late_p99_ms = 1000 * percentile(late, 0.99)
    step.charged_requests, step.ledger_lines = _charged(gateway.url, stack.admin_key, team_id)
    return step


def _charged(url: str, admin_key: str, team_id: str, settle_s: float = 10.0) -> tuple[int, int]:
    """(ledger lines with a charge, all ledger lines) for the team, once the ledger stops growing
    (settlement of abandoned requests can trail their answers)."""
    deadline = time.monotonic() + settle_s
    last = (-1, -1)
    while True:
        reply = httpx.get(
            url + "/admin/usage", params={"team_id": team_id, "format": "json"},
            headers={"Authorization": f"Bearer {admin_key}"}, timeout=30,
        )  # fmt: skip
        reply.raise_for_status()
        lines = reply.json()["lines"]
        now = (sum(1 for line in lines if float(line["charged_usd"]) > 0), len(lines))
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(1.0)


def _line(s: Step) -> str:
    shares = "  ".join(f"{k} {100 * s.share(k):5.1f}%" for k in ("200", "429", "503", "timeout"))
    other = {k: v for k, v in s.statuses.items() if k not in ("200", "429", "503", "timeout")}
    charged_ok = "yes" if s.charged_requests == s.statuses.get("200", 0) else "NO"
    return (
        f"  {s.multiple:4g}x {s.rate_rps:7.0f}/s sent {s.sent:6d}  {shares}  other {other or '-'}"
        f"  p50 {s.p50_ms:8.1f} ms  p99 {s.p99_ms:8.1f} ms  shed p50 {s.shed_p50_ms:7.1f} ms"
        f"  served {s.served_rps:6.0f}/s  no-retry-after {s.shed_without_retry_after}"
        f"  charged {s.charged_requests} = 200s? {charged_ok}  rss {s.peak_rss_mib:4.0f} MiB"
        f"  (client late p99 {s.client_late_p99_ms:.0f} ms, overflow {s.client_overflow})"
    )


def _report(steps: list[Step], capacity: float, args: argparse.Namespace, workdir: Path) -> None:
    print(f"\n== saturation: capacity {capacity:.0f} req/s (c=32), {args.step_s:g} s per step, client timeout"
          f" {args.timeout_s:g} s, 1 gateway worker")  # fmt: skip
    for s in steps:
        print(_line(s))
    base = next((s for s in steps if s.multiple <= 1.0 and s.p50_ms == s.p50_ms), None)
    if base is not None:
        print("\n== latency against the lowest step (ratios)")
        for s in steps:
            print(f"  {s.multiple:4g}x  p50 x{s.p50_ms / base.p50_ms:7.2f}  p99 x{s.p99_ms / base.p99_ms:7.2f}")
    meta = machine_meta() | {"capacity_rps": capacity, "workdir": str(workdir), "step_s": args.step_s,
                             "timeout_s": args.timeout_s, "delay_ms": args.delay_ms}  # fmt: skip
    path = write_json(args.out, NAME, {"meta": meta, "steps": [asdict(s) for s in steps]})
    print(f"\n== JSON: {path}")
