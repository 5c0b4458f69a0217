"""Time to the first partial image against time to the completed image, as a caller of the gateway
sees them: real processes (redis-server, `gateway serve`, the fake fal) before one GPU worker,
either the tiny CPU worker (`gateway-worker --tiny`: diffusers' HiDream pipeline with random
weights) or the fake worker (the real worker app with the stand-in pipeline at --step-s a step).

    .venv/bin/python -m bench.stream_latency [--worker tiny|fake|both] [--runs 5] [--steps 20]

Per configuration it prints medians of: the same request unstreamed (the baseline), then streamed
with partial_images=k, the time to its first partial_image event and to its completed event, and
their ratios (first partial / completed; completed / unstreamed baseline: what previews cost).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from tests.fakes.server import free_port
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import running_worker, wait_until
from tests.integration.gateway_stack import Stack, running_stack
from tests.redis_server import RedisServer


@contextmanager
def tiny_worker(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = (workdir / "tiny-worker.log").open("wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "--tiny", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), "the tiny worker to be ready", timeout_s=600)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.2)
        return False


def _timed_stream(stack: Stack, body: dict[str, object]) -> tuple[float | None, float]:
    """Seconds to the first partial_image event (None: none came) and to the completed event."""
    headers = {"Authorization": f"Bearer {stack.key}", "x-gateway-provider": "local_gpu"}
    first: float | None = None
    t0 = time.perf_counter()
    with httpx.stream("POST", stack.base + "/v1/images/generations", json=body, headers=headers, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if first is None and line == "event: image_generation.partial_image":
                first = time.perf_counter() - t0
            if line == "event: image_generation.completed":
                return first, time.perf_counter() - t0
    raise RuntimeError("the stream ended without a completed event")


def _plain(stack: Stack, body: dict[str, object]) -> float:
    headers = {"Authorization": f"Bearer {stack.key}", "x-gateway-provider": "local_gpu"}
    t0 = time.perf_counter()
    httpx.post(stack.base + "/v1/images/generations", json=body, headers=headers, timeout=600).raise_for_status()
    return time.perf_counter() - t0


def measure(stack: Stack, name: str, runs: int, steps: int) -> None:
    body: dict[str, object] = {"model": "hidream-i1-full", "prompt": "a lighthouse at dusk", "size": "1024x1024",
                               "num_inference_steps": steps, "response_format": "b64_json"}  # fmt: skip
    _plain(stack, body)  # warm: the route's first call, the pipeline's caches
    base = statistics.median(_plain(stack, body) for _ in range(runs))
    print(f"\n{name}: {steps} steps, 1024x1024, median of {runs}; unstreamed baseline {base:.3f} s")
    columns = ("partial_images", "first partial s", "completed s", "first/completed", "completed/base")
    print(" ".join(f"{c:>16}" for c in columns))
    for k in (1, 2, 3):
        got = [_timed_stream(stack, {**body, "stream": True, "partial_images": k}) for _ in range(runs)]
        first = statistics.median(f for f, _ in got if f is not None)
        done = statistics.median(d for _, d in got)
        figures = " ".join(f"{v:>16.3f}" for v in (first, done, first / done, done / base))
        print(f"{k:>16} {figures}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--worker", choices=["tiny", "fake", "both"], default="both")
    args.add_argument("--runs", type=int, default=5)
    args.add_argument("--steps", type=int, default=20)
    args.add_argument("--step-s", type=float, default=0.05, help="the fake worker's seconds a step")
    opts = args.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack_of:
        work = Path(tmp)
        redis = RedisServer(work / "redis")
        redis.start()
        stack_of.callback(redis.stop)
        kinds = ["fake", "tiny"] if opts.worker == "both" else [opts.worker]
        for kind in kinds:
            with ExitStack() as inner:
                if kind == "tiny":
                    url = inner.enter_context(tiny_worker(work))
                else:
                    url = inner.enter_context(running_worker("full", pipeline=StandInPipeline(step_s=opts.step_s))).url
                env = {"GATEWAY_LOCAL_GPU_URLS": url}
                (work / kind).mkdir()
                stack = inner.enter_context(
                    running_stack(redis, work / kind, gateway_env=env, team={"allow_provider_pinning": True})
                )
                name = "tiny CPU worker" if kind == "tiny" else f"fake worker ({opts.step_s} s a step)"
                measure(stack, name, opts.runs, opts.steps)


if __name__ == "__main__":
    main()
