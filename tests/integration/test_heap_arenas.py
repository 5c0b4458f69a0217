"""One glibc arena in every serving process of a real `gateway serve` (one process, and a supervisor
with two workers): no thread gets a heap of its own, not even uvicorn's, which allocates in a worker
before the app is built. A thread's heap keeps up to GATEWAY_MALLOC_KEEP_FREE_BYTES free at its top
and the periodic trim cannot reach it, so each one's high-water mark stayed in RSS: the soak's RSS
rose in steps. With GATEWAY_MALLOC_ARENA_MAX=0 (glibc's default) the threads' heaps are there."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.memtrace import smaps_kib
from tests.fakes.server import free_port
from tests.processes import Process, child_pids, python

ADMIN = "adm-arena-test"


def _serving(proc: Process, workers: int) -> list[int]:
    """The processes that serve: the workers under uvicorn's supervisor, or the one process."""
    if workers == 1:
        return [proc.proc.pid]
    return sorted(c for c in child_pids(proc.proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())


def _start(tmp_path: Path, redis_url: str, pricing_file: Path, workers: int, arena_max: str) -> Iterator[Process]:
    port = free_port()
    env = {
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_PRICING_FILE": str(pricing_file),
        "GATEWAY_PRICING_RELOAD_S": "0.2",  # the file read and parsed on a thread, again and again
        "GATEWAY_HEAP_TRIM_S": "0.2",
        "GATEWAY_ADMIN_KEY": ADMIN,
        "GATEWAY_MALLOC_ARENA_MAX": arena_max,
        "GATEWAY_LOG_LEVEL": "info",
    }
    proc = Process("gateway", python("gateway.cli", "serve", "--port", str(port), "--workers", str(workers)),
                   env, tmp_path / "gateway.log")  # fmt: skip
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout_s=120)
        deadline = time.monotonic() + 60  # only keeps a broken gateway from hanging the test
        while proc.tail(400).count("Application startup complete") < workers:
            assert time.monotonic() < deadline, "not every worker process started"
            time.sleep(0.05)
        for _ in range(20):  # the threads' work (pricing checks, trims, uvicorn's pings) under way
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            time.sleep(0.1)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def test_no_thread_of_a_serving_process_gets_a_heap_of_its_own(
    workers: int, redis_url: str, tmp_path: Path, pricing_file: Path
) -> None:
    for proc in _start(tmp_path, redis_url, pricing_file, workers, arena_max="1"):
        pids = _serving(proc, workers)
        assert len(pids) == workers
        if workers > 1:  # what glibc reads as each worker starts, before any thread of it allocates
            assert all(b"MALLOC_ARENA_MAX=1\0" in Path(f"/proc/{pid}/environ").read_bytes() for pid in pids)
        assert [smaps_kib(pid)["n_thread_arenas"] for pid in pids] == [0] * workers


def test_with_glibcs_default_the_threads_have_heaps_of_their_own(
    redis_url: str, tmp_path: Path, pricing_file: Path
) -> None:
    # What the first test would see without the setting: it tells a heap of a thread's arena apart.
    for proc in _start(tmp_path, redis_url, pricing_file, 2, arena_max="0"):
        assert all(smaps_kib(pid)["n_thread_arenas"] > 0 for pid in _serving(proc, 2))
