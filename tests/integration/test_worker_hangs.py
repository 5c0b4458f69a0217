"""Fault matrix: a GPU worker that hangs mid-job (SIGSTOP: its socket still accepts, nothing
answers). The adapter abandons the job once the worker misses two /ready reads, so the request
falls back to another route within its deadline instead of waiting it out."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.base import ProviderUnavailableError
from providers.local_gpu import LocalGpuProvider
from tests.contract.cases.local_gpu import TARGET
from tests.contract.harness import image_request
from tests.fakes.server import free_port
from tests.processes import Process, python

pytestmark = pytest.mark.slow


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Process, str]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Process(
        "tiny-worker", python("worker.cli", "--tiny", "--variant", "full", "--port", str(port)),
        {"HF_HUB_OFFLINE": "1"}, tmp_path / "worker.log",
    )  # fmt: skip
    try:
        proc.wait_http(url + "/ready", timeout_s=300)
        yield proc, url
    finally:
        os.killpg(proc.proc.pid, signal.SIGCONT)
        proc.stop()


async def _hang_mid_job(proc: Process, url: str) -> tuple[BaseException | None, float]:
    provider = LocalGpuProvider([url], status_timeout_s=0.5)
    try:
        await provider.probe(TARGET)  # learn the worker's variant, as the gateway's probes do
        request = image_request("b64_json", num_inference_steps=50, timeout_s=120.0)
        job = asyncio.create_task(provider.generate(TARGET, request))
        await asyncio.sleep(0.5)  # the job is running on the worker
        started = time.monotonic()
        os.killpg(proc.proc.pid, signal.SIGSTOP)
        while not job.done() and time.monotonic() - started < 30:
            await provider.probe(TARGET)  # the gateway's background probes, every round
            await asyncio.sleep(0.2)
        try:
            await asyncio.wait_for(job, 1)
        except BaseException as exc:  # noqa: BLE001 - the outcome under test
            return exc, time.monotonic() - started
        return None, time.monotonic() - started
    finally:
        await provider.aclose()


def test_a_hung_worker_mid_job_fails_the_attempt_as_unavailable_within_seconds(worker: tuple[Process, str]) -> None:
    proc, url = worker
    error, waited = asyncio.run(_hang_mid_job(proc, url))
    assert isinstance(error, ProviderUnavailableError) and "abandoned" in error.message, error
    assert error.retryable  # so the dispatcher falls back to the next route
    assert waited < 10, f"took {waited:.1f} s; the request's own deadline was 120 s"
