"""`python -m bench.perf held`: thousands of requests held in flight by one gateway worker process
while fal takes 10 s per image (issue 6, point 3). The catalog routes hidream-i1-full to fal only,
and the gateway's fal queue URL is the fake upstream. Two bursts of --n requests at once: the first
with nothing learned (the adapter streams every request's status), the second after it (first look
near the learned completion time). Reported per burst: errors, the gateway's peak RSS and open
files, time until all were submitted to fal, p50/p99 time to result, and fal status calls per
request per second; and the same burst straight to the fake's fal API, polling every
--direct-poll-s as fal's own clients do (fal-js: 0.5 s; fal-client for Python: 0.1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.perf.loadclient import (
    Answer,
    ClientError,
    Connection,
    encode_request,
    error_code,
    percentile,
    raise_open_files_limit,
)
from bench.perf.options import WORKROOT
from bench.perf.peaks import PeakSampler, tcp_counters
from bench.perf.pricing import ROOT
from bench.perf.procs import group_cpu_s, group_pids
from bench.perf.report import machine_meta, write_json
from bench.perf.stack import BODY, StackOptions, perf_stack

NAME = "held"
HELP = "N requests held in flight by one gateway worker, fal at 10 s per image; vs fal's API directly"
FAL_MODEL = "fal-ai/hidream-i1-full"
FAL_BODY = {"prompt": BODY["prompt"], "image_size": "square_hd", "num_images": 1, "output_format": "png"}


@dataclass
class Burst:
    label: str
    n: int
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_p50_s: float = float("nan")  # when the failed answers came (e.g. 5 s: a pool's wait timeout)
    all_sent_s: float = float("nan")  # from the first send until every request was written
    all_submitted_s: float = float("nan")  # ... until fal had every job (the upstream's fal_submit count)
    p50_s: float = float("nan")  # time to result, over the successful requests
    p99_s: float = float("nan")
    max_s: float = float("nan")
    wall_s: float = float("nan")
    calls: dict[str, int] = field(default_factory=dict)  # what the fake fal was asked during the burst
    status_calls_per_request_per_s: float = float("nan")  # (polls + streams opened) / fal jobs / job seconds
    peak_rss_mib: float = float("nan")  # the gateway's process group
    rss_before_mib: float = float("nan")
    peak_open_files: int = 0
    cpu_s: float = float("nan")  # the gateway's CPU seconds during the burst
    tcp: dict[str, int] = field(default_factory=dict)  # machine-wide TcpExt deltas (accept queues overflowing)

    def line(self) -> str:
        errors = sum(self.errors.values())
        return (
            f"  {self.label:<14} n={self.n:<5} ok={self.ok:<5} errors={errors:<4} sent {self.all_sent_s:5.2f} s"
            f"  submitted {self.all_submitted_s:5.2f} s  p50 {self.p50_s:6.2f} s  p99 {self.p99_s:6.2f} s"
            f"  status calls/req/s {self.status_calls_per_request_per_s:6.3f}"
            f"  rss peak {self.peak_rss_mib:6.0f} MiB (+{self.peak_rss_mib - self.rss_before_mib:.0f})"
            f"  files {self.peak_open_files:5d}  cpu {self.cpu_s:5.1f} s"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=5000, help="requests in flight at once (quick run: 1000)")
    parser.add_argument("--fal-delay-ms", type=float, default=10_000.0, help="fal's time per job")
    parser.add_argument("--direct-poll-s", type=float, default=0.5, help="the direct baseline's poll interval")
    parser.add_argument("--bursts", type=int, default=2, help="bursts through the gateway (1st: nothing learned)")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--workdir", type=Path, default=None, help=f"default: a new folder under {WORKROOT}")


def run(args: argparse.Namespace) -> int:
    nofile = raise_open_files_limit()  # before the stack starts: the gateway inherits it
    if nofile < 2 * args.n + 200:
        raise SystemExit(f"RLIMIT_NOFILE is {nofile}: {args.n} requests need about {2 * args.n + 200}")
    workdir = args.workdir or WORKROOT / f"{NAME}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    job_s = args.fal_delay_ms / 1000
    bursts: list[Burst] = []
    gateway_limits = ""
    options = StackOptions(workdir=workdir, fal_delay_ms=args.fal_delay_ms, providers=("fal",))
    with perf_stack(options) as stack:
        print(f"== stack in {workdir}; RLIMIT_NOFILE {nofile}; fal {job_s:g} s per job", flush=True)
        gateway = stack.start_gateway(1)
        gateway_limits = _nofile_of(gateway.pgid)
        print(f"== {gateway.name} on {gateway.url} (open files limit {gateway_limits})", flush=True)
        body = json.dumps(BODY).encode()
        headers = {"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"}
        host, port, head = encode_request("POST", gateway.url + "/v1/images/generations", headers, body)

        def generate(conn: Connection) -> Awaitable[Answer]:
            return conn.request(head, body, timeout_s=job_s + 300)

        for i in range(args.bursts):
            label = "ours cold" if i == 0 else f"ours learned{'' if args.bursts == 2 else i}"
            stack.reset_upstream_stats()
            burst = _run_burst(label, args.n, host, port, generate, stack.upstream_stats, gateway.pgid)
            burst.calls = stack.upstream_stats()
            _finish(burst, job_s)
            print(burst.line(), flush=True)
            bursts.append(burst)
        if not args.no_direct:
            stack.reset_upstream_stats()
            direct = _run_burst(
                f"direct {args.direct_poll_s:g}s", args.n, "127.0.0.1", stack.upstream_port,
                _direct_caller(stack.upstream.url, stack.fal_key, args.direct_poll_s, job_s), stack.upstream_stats,
                stack.upstream.pgid,
            )  # fmt: skip
            direct.calls = stack.upstream_stats()
            _finish(direct, job_s)
            print(direct.line(), flush=True)
            bursts.append(direct)
    _report(bursts, args, workdir, gateway_limits, job_s)
    return 0 if all(not b.errors for b in bursts) else 1


# --- one burst ------------------------------------------------------------------------------------


def _run_burst(
    label: str, n: int, host: str, port: int, call: Callable[[Connection], Awaitable[Answer]],
    stats: Callable[[], dict[str, int]], pgid: int,
) -> Burst:  # fmt: skip
    burst = Burst(label, n)

    def watch_submits(elapsed_s: float) -> None:
        if burst.all_submitted_s != burst.all_submitted_s and stats().get("fal_submit", 0) >= n:  # still nan
            burst.all_submitted_s = elapsed_s

    cpu_before, tcp_before = group_cpu_s(pgid), tcp_counters()
    with PeakSampler(pgid, every_s=0.2, also=watch_submits) as sampler:
        answers, errors, sent_s, wall_s = _run_async(lambda: _burst(n, host, port, call))
    burst.cpu_s = group_cpu_s(pgid) - cpu_before
    burst.tcp = {k: v - tcp_before.get(k, 0) for k, v in tcp_counters().items()}
    burst.errors = errors
    times = [a.seconds for a in answers if a.status == 200]
    burst.ok = len(times)
    for a in answers:
        if a.status != 200:
            key = f"http {a.status} {error_code(a)}"
            burst.errors[key] = burst.errors.get(key, 0) + 1
    burst.error_p50_s = percentile([a.seconds for a in answers if a.status != 200], 0.5)
    burst.p50_s, burst.p99_s = percentile(times, 0.5), percentile(times, 0.99)
    burst.max_s = max(times, default=float("nan"))
    burst.all_sent_s, burst.wall_s = sent_s, wall_s
    burst.peak_rss_mib, burst.rss_before_mib = sampler.peak_rss, sampler.rss_before
    burst.peak_open_files = sampler.peak_files
    return burst


BurstResult = tuple[list[Answer], dict[str, int], float, float]


async def _burst(n: int, host: str, port: int, call: Callable[[Connection], Awaitable[Answer]]) -> BurstResult:
    """(answers, errors by kind, seconds until the last request was sent, seconds until all ended)."""
    errors: dict[str, int] = {}
    answers: list[Answer] = []
    started = time.monotonic()

    async def caller() -> None:
        conn = Connection(host, port)
        try:
            answers.append(await call(conn))
        except (ClientError, TimeoutError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else str(exc).split(":")[0]
            errors[kind] = errors.get(kind, 0) + 1
        finally:
            conn.close()

    await asyncio.gather(*(caller() for _ in range(n)))
    last_sent = max((a.sent for a in answers), default=float("nan"))
    return answers, errors, last_sent - started, time.monotonic() - started


def _direct_caller(base: str, key: str, poll_s: float, job_s: float) -> Callable[[Connection], Awaitable[Answer]]:
    """A fal client on one keep-alive connection: submit, poll every poll_s, fetch the result. Its
    Answer spans the whole exchange and carries the result's status."""
    auth = {"Authorization": f"Key {key}"}
    body = json.dumps(FAL_BODY).encode()
    _, _, submit = encode_request("POST", f"{base}/{FAL_MODEL}", auth | {"Content-Type": "application/json"}, body)

    async def call(conn: Connection) -> Answer:
        started = time.monotonic()
        queued = await conn.request(submit, body, timeout_s=60)
        if queued.status != 200:
            return queued
        reply = queued.json()
        assert isinstance(reply, dict)
        status_head = encode_request("GET", str(reply["status_url"]), auth)[2]
        deadline = started + job_s + 300
        while True:
            await asyncio.sleep(poll_s)
            status = await conn.request(status_head, timeout_s=60)
            if status.status == 200 or status.status != 202 or time.monotonic() > deadline:
                break
        result = await conn.request(encode_request("GET", str(reply["response_url"]), auth)[2], timeout_s=60)
        return Answer(result.status, result.headers, result.body, started, queued.sent, result.finished)

    return call


def _run_async(make: Callable[[], Awaitable[BurstResult]]) -> BurstResult:
    async def main() -> BurstResult:
        return await make()

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def _finish(burst: Burst, job_s: float) -> None:
    """Status calls (polls + streams opened) per job fal ran, per second of the job."""
    looks = burst.calls.get("fal_status", 0) + burst.calls.get("fal_stream", 0)
    burst.status_calls_per_request_per_s = looks / max(burst.calls.get("fal_submit", 0), 1) / job_s


def _nofile_of(pgid: int) -> str:
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    return line.split()[3]
        except OSError:
            continue
    return "?"


# --- report ---------------------------------------------------------------------------------------


def _report(bursts: list[Burst], args: argparse.Namespace, workdir: Path, nofile: str, job_s: float) -> None:
    ours = [b for b in bursts if b.label.startswith("ours")]
    direct = next((b for b in bursts if b.label.startswith("direct")), None)
    print(f"\n== held: n={args.n}, fal {job_s:g} s per job, 1 gateway worker (open files limit {nofile})")
    for b in bursts:
        calls = ", ".join(f"{k}={v}" for k, v in sorted(b.calls.items()) if v)
        failed = f" (answered after {b.error_p50_s:.1f} s, median)" if b.errors else ""
        tcp = ", ".join(f"{k} +{v}" for k, v in b.tcp.items())
        print(f"{b.line()}\n      errors: {b.errors or 'none'}{failed}; upstream: {calls}\n      tcp: {tcp}")
    if direct is not None and direct.ok:
        print("\n== ours / direct (same run)")
        for b in ours:
            print(
                f"  {b.label:<14} p50 x{b.p50_s / direct.p50_s:5.3f}  p99 x{b.p99_s / direct.p99_s:5.3f}"
                f"  submitted-all x{b.all_submitted_s / direct.all_submitted_s:5.2f}"
                f"  status calls x{b.status_calls_per_request_per_s / direct.status_calls_per_request_per_s:6.3f}"
            )
    meta = machine_meta() | {"n": args.n, "fal_job_s": job_s, "direct_poll_s": args.direct_poll_s,
                             "gateway_open_files_limit": nofile, "workdir": str(workdir)}  # fmt: skip
    path = write_json(args.out, NAME, {"meta": meta, "bursts": [asdict(b) for b in bursts]})
    print(f"\n== JSON: {path}")
