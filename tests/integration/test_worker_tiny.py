"""The real worker process in tiny mode: `gateway-worker --tiny` as a subprocess, running diffusers'
HiDreamImagePipeline with random weights on the CPU, over HTTP."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.fakes.server import free_port

pytestmark = pytest.mark.slow

GEN = "/v1/images/generations"


@dataclass
class WorkerProcess:
    url: str
    log: Path


def _command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("gateway-worker")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "worker.cli", *args]


@pytest.fixture(scope="module", params=["full", "fast"])
def tiny_worker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    variant = request.param
    port = free_port()
    home = tmp_path_factory.mktemp(f"worker-{variant}")
    log = home / "worker.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WORKER_LOG_LEVEL": "info"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _command("--tiny", "--variant", variant, "--port", str(port), "--max-queue", "2"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=home,  # the installed command, not the source tree on the path
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _ready(url):
            assert proc.poll() is None, f"the worker exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the worker never became ready:\n{log.read_text()}"
            time.sleep(0.25)
        yield WorkerProcess(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _generate(url: str, **body: object) -> httpx.Response:
    resp = httpx.post(f"{url}{GEN}", json={"prompt": "a red barn in the snow", **body}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp


def _pngs(resp: httpx.Response) -> list[bytes]:
    return [base64.b64decode(item["b64_json"]) for item in resp.json()["data"]]


def _metric(url: str, sample: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not in /metrics")


def test_tiny_worker_reports_itself(tiny_worker: WorkerProcess) -> None:
    report = httpx.get(f"{tiny_worker.url}/ready").json()
    assert report["ready"] and report["warm"] and report["tiny"]
    assert report["device"] == "cpu"
    assert report["sampler"] in ("flow_unipc", "flow_lcm")
    assert "resized" in report["tiny_note"]


def test_real_pipeline_generates_seeded_pngs_of_the_requested_size(tiny_worker: WorkerProcess) -> None:
    url = tiny_worker.url
    ok_before = _metric(url, 'hidream_requests_total{status="ok"}')
    images_before = _metric(url, "hidream_images_generated_total")
    common = {"n": 2, "size": "1360x768", "negative_prompt": "people", "num_inference_steps": 6}
    first = _generate(url, seed=1234, **common)
    again = _generate(url, seed=1234, **common)
    other = _generate(url, seed=4321, **common)

    assert first.headers["x-actual-size"] == "1360x768" and first.headers["x-seed"] == "1234"
    a, b, c = _pngs(first), _pngs(again), _pngs(other)
    assert len(a) == 2
    for png in a:
        img = Image.open(io.BytesIO(png))
        assert (img.format, img.size) == ("PNG", (1360, 768))
        assert sum(1 for count in img.convert("L").histogram() if count) > 10  # a picture, not a flat fill
    assert a == b  # same seed, same bytes
    assert a[0] != c[0] and a[1] != c[1]  # another seed, other pictures
    assert a[0] != a[1]  # two images of one request differ
    assert _metric(url, 'hidream_requests_total{status="ok"}') == ok_before + 3
    assert _metric(url, "hidream_images_generated_total") == images_before + 6
    assert _metric(url, "hidream_inference_duration_seconds_count") >= 3


def test_prompts_steer_the_picture(tiny_worker: WorkerProcess) -> None:
    one = _pngs(_generate(tiny_worker.url, seed=7, num_inference_steps=4))
    two = _pngs(_generate(tiny_worker.url, seed=7, num_inference_steps=4, prompt="a blue boat at sea"))
    assert one != two


def test_a_client_that_leaves_interrupts_the_real_pipeline(tiny_worker: WorkerProcess) -> None:
    url = tiny_worker.url
    cancelled_before = _metric(url, 'hidream_requests_total{status="cancelled"}')
    body = {"prompt": "a long one", "n": 4, "num_inference_steps": 50, "seed": 1}
    with httpx.Client(timeout=httpx.Timeout(120, read=0.5)) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{url}{GEN}", json=body)  # gives up after 0.5 s and closes the connection
    deadline = time.monotonic() + 60
    while _metric(url, 'hidream_requests_total{status="cancelled"}') == cancelled_before:
        assert time.monotonic() < deadline, "the worker never noticed the client leaving"
        time.sleep(0.1)
    deadline = time.monotonic() + 60
    while "interrupted after step" not in tiny_worker.log.read_text():
        assert time.monotonic() < deadline, tiny_worker.log.read_text()
        time.sleep(0.1)
    line = next(x for x in tiny_worker.log.read_text().splitlines() if "interrupted after step" in x)
    done, total = line.rsplit("interrupted after step ", 1)[1].split(" of ")
    assert int(done) < int(total) == 50
    assert _generate(url, seed=2, num_inference_steps=2).status_code == 200


def test_the_real_pipeline_streams_previews_from_its_own_latents(tiny_worker: WorkerProcess) -> None:
    import json

    body = {"prompt": "a lighthouse", "size": "1024x1024", "num_inference_steps": 8, "seed": 3, "stream": True,
            "partial_images": 3}  # fmt: skip
    resp = httpx.post(tiny_worker.url + GEN, json=body, timeout=120)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in resp.text.splitlines()]
    partials = [line for line in lines if line["type"] == "partial_image"]
    assert [p["step"] for p in partials] == [2, 4, 6]
    pictures = [Image.open(io.BytesIO(base64.b64decode(p["data"][0]["b64_json"]))) for p in partials]
    assert {p.size for p in pictures} == {(32, 32)}  # tiny mode's latent resolution (its VAE does not scale)
    assert len({p.tobytes() for p in pictures}) == 3  # the latents change from step to step
    assert lines[-1]["type"] == "completed" and lines[-1]["body"]["seed"] == 3
