"""How long the router takes to see a GPU worker's death (issue 17): a real worker process
(bench/fake_worker.py) behind the gateway's own adapter and probe rounds; it is SIGKILLed, and the
route as the router reads it (HealthBoard.current()) is watched until it stops being healthy.

    .venv/bin/python -m bench.worker_death [--intervals 0.1,2] [--rounds 5] [--busy 3]

For each probe interval (the routing benchmark's 0.1 s, the default 2 s), prints the time from the
kill to the route going down, with `--busy` jobs queued at the worker (as at a peak: their
connections drop with it) and with none (only a probe can tell), in milliseconds and in probe
intervals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.catalog import load_catalog
from gateway.routing.health import HealthBoard
from providers.base import ImageRequest, ImageResult, RouteTarget
from providers.local_gpu import LocalGpuProvider
from tests.fakes.server import free_port
from tests.processes import Process, python

ROOT = Path(__file__).resolve().parent.parent
ROUTE = ("hidream-i1-full", "local_gpu")
TARGET = RouteTarget("local_gpu", "hidream-i1-full", "hidream-i1-full", None, 4)
STEP_S = 0.02  # a job of 50 steps: 1 s, so the jobs sent are still queued at the kill


def _request(i: int) -> ImageRequest:
    return ImageRequest(
        request_id=f"death-{i}", model="hidream-i1-full", prompt="p", n=1, width=1024, height=1024,
        response_format="b64_json", num_inference_steps=50, guidance_scale=5.0, timeout_s=60.0,
    )  # fmt: skip


async def one_death(interval_s: float, busy: int, workdir: Path, i: int) -> float:
    """Seconds from the SIGKILL to the route read as down."""
    worker, url = await _start_worker(workdir, i)
    gpu = LocalGpuProvider([url])
    board = HealthBoard(load_catalog(ROOT / "pricing.yaml"), {"local_gpu": gpu}, interval_s=interval_s)
    probing: asyncio.Task[None] | None = None
    jobs: list[asyncio.Task[ImageResult]] = []
    try:
        probing = asyncio.create_task(board.run_forever())
        while not (ROUTE in board.current() and board.current()[ROUTE].healthy):
            await asyncio.sleep(0.01)
        jobs = [asyncio.create_task(gpu.generate(TARGET, _request(j))) for j in range(busy)]
        await asyncio.sleep(0.2)  # the jobs reach the worker and queue there
        # Somewhere in the probe cycle, as a crash would be.
        await asyncio.sleep(interval_s * (i % 4) / 4)
        os.killpg(worker.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        while board.current()[ROUTE].healthy:
            await asyncio.sleep(0.0005)
        return time.monotonic() - killed
    finally:
        for task in [*jobs, *([probing] if probing else [])]:
            task.cancel()
        await asyncio.gather(*jobs, *([probing] if probing else []), return_exceptions=True)
        await gpu.aclose()
        worker.stop()


async def _start_worker(workdir: Path, i: int) -> tuple[Process, str]:
    """A fake worker on a free port (another port if one was taken meanwhile by other work)."""
    for attempt in range(3):
        port = free_port()
        args = python("bench.fake_worker", "--port", str(port), "--variant", "full", "--step-s", str(STEP_S))
        worker = Process("worker", args, {}, workdir / f"worker-{i}-{attempt}.log")
        url = f"http://127.0.0.1:{port}"
        try:
            await asyncio.to_thread(worker.wait_http, url + "/ready", 120.0)
        except RuntimeError:
            worker.stop()
            continue
        return worker, url
    raise RuntimeError(f"no worker would start; see {workdir}")


async def run(intervals: Sequence[float], rounds: int, busy: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-death-"))
    print("| probe interval | jobs queued at the kill | kill to route down: median ms | max ms | median, intervals |")
    print("|---:|---:|---:|---:|---:|")
    for interval in intervals:
        for jobs in (busy, 0):
            seen = [await one_death(interval, jobs, workdir, i) for i in range(rounds)]
            med = statistics.median(seen)
            print(f"| {interval:g} s | {jobs} | {1000 * med:.1f} | {1000 * max(seen):.1f} | {med / interval:.2f} |",
                  flush=True)  # fmt: skip
    print(f"logs in {workdir}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_death", description=__doc__.split("\n\n")[0])
    parser.add_argument("--intervals", default="0.1,2", help="probe intervals, seconds")
    parser.add_argument("--rounds", type=int, default=5, help="kills per interval and load")
    parser.add_argument("--busy", type=int, default=3, help="jobs queued at the worker when it is killed")
    args = parser.parse_args(argv)
    asyncio.run(run([float(x) for x in args.intervals.split(",")], args.rounds, args.busy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
