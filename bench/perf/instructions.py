"""`python -m bench.perf instructions`: the instructions one gateway process executes per request
(valgrind's callgrind), for this checkout and, beside it in the same run, a baseline checkout.

Times and CPU seconds on a shared 2-vCPU machine move by 2x with what else runs; an instruction
count does not (the same code and inputs give the same count, however busy the machine is). So a
change on the request path can be measured while other work runs, to about 1-2 %, where timed
runs need a quiet machine and still scatter by 5-15 %.

Per target and round: the gateway starts under callgrind with instrumentation off, takes 5 s of
c=1 requests to warm up, then counts the instructions of D seconds of c=1 requests, then of D
seconds idle (probes, timers and the metrics loop, which run whether or not requests come); the
figure is (load - idle scaled to the load's length) / requests. Only the gateway process is
counted: Redis, the upstream and wrk are not. A baseline is another commit's checkout, e.g.

    git worktree add /tmp/base main && python -m bench.perf instructions --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.perf.measure import BenchFailure, Target, run_wrk
from bench.perf.report import machine_meta, write_json
from bench.perf.stack import PerfStack, Server, StackOptions, perf_stack
from tests.processes import ROOT

NAME = "instructions"
HELP = "instructions per request (callgrind) for this checkout and a baseline checkout, load-insensitive"
PATH = "/v1/images/generations"
WARMUP_S = 5
DUMP_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class Count:
    label: str
    round_no: int
    requests: int
    load_instructions: int
    load_s: float
    idle_instructions: int
    idle_s: float

    @property
    def per_request(self) -> float:
        return net_per_request(self.load_instructions, self.load_s, self.idle_instructions, self.idle_s, self.requests)


def net_per_request(load: int, load_s: float, idle: int, idle_s: float, requests: int) -> float:
    """Instructions per request, less what the process runs idle over the same length of time."""
    if requests <= 0 or idle_s <= 0:
        raise ValueError("no requests, or no idle time, to count")
    return (load - idle * load_s / idle_s) / requests


def callgrind_totals(text: str) -> int:
    """The instructions in one callgrind dump (its `totals:` line; `summary:` is not reset by a
    zeroing and can wrap)."""
    for line in text.splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise BenchFailure("a callgrind dump without a totals: line")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout of the commit to compare with")
    parser.add_argument("--duration", type=int, default=20, help="seconds of requests, and of idle, per count")
    parser.add_argument("--rounds", type=int, default=2, help="counts per target (order reversed in even rounds)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new folder under /tmp")


def run(args: argparse.Namespace) -> int:
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on PATH (apt-get install valgrind wrk)")
    targets: list[tuple[str, Path]] = [("this", ROOT)]
    if args.baseline is not None:
        baseline = args.baseline.resolve()
        if not (baseline / "gateway" / "cli.py").is_file():
            raise SystemExit(f"{baseline} is not a checkout of this project")
        targets.insert(0, ("baseline", baseline))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    counts: list[Count] = []
    with perf_stack(StackOptions(workdir=workdir)) as stack:
        for round_no in range(1, args.rounds + 1):
            order = targets if round_no % 2 else list(reversed(targets))
            for label, checkout in order:
                count = _count(stack, label, checkout, round_no, args.duration, workdir)
                counts.append(count)
                print(f"  {label:<9} round {round_no}: {count.requests} requests, "
                      f"{count.per_request / 1e6:.3f} M instructions a request", flush=True)  # fmt: skip
    medians = {label: statistics.median(c.per_request for c in counts if c.label == label) for label, _ in targets}
    print("\n| target | checkout | M instructions per request (median) | ratio |\n|---|---|---:|---:|")
    first = medians[targets[0][0]]
    for label, checkout in targets:
        print(f"| {label} | {_describe(checkout)} | {medians[label] / 1e6:.3f} | {medians[label] / first:.3f}x |")
    path = write_json(args.out, NAME, {
        "machine": machine_meta(), "duration_s": args.duration,
        "targets": {
            label: {"checkout": _describe(checkout), "median_per_request": medians[label]}
            for label, checkout in targets
        },
        "counts": [asdict(c) | {"per_request": c.per_request} for c in counts],
    })  # fmt: skip
    print(f"\nresults: {path}")
    return 0


def _count(stack: PerfStack, label: str, checkout: Path, round_no: int, duration_s: int, workdir: Path) -> Count:
    dumps = workdir / f"callgrind-{label}-{round_no}"
    dumps.mkdir(parents=True, exist_ok=True)
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={dumps}/out.%p"]
    server = stack.start_gateway(1, name=f"{label}-r{round_no}", prefix=prefix, checkout=checkout, ready_timeout_s=600)
    try:
        target = Target(server.name, "ours", server.url + PATH, server.key, server.pgid, 1)
        run_wrk(target, 1, WARMUP_S)
        _control(server, "-z")
        _control(server, "-i", "on")
        t0 = time.monotonic()
        result, _ = run_wrk(target, 1, duration_s)
        load_s = time.monotonic() - t0
        load = _dump(server, dumps)
        _control(server, "-z")
        t0 = time.monotonic()
        time.sleep(duration_s)
        idle_s = time.monotonic() - t0
        idle = _dump(server, dumps)
        _control(server, "-i", "off")
        if result.non2xx or result.errors:
            raise BenchFailure(f"{server.name}: {result.non2xx} non-2xx answers, {result.errors} socket errors")
        return Count(label, round_no, result.requests, load, load_s, idle, idle_s)
    finally:
        stack.stop_gateway(server)


def _control(server: Server, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(server.pgid)], check=True, capture_output=True, timeout=60)


def _dump(server: Server, folder: Path) -> int:
    """Dump the counts so far and read them (callgrind writes the file after the command returns)."""
    before = set(folder.iterdir())
    _control(server, "-d")
    deadline = time.monotonic() + DUMP_WAIT_S
    while time.monotonic() < deadline:
        new = [p for p in folder.iterdir() if p not in before]
        for path in new:
            text = path.read_text(errors="replace")
            if "totals:" in text:
                path.unlink()
                return callgrind_totals(text)
        time.sleep(0.2)
    raise BenchFailure(f"callgrind wrote no dump for {server.name} in {DUMP_WAIT_S:.0f} s")


def _describe(checkout: Path) -> str:
    rev = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return (rev.stdout.strip() or str(checkout)) + ("+changes" if dirty else "")
