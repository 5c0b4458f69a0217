"""`python -m bench.perf bytes`: image bytes through the gateway (issues 6 and 16), each measured
against the fake upstream directly in the same run:

- generations of a ~2 MiB PNG (upstream --image-bytes) answered as b64_json (`generations`) or as
  a URL the caller then fetches (`generations-url`), routed to the GPU worker protocol (catalog:
  local_gpu only); the same from fal's queue API (`fal`, `fal-url`; catalog: fal only), the direct
  baseline calling it as the fal adapter does (sync_mode for bytes);
- edits uploading a 10 MiB PNG, routed to fal (catalog: fal only), whose adapter sends the image
  as a data URI; the direct baseline posts that same data URI to the fake's fal API and fetches
  the result, as the adapter does.

Per case and concurrency (closed loop, c callers for --duration s): image MB/s (the decoded image
bytes delivered, or uploaded, per second), the ratio ours/direct, and the gateway's RSS: its peak
at each concurrency and the growth per extra request in flight, (peak at c=8 - peak at c=1) / 7,
also as a multiple of the image's size (how many copies of the payload a request holds at once).

`--baseline DIR` runs a second gateway beside ours from another checkout of the code (e.g.
`git -C /work/main archive HEAD | tar -x -C /tmp/base`), measured in the same run against the same
upstream, so a change is compared with the code before it without the machine's load moving
between the two: each ratio is printed for both. `--baseline-env NAME=VALUE` gives that gateway
settings of its own; without `--baseline` it runs this checkout, so that a setting is compared
with its default in the same run (e.g. `--baseline-env GATEWAY_MALLOC_KEEP_FREE_BYTES=0`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from bench.perf import bytes_calls
from bench.perf.bytes_calls import EDIT_IMAGE_BYTES, Call
from bench.perf.loadclient import ClientError, Connection, encode_request, raise_open_files_limit, run_async
from bench.perf.options import WORKROOT
from bench.perf.peaks import PeakSampler
from bench.perf.pricing import ROOT
from bench.perf.procs import group_cpu_s
from bench.perf.report import machine_meta, write_json
from bench.perf.stack import PerfStack, StackOptions, perf_stack

NAME = "bytes"
HELP = "2 MiB images as b64_json or URL (worker, fal) and edits uploading 10 MiB: MB/s ours vs direct, RSS per request"
GEN_IMAGE_BYTES = 2 * 1024 * 1024
Make = Callable[[PerfStack, str, str], tuple[Call, Call]]
# case -> (its name in the report, the routes kept in the catalog, upstream image bytes, the calls)
CASES: dict[str, tuple[str, tuple[str, ...], int, Make]] = {
    "generations": ("generations-b64", ("local_gpu",), GEN_IMAGE_BYTES,
                    partial(bytes_calls.generations, fmt="b64_json")),
    "generations-url": ("generations-url", ("local_gpu",), GEN_IMAGE_BYTES,
                        partial(bytes_calls.generations, fmt="url")),
    "fal": ("fal-b64", ("fal",), GEN_IMAGE_BYTES, partial(bytes_calls.fal_generations, fmt="b64_json")),
    "fal-url": ("fal-url", ("fal",), GEN_IMAGE_BYTES, partial(bytes_calls.fal_generations, fmt="url")),
    "edits": ("edits-10MiB", ("fal",), 0, bytes_calls.edits),
}  # fmt: skip
SIZES = {"edits-10MiB": EDIT_IMAGE_BYTES}  # the payload's size (else GEN_IMAGE_BYTES)


@dataclass(frozen=True, slots=True)
class Run:
    case: str  # generations-b64 | edits-10MiB
    target: str  # direct | base | ours
    concurrency: int
    requests: int
    errors: int
    seconds: float
    image_mb_per_s: float
    p50_ms: float
    answer_p50_ms: float | None  # an answer by URL: until the answer, before the image was fetched
    rss_before_mib: float
    peak_rss_mib: float
    # CPU the measured server's processes spent per request (the gateway's, or the upstream's for
    # direct): a measure the machine's load moves far less than MB/s
    cpu_ms_per_request: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--concurrency", default="1,8", help="two concurrencies, low then high")
    parser.add_argument("--cases", default=",".join(CASES), help=f"any of {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--workdir", type=Path, default=None, help=f"default: a new folder under {WORKROOT}")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout whose gateway runs beside ours")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the baseline gateway (repeatable); without --baseline, it runs this "
                             "checkout")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    raise_open_files_limit()
    low, high = (int(c) for c in args.concurrency.split(","))
    workdir = args.workdir or WORKROOT / f"{NAME}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(unknown)} (known: {', '.join(CASES)})")
    base_env = dict(pair.partition("=")[::2] for pair in args.baseline_env)
    runs: list[Run] = []
    for case in cases:
        label, providers, image_bytes, make = CASES[case]
        options = StackOptions(workdir=workdir / case, image_bytes=image_bytes, providers=providers)
        with perf_stack(options) as stack:
            runs += _case(stack, label, make, args.duration, (low, high), args.baseline, base_env)
    _report(runs, args, workdir, low, high)
    return 0 if all(r.errors == 0 for r in runs) else 1


def _case(
    stack: PerfStack, case: str, make: Callable[[PerfStack, str, str], tuple[Call, Call]], duration_s: float,
    concurrencies: tuple[int, int], baseline: Path | None = None, base_env: dict[str, str] | None = None,
) -> list[Run]:  # fmt: skip
    gateway = stack.start_gateway(1)
    print(f"== {case}: {gateway.name} on {gateway.url}, upstream {stack.upstream.url}", flush=True)
    direct_call, ours_call = make(stack, gateway.url, gateway.key)
    targets = [("direct", direct_call, stack.upstream.url, stack.upstream.pgid)]
    if baseline is not None or base_env:
        base = stack.start_gateway(1, name="base-w1", env=base_env, checkout=baseline)
        settings = " ".join(f"{k}={v}" for k, v in (base_env or {}).items())
        print(f"   baseline {base.name} on {base.url}, from {baseline or 'this checkout'} {settings}", flush=True)
        targets.append(("base", make(stack, base.url, base.key)[1], base.url, base.pgid))
    targets.append(("ours", ours_call, gateway.url, gateway.pgid))
    runs = []
    for concurrency in concurrencies:
        for target, call, url, pgid in targets:
            run = _closed_loop(case, target, url, call, concurrency, duration_s, pgid)
            print(
                f"  {case:<16} {target:<6} c={concurrency:<2} {run.requests:5d} req  {run.image_mb_per_s:7.1f} MB/s"
                f"  p50 {run.p50_ms:7.1f} ms  cpu {run.cpu_ms_per_request:5.2f} ms/req  errors {run.errors}"
                f"  rss {run.rss_before_mib:5.0f} -> peak {run.peak_rss_mib:5.0f} MiB",
                flush=True,
            )
            runs.append(run)
    return runs


def _closed_loop(
    case: str, target: str, url: str, call: Call, concurrency: int, duration_s: float, pgid: int
) -> Run:  # fmt: skip
    host, port, _ = encode_request("GET", url, {})
    moved: list[int] = []
    times: list[float] = []
    answers: list[float] = []
    errors: list[str] = []

    async def caller(until: float) -> None:
        conn = Connection(host, port)
        try:
            while time.monotonic() < until:
                started = time.monotonic()
                try:
                    size, answered = await call(conn)
                    moved.append(size)
                    times.append(time.monotonic() - started)
                    if answered is not None:
                        answers.append(answered)
                except (ClientError, TimeoutError, RuntimeError) as exc:
                    errors.append(str(exc)[:200])
                    conn.close()
        finally:
            conn.close()

    async def main() -> float:
        started = time.monotonic()
        await asyncio.gather(*(caller(started + duration_s) for _ in range(concurrency)))
        return time.monotonic() - started

    cpu_before = group_cpu_s(pgid)
    with PeakSampler(pgid, every_s=0.05) as sampler:
        seconds = run_async(main)
    cpu_s = group_cpu_s(pgid) - cpu_before
    if errors:
        print(f"    {len(errors)} errors, e.g. {errors[0]}", flush=True)
    times.sort()
    answers.sort()
    return Run(
        case=case, target=target, concurrency=concurrency, requests=len(moved), errors=len(errors),
        seconds=seconds, image_mb_per_s=sum(moved) / seconds / 1e6,
        p50_ms=1000 * times[len(times) // 2] if times else float("nan"),
        answer_p50_ms=1000 * answers[len(answers) // 2] if answers else None,
        rss_before_mib=sampler.rss_before, peak_rss_mib=sampler.peak_rss,
        cpu_ms_per_request=1000 * cpu_s / len(moved) if moved else float("nan"),
    )  # fmt: skip


# --- report ---------------------------------------------------------------------------------------


def _answer_gap(ours: Run, direct: Run) -> str:
    if ours.answer_p50_ms is None or direct.answer_p50_ms is None:
        return ""
    gap = ours.answer_p50_ms - direct.answer_p50_ms
    return f"; the URL answer p50 {ours.answer_p50_ms:.1f} ms vs {direct.answer_p50_ms:.1f} ({gap:+.1f} ms)"


def _report(runs: list[Run], args: argparse.Namespace, workdir: Path, low: int, high: int) -> None:
    print(f"\n== bytes: {args.duration:g} s per run; gateway: 1 worker process")
    by = {(r.case, r.target, r.concurrency): r for r in runs}
    gateways = [t for t in ("base", "ours") if any(r.target == t for r in runs)]
    for case in dict.fromkeys(r.case for r in runs):
        for c in (low, high):
            direct = by.get((case, "direct", c))
            for target in gateways:
                ours = by.get((case, target, c))
                if ours and direct and direct.image_mb_per_s:
                    ratio = ours.image_mb_per_s / direct.image_mb_per_s
                    print(
                        f"  {case:<16} c={c:<2} {target:<4} {ours.image_mb_per_s:7.1f} MB/s  direct"
                        f" {direct.image_mb_per_s:7.1f} MB/s  {target}/direct x{ratio:5.2f}"
                        f"  p50 x{ours.p50_ms / direct.p50_ms:5.2f} ({ours.p50_ms - direct.p50_ms:+.1f} ms)"
                        f"  gateway cpu {ours.cpu_ms_per_request:.2f} ms/req" + _answer_gap(ours, direct)
                    )
        for target in gateways:
            a, b = by.get((case, target, low)), by.get((case, target, high))
            if a and b and high > low:
                per = (b.peak_rss_mib - a.peak_rss_mib) / (high - low)
                copies = per * 1024 * 1024 / SIZES.get(case, GEN_IMAGE_BYTES)
                print(
                    f"  {case:<16} {target:<4} gateway RSS peak {a.peak_rss_mib:.0f} MiB at c={low},"
                    f" {b.peak_rss_mib:.0f} MiB at c={high}: {per:.1f} MiB per extra request in flight"
                    f" (~{copies:.1f}x the image)"
                )
    meta = machine_meta() | {"workdir": str(workdir), "duration_s": args.duration, "baseline": str(args.baseline or "")}
    path = write_json(args.out, NAME, {"meta": meta, "runs": [asdict(r) for r in runs]})
    print(f"\n== JSON: {path}")
