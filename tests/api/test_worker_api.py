"""The worker's HTTP API through the real app (create_app, lifespan running, a real loopback server)
with a stand-in pipeline: readiness, response shape, validation, the bounded queue, cancellation
on disconnect, failures, /v1/models and /metrics."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import httpx
from PIL import Image

from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import RunningWorker, running_worker, wait_until

GEN = "/v1/images/generations"


def metric(worker: RunningWorker, name: str, **labels: str) -> float | None:
    return worker.state.metrics.registry.get_sample_value(name, labels)


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    return dict(error)


def test_live_while_loading_and_ready_only_after_the_warm_up() -> None:
    loaded = threading.Event()
    with running_worker("full", loaded=loaded, wait_ready=False) as worker:
        assert httpx.get(f"{worker.url}/health").json() == {"status": "ok", "phase": "loading"}
        ready = httpx.get(f"{worker.url}/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "10"
        assert ready.json()["ready"] is False and ready.json()["phase"] == "loading"
        resp = httpx.post(f"{worker.url}{GEN}", json={"prompt": "too early"})
        assert assert_openai_error(resp, 503)["code"] == "model_not_ready"
        assert resp.headers["retry-after"] == "10"
        assert metric(worker, "hidream_model_loaded") == 0.0
        loaded.set()
        wait_until(lambda: httpx.get(f"{worker.url}/ready").status_code == 200, "ready")
        report = httpx.get(f"{worker.url}/ready").json()
        assert report["warm"] is True and report["loaded_at"] > 0 and report["load_seconds"] >= 0
        assert (report["model"], report["variant"], report["default_steps"]) == ("hidream-i1-full", "full", 50)
        assert report["ewma_latency_s"] > 0  # learned from the warm-up
        assert [c.prompt for c in worker.pipeline.calls] == ["warm-up"]
        assert metric(worker, "hidream_model_loaded") == 1.0
        assert httpx.get(f"{worker.url}/load").json()["ready"] is True


def test_a_generation_returns_pngs_of_the_requested_size_with_extension_headers() -> None:
    with running_worker("full") as worker:
        body = {"prompt": "a barn", "n": 2, "size": "1360x768", "seed": 9, "negative_prompt": "fog"}
        resp = httpx.post(f"{worker.url}{GEN}", json=body, headers={"x-request-id": "req-77"})
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert (data["seed"], data["size"]) == (9, "1360x768") and data["created"] > 0
        assert len(data["data"]) == 2
        for item in data["data"]:
            assert item["revised_prompt"] == "a barn"
            assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (1360, 768)
        assert (resp.headers["x-actual-size"], resp.headers["x-seed"], resp.headers["x-request-id"]) == (
            "1360x768",
            "9",
            "req-77",
        )
        assert int(resp.headers["x-queue-ms"]) >= 0 and int(resp.headers["x-infer-ms"]) >= 0
        call = worker.pipeline.calls[-1]
        assert (call.negative_prompt, call.n, call.steps, call.guidance_scale) == ("fog", 2, 50, 5.0)
        assert metric(worker, "hidream_images_generated_total") == 2.0
        assert metric(worker, "hidream_requests_total", status="ok") == 1.0
        assert metric(worker, "hidream_inference_duration_seconds_count") == 1.0
        assert metric(worker, "hidream_queue_duration_seconds_count") == 1.0
        assert metric(worker, "hidream_request_duration_seconds_count") == 1.0


def test_bad_requests_get_openai_shaped_400s_and_never_reach_the_pipeline() -> None:
    with running_worker("full") as worker:
        url = f"{worker.url}{GEN}"
        bad_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
        assert assert_openai_error(bad_json, 400)["type"] == "invalid_request_error"
        assert_openai_error(httpx.post(url, json={"prompt": "x", "size": "1792x1024"}), 400, "size")
        assert_openai_error(httpx.post(url, json={"prompt": "x", "style": "vivid"}), 400, "style")
        assert_openai_error(httpx.post(url, json={"prompt": "x", "response_format": "url"}), 400, "response_format")
        huge = httpx.post(url, json={"prompt": "x" * 300_000})
        assert "larger than" in assert_openai_error(huge, 400)["message"]  # type: ignore[operator]
        assert metric(worker, "hidream_requests_total", status="invalid") == 5.0
        assert [c.prompt for c in worker.pipeline.calls] == ["warm-up"]
        assert worker.jobs_started() == 0


def test_text_that_cannot_be_encoded_is_a_400_not_a_500_from_echoing_it() -> None:
    """A lone surrogate (legal as a JSON escape) used to run a job, then fail the answer that echoes
    the prompt: a 500, which the gateway counts against the route."""
    with running_worker("full") as worker:
        url, json_type = f"{worker.url}{GEN}", {"content-type": "application/json"}
        for body, param in (
            (rb'{"prompt": "a\ud800cat"}', "prompt"),
            (rb'{"prompt": "a cat", "negative_prompt": "\udfff"}', "negative_prompt"),
            (rb'{"prompt": "a cat", "model": "m\ud800"}', "model"),
            (rb'{"prompt": "a cat", "\ud800": 1}', "\\ud800"),
        ):
            assert_openai_error(httpx.post(url, content=body, headers=json_type), 400, param)


def test_bodies_json_loads_chokes_on_are_400s_not_500s() -> None:
    with running_worker("full") as worker:
        url, headers = f"{worker.url}{GEN}", {"content-type": "application/json"}
        for body in (b"[" * 5000 + b"]" * 5000, b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}"):
            assert_openai_error(httpx.post(url, content=body, headers=headers), 400)
        assert worker.jobs_started() == 0


def test_a_full_queue_answers_429_with_retry_after_and_ready_reports_the_load() -> None:
    # steps that take time, so the warm-up teaches the worker a non-zero time per step
    with running_worker("full", max_queue=1, pipeline=StandInPipeline(step_s=0.01)) as worker:
        worker.fill_queue()
        report = httpx.get(f"{worker.url}/ready").json()
        assert (report["in_flight"], report["queue_depth"], report["max_queue"]) == (1, 1, 1)
        assert report["expected_wait_s"] > 0
        resp = httpx.post(f"{worker.url}{GEN}", json={"prompt": "one too many"})
        error = assert_openai_error(resp, 429)
        assert (error["type"], error["code"]) == ("overloaded", "queue_full")
        assert int(resp.headers["retry-after"]) >= 1
        assert metric(worker, "hidream_num_requests_running") == 1.0
        assert metric(worker, "hidream_num_requests_waiting") == 1.0
        assert metric(worker, "hidream_requests_total", status="rejected") == 1.0
        worker.pipeline.release.set()
        worker.join_fillers()
        assert worker.filler_statuses == [200, 200]


async def test_a_client_that_leaves_while_queued_is_dropped_before_it_runs() -> None:
    with running_worker("full", max_queue=2) as worker:
        await asyncio.to_thread(worker.hold_one_job)
        async with httpx.AsyncClient(base_url=worker.url) as client:
            task = asyncio.create_task(client.post(GEN, json={"prompt": "leaves early"}, timeout=60))
            await asyncio.to_thread(wait_until, lambda: worker.state.queue.waiting == 1, "queued")
            task.cancel()
            await asyncio.to_thread(wait_until, lambda: worker.jobs_cancelled() == 1, "dropped")
        assert worker.state.queue.waiting == 0
        worker.pipeline.release.set()
        await asyncio.to_thread(worker.join_fillers)
        assert "leaves early" not in [c.prompt for c in worker.pipeline.calls]
        assert metric(worker, "hidream_requests_total", status="cancelled") == 1.0


async def test_a_client_that_leaves_while_running_interrupts_the_job() -> None:
    with running_worker("full") as worker:
        worker.pipeline.plan("hang")
        async with httpx.AsyncClient(base_url=worker.url) as client:
            task = asyncio.create_task(client.post(GEN, json={"prompt": "endless"}, timeout=60))
            await asyncio.to_thread(wait_until, worker.pipeline.holding.is_set, "running")
            task.cancel()
            await asyncio.to_thread(wait_until, lambda: worker.jobs_cancelled() == 1, "interrupted")
            assert worker.pipeline.calls[-1].interrupted
            assert (await client.post(GEN, json={"prompt": "next"})).status_code == 200


def test_a_failed_job_is_a_500_and_the_worker_keeps_serving() -> None:
    with running_worker("full") as worker:
        worker.pipeline.plan("fail")
        resp = httpx.post(f"{worker.url}{GEN}", json={"prompt": "x"})
        assert assert_openai_error(resp, 500)["code"] == "inference_failed"
        assert httpx.post(f"{worker.url}{GEN}", json={"prompt": "x"}).status_code == 200
        assert httpx.get(f"{worker.url}/ready").status_code == 200
        assert metric(worker, "hidream_requests_total", status="error") == 1.0


def test_a_poisoned_device_takes_the_worker_out_of_service() -> None:
    with running_worker("full") as worker:
        worker.pipeline.plan("fatal")
        first = httpx.post(f"{worker.url}{GEN}", json={"prompt": "x"})
        assert assert_openai_error(first, 503)["code"] == "device_failed"
        assert httpx.get(f"{worker.url}/health").status_code == 503
        ready = httpx.get(f"{worker.url}/ready")
        assert ready.status_code == 503 and ready.json()["phase"] == "failed"
        after = httpx.post(f"{worker.url}{GEN}", json={"prompt": "x"})
        assert assert_openai_error(after, 503)["code"] == "worker_failed"
        assert metric(worker, "hidream_model_loaded") == 0.0


def test_a_failed_warm_up_never_becomes_ready() -> None:
    pipeline = StandInPipeline()
    pipeline.plan("fail")
    with running_worker("fast", pipeline=pipeline, wait_ready=False) as worker:
        wait_until(lambda: worker.state.phase == "failed", "the warm-up to fail")
        assert httpx.get(f"{worker.url}/health").status_code == 503
        assert httpx.get(f"{worker.url}/ready").json()["error"] == "warm-up failed: InferenceError"


def test_models_lists_the_one_variant_with_its_defaults() -> None:
    with running_worker("dev") as worker:
        models = httpx.get(f"{worker.url}/v1/models").json()
        assert models["object"] == "list" and len(models["data"]) == 1
        model = models["data"][0]
        assert (model["id"], model["object"]) == ("hidream-i1-dev", "model")
        assert model["defaults"] == {"num_inference_steps": 28, "guidance_scale": 0.0}
        assert "1360x768" in model["sizes"]


def test_metrics_are_prometheus_text_from_the_workers_own_registry() -> None:
    with running_worker("full") as a, running_worker("full") as b:
        assert httpx.post(f"{a.url}{GEN}", json={"prompt": "x"}).status_code == 200
        text_a = httpx.get(f"{a.url}/metrics")
        text_b = httpx.get(f"{b.url}/metrics").text
        assert text_a.headers["content-type"].startswith("text/plain")
        assert 'hidream_requests_total{status="ok"} 1.0' in text_a.text
        assert 'hidream_requests_total{status="ok"} 0.0' in text_b  # no shared global registry
        for name in ("hidream_num_requests_running", "hidream_num_requests_waiting", "hidream_model_loaded"):
            assert f"{name} " in text_b
