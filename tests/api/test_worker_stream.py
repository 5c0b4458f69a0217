"""The worker's streaming protocol (worker/streaming.py) through the real app on a loopback port with
the stand-in pipeline, whose latents the worker turns into previews as on a real pipeline: the
NDJSON lines in order, the final line equal to the JSON answer, errors after admission as a final
line, refusals before it as ordinary errors, and a client that leaves cancelling the job."""

from __future__ import annotations

import base64
import io
import json

import httpx
from PIL import Image

from tests.fakes.worker_server import running_worker, wait_until

GEN = "/v1/images/generations"


def _lines(resp: httpx.Response) -> list[dict[str, object]]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in resp.text.splitlines()]


def test_a_stream_sends_queued_progress_previews_then_the_json_answer_as_its_last_line() -> None:
    with running_worker("full") as worker:
        body = {"prompt": "a barn", "n": 2, "size": "1024x1024", "seed": 9, "num_inference_steps": 6,
                "stream": True, "partial_images": 2}  # fmt: skip
        lines = _lines(httpx.post(f"{worker.url}{GEN}", json=body, headers={"x-request-id": "req-s"}, timeout=60))
        kinds = [line["type"] for line in lines]
        assert kinds[0] == "queued" and lines[0]["queue_position"] == 0
        assert kinds[-1] == "completed"
        assert [line["step"] for line in lines if line["type"] == "progress"] == [1, 2, 3, 4, 5, 6]
        partials = [line for line in lines if line["type"] == "partial_image"]
        # Evenly spaced before the last step, each sent before that step's progress line.
        assert [(p["partial_image_index"], p["step"]) for p in partials] == [(0, 2), (1, 4)]
        assert kinds.index("partial_image") == kinds.index("progress") + 1
        for p in partials:
            assert p["size"] == "128x128" and p["steps"] == 6
            data = p["data"]
            assert isinstance(data, list) and len(data) == 2  # one preview per image of the batch
            picture = Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"])))
            assert (picture.format, picture.size) == ("PNG", (128, 128))
        # The stand-in's latents move from noise toward a gradient: the later preview differs.
        assert partials[0]["data"] != partials[1]["data"]
        final = lines[-1]
        assert final["status"] == 200
        headers = final["headers"]
        assert isinstance(headers, dict) and headers["x-request-id"] == "req-s" and headers["x-seed"] == "9"
        answer = final["body"]
        assert isinstance(answer, dict) and answer["seed"] == 9 and len(answer["data"]) == 2
        plain = httpx.post(f"{worker.url}{GEN}", json={k: v for k, v in body.items() if k not in ("stream",
                           "partial_images")}, timeout=60)  # fmt: skip
        assert plain.headers["content-type"] == "application/json"  # without stream: the JSON answer
        assert plain.json()["data"] == answer["data"]  # the same seed, the same pictures


def test_partial_images_without_stream_is_a_400_naming_it() -> None:
    with running_worker("full") as worker:
        resp = httpx.post(f"{worker.url}{GEN}", json={"prompt": "p", "partial_images": 1})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "partial_images"
        resp = httpx.post(f"{worker.url}{GEN}", json={"prompt": "p", "stream": True, "partial_images": 4})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "partial_images"
        assert worker.pipeline.calls == [c for c in worker.pipeline.calls if c.prompt == "warm-up"]


def test_a_job_that_fails_after_the_stream_began_ends_it_with_an_error_line() -> None:
    with running_worker("full") as worker:
        worker.pipeline.plan("fail")
        lines = _lines(httpx.post(f"{worker.url}{GEN}", json={"prompt": "p", "stream": True}, timeout=60))
        assert [line["type"] for line in lines] == ["queued", "error"]
        assert lines[-1]["status"] == 500
        body = lines[-1]["body"]
        assert isinstance(body, dict) and body["error"]["code"] == "inference_failed"


def test_a_full_queue_refuses_a_stream_with_an_ordinary_429() -> None:
    with running_worker("full", max_queue=0) as worker:
        worker.hold_one_job()
        resp = httpx.post(f"{worker.url}{GEN}", json={"prompt": "p", "stream": True})
        assert resp.status_code == 429 and resp.headers["content-type"] == "application/json"
        assert "retry-after" in resp.headers


def test_a_stream_client_that_leaves_cancels_the_running_job() -> None:
    with running_worker("full") as worker:
        worker.pipeline.plan("hang")
        cancelled = worker.jobs_cancelled()
        with httpx.stream("POST", f"{worker.url}{GEN}", json={"prompt": "p", "stream": True}, timeout=60) as r:
            for line in r.iter_lines():
                if json.loads(line)["type"] == "progress":
                    break  # the job runs: leave
        wait_until(lambda: worker.jobs_cancelled() == cancelled + 1, "the job to be cancelled")
        wait_until(lambda: worker.state.queue.in_flight == 0, "the pipeline to stop")
        assert worker.pipeline.calls[-1].interrupted
