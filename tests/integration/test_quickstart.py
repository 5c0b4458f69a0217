"""The README's first command, as a new user runs it: `gateway serve --tiny-worker` with no
configuration starts its own Redis and a tiny CPU worker, prints a key, and one request through
the OpenAI SDK runs the real HiDream pipeline code. Data survives a restart."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.fakes.server import free_port
from tests.processes import Process, python

pytestmark = pytest.mark.slow


def _start(tmp: Path, port: int, n: int) -> Process:
    env = {"GATEWAY_DATA_DIR": str(tmp / "data"), "HF_HUB_OFFLINE": "1", "GATEWAY_LOG_LEVEL": "warning"}
    proc = Process(
        "gateway", python("gateway.cli", "serve", "--port", str(port), "--tiny-worker"), env, tmp / f"{n}.log"
    )
    proc.wait_http(f"http://127.0.0.1:{port}/ready", timeout_s=300)
    return proc


def _printed_key(proc: Process) -> str:
    match = re.search(r"team key:\s+(sk-gw-\S+)", proc.tail(200))
    assert match, proc.tail()
    return match.group(1)


def _printed_metrics_token(proc: Process, where: Path) -> str:
    """The metrics token `serve` made once into a private file under the data dir, and said where."""
    match = re.search(r"metrics:\s+\S+/metrics with the Bearer token in (\S+)", proc.tail(200))
    assert match and Path(match.group(1)) == where.resolve(), proc.tail()
    assert where.stat().st_mode & 0o777 == 0o600
    return where.read_text().strip()


def test_serve_on_embedded_defaults_runs_the_tiny_pipeline_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path, port, 1)
    try:
        key = _printed_key(proc)
        # The first thing a new user opens: the playground, at the URL printed.
        assert re.search(rf"playground: {re.escape(base)}/ ", proc.tail(200)), proc.tail()
        page = httpx.get(base + "/", timeout=10)
        assert page.status_code == 200 and 'aria-label="Image parameters"' in page.text
        with openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0) as client:
            raw = client.images.with_raw_response.generate(
                model="hidream-i1-full", prompt="a small red house", extra_body={"seed": 3, "num_inference_steps": 2}
            )
        assert raw.headers["x-gateway-provider"] == "local_gpu"
        data = raw.parse().data
        assert data is not None and data[0].url is not None and data[0].url.startswith(base + "/v1/files/images/")
        img = Image.open(io.BytesIO(httpx.get(data[0].url, timeout=10).content))
        assert img.format == "PNG" and img.size == (1024, 1024)
        token = _printed_metrics_token(proc, tmp_path / "data" / "metrics-token")
        assert httpx.get(base + "/metrics").status_code == 401
        metrics = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert metrics.status_code == 200 and "gateway_images_total" in metrics.text
    finally:
        proc.stop()
    redis_pid = tmp_path / "data" / "redis" / "redis.pid"
    deadline = time.monotonic() + 10
    while redis_pid.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not redis_pid.exists(), "the embedded redis-server outlived the gateway"

    # A restart finds the same team and key (append-only persistence under the data dir).
    proc = _start(tmp_path, port, 2)
    try:
        assert _printed_key(proc) == key
        assert _printed_metrics_token(proc, tmp_path / "data" / "metrics-token") == token
        usage = httpx.get(base + "/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
        assert usage["images"] == 1 and usage["spent_usd"] == 0.05
    finally:
        proc.stop()
