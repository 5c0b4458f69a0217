"""fal.ai's queue API as the fake upstream serves it (shapes: /work/shared/reference/fal-api.md and
tests/fakes/fal_server.py): jobs that are IN_QUEUE for the first half of their delay, IN_PROGRESS
for the second, then COMPLETED; result bodies with data URIs (sync_mode) or URLs to /img/ on the
fake itself; cancel. No I/O here: the server module turns these replies into bytes."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bench.perf.pngs import PngCache
from bench.perf.replies import Reply, json_reply
from tests.fakes.fal_schema import PRESETS  # fal's image_size presets (fal-api.md §6.1)

Phase = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]

KEEP_S = 300.0  # finished jobs are forgotten after this, so a long run does not grow without bound


@dataclass(slots=True)
class FalJob:
    id: str
    app: str
    submitted: float
    done_at: float
    width: int
    height: int
    num_images: int
    sync_mode: bool
    prompt: str
    seed: int
    cancelled: bool = False

    def phase(self, now: float) -> Phase:
        if self.cancelled or now >= self.done_at:
            return "COMPLETED"
        if now < self.submitted + (self.done_at - self.submitted) / 2:
            return "IN_QUEUE"
        return "IN_PROGRESS"

    def next_change(self, now: float) -> float | None:
        """When phase() will next differ from now (for the SSE stream), or None once COMPLETED."""
        if self.phase(now) == "COMPLETED":
            return None
        half = self.submitted + (self.done_at - self.submitted) / 2
        return half if now < half else self.done_at


def app_of(path_parts: list[str]) -> str:
    """`owner/app` of a model path: status, result and cancel live there (fal-api.md §1)."""
    keep = 3 if path_parts and path_parts[0] in ("workflows", "comfy") else 2
    return "/".join(path_parts[:keep])


class FalQueue:
    def __init__(self, delay_s: float, pngs: PngCache, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._delay_s = delay_s
        self._pngs = pngs
        self._clock = clock
        self._jobs: OrderedDict[str, FalJob] = OrderedDict()
        self._image_ids = itertools.count(1)

    def submit(self, endpoint: str, payload: object, origin: str) -> Reply:
        if not isinstance(payload, dict):
            return _invalid("body", "Input should be a valid dictionary", "dict_type")
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return _invalid("prompt", "Field required", "missing")
        size = _image_size(payload.get("image_size", "square_hd"))
        if size is None:
            return _invalid("image_size", "Input should be a preset or {width, height}", "value_error")
        num_images = payload.get("num_images", 1)
        if not isinstance(num_images, int) or not 1 <= num_images <= 4:
            return _invalid("num_images", "Input should be between 1 and 4", "less_than_equal")
        seed = payload.get("seed")
        now = self._clock()
        self._forget_old(now)
        job = FalJob(
            id=str(uuid.uuid4()),
            app=app_of(endpoint.split("/")),
            submitted=now,
            done_at=now + self._delay_s,
            width=size[0],
            height=size[1],
            num_images=num_images,
            sync_mode=payload.get("sync_mode") is True,
            prompt=prompt,
            seed=seed if isinstance(seed, int) else random.randrange(2**32),
        )
        self._jobs[job.id] = job
        body = {
            "status": "IN_QUEUE",
            "request_id": job.id,
            **self._urls(job, origin),
            "logs": None,
            "queue_position": 0,
        }
        return json_reply(200, body, (("x-fal-request-id", job.id),))

    def find(self, app: str, request_id: str) -> FalJob | None:
        job = self._jobs.get(request_id)
        return job if job is not None and job.app == app else None

    def status_body(self, job: FalJob, origin: str, *, logs: bool) -> tuple[int, dict[str, object]]:
        """(HTTP status, status object): 202 while queued or running, 200 once COMPLETED (§2.2)."""
        phase = job.phase(self._clock())
        body: dict[str, object] = {
            "status": phase,
            "request_id": job.id,
            "response_url": self._urls(job, origin)["response_url"],
        }
        if phase == "IN_QUEUE":
            body["queue_position"] = 0
            return 202, body
        body["logs"] = [] if logs else None
        if phase == "IN_PROGRESS":
            return 202, body
        body["metrics"] = {"inference_time": self._delay_s}
        if job.cancelled:
            body["error"] = "Request cancelled by the client"
            body["error_type"] = "client_cancelled"
        return 200, body

    def status(self, job: FalJob, origin: str, *, logs: bool) -> Reply:
        code, body = self.status_body(job, origin, logs=logs)
        return json_reply(code, body, (("x-fal-request-id", job.id),))

    def result(self, job: FalJob, origin: str) -> Reply:
        headers = (("x-fal-request-id", job.id),)
        if job.phase(self._clock()) != "COMPLETED":
            return json_reply(400, {"detail": "Request is still in progress"}, headers)
        if job.cancelled:
            body = {"detail": "Request cancelled by the client", "error_type": "client_cancelled"}
            return json_reply(499, body, (*headers, ("x-fal-error-type", "client_cancelled")))
        png = self._pngs.get(job.width, job.height)
        images = []
        for i in range(job.num_images):
            if job.sync_mode:
                url = "data:image/png;base64," + png.b64.decode("ascii")
            else:
                url = f"{origin}/img/{next(self._image_ids)}.png?size={job.width}x{job.height}"
            images.append(
                {
                    "url": url,
                    "width": job.width,
                    "height": job.height,
                    "content_type": "image/png",
                    "file_name": f"output_{i}.png",
                    "file_size": len(png.data),
                }
            )
        output = {
            "images": images,
            "timings": {"inference": self._delay_s},
            "seed": job.seed,
            "has_nsfw_concepts": [False] * job.num_images,
            "prompt": job.prompt,
        }
        return json_reply(200, output, headers)

    def cancel(self, job: FalJob) -> Reply:
        """§2.5: a request not yet completed is cancelled; a completed one cannot be."""
        headers = (("x-fal-request-id", job.id),)
        if job.phase(self._clock()) == "COMPLETED":
            return json_reply(400, {"status": "ALREADY_COMPLETED"}, headers)
        job.cancelled = True
        return json_reply(202, {"status": "CANCELLATION_REQUESTED"}, headers)

    def now(self) -> float:
        return self._clock()

    @staticmethod
    def _urls(job: FalJob, origin: str) -> dict[str, str]:
        base = f"{origin}/{job.app}/requests/{job.id}"
        return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}

    def _forget_old(self, now: float) -> None:
        while self._jobs:
            oldest = next(iter(self._jobs.values()))
            if now - oldest.done_at < KEEP_S:
                return
            self._jobs.popitem(last=False)


def _image_size(value: object) -> tuple[int, int] | None:
    if isinstance(value, str):
        return PRESETS.get(value)
    if isinstance(value, dict):
        width, height = value.get("width"), value.get("height")
        if isinstance(width, int) and isinstance(height, int) and 0 < width <= 8192 and 0 < height <= 8192:
            return width, height
    return None


def _invalid(field_name: str, message: str, kind: str) -> Reply:
    item = {"loc": ["body", field_name], "msg": message, "type": kind}
    return json_reply(422, {"detail": [item]})
