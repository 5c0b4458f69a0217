"""State of the fake fal queue (fal-api.md §2): requests on a timeline (queued, running, completed),
the failure modes fal really shows, armed by tests, and counts of what clients did. Thread-safe:
the server runs in its own thread or process while a test arms faults and reads counts."""

from __future__ import annotations

import base64
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, get_args

from tests.fakes import fal_schema
from tests.fakes.fal_schema import Detail, Job

FakeFault = Literal[
    # answered at the next submit
    "rate_limited",  # 429 + Retry-After (fal_max_queue_length-style)
    "auth",  # 401 no user for this key
    "locked",  # 403 "User is locked. Reason: Exhausted balance" (fal's out-of-credit answer)
    "ingress_502",  # nginx 502 before fal saw the request: no x-fal-request-id
    "ingress_503",
    # answered at the next status poll
    "poll_ingress_502",
    # the next accepted request: the runner fails it, or never finishes it
    "unavailable",  # runner_disconnected: COMPLETED with error, result 503
    "completed_with_error",  # the app raised: COMPLETED with error, result 500 internal_server_error
    "rejected_input",  # the app rejects the input: COMPLETED with error, result 422 detail[]
    "content_policy",  # 422 content_policy_violation
    "generation_timeout",  # 504 generation_timeout
    "garbage",  # COMPLETED, but the result is not the HiDream output shape
    "drip",  # COMPLETED, but the result trickles: status and headers at once, then a byte every DRIP_S
    "hang",  # IN_PROGRESS until cancelled
    "queued",  # IN_QUEUE (behind any earlier one still queued) until cancelled or ended by end_hung
]
FAULTS: frozenset[str] = frozenset(get_args(FakeFault))
SUBMIT_FAULTS = frozenset({"rate_limited", "auth", "locked", "ingress_502", "ingress_503"})
POLL_FAULTS = frozenset({"poll_ingress_502"})
Phase = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]

DRIP_S = 0.5  # a slow upstream's pace: one byte of the result body this often
NO_USER = {"detail": "No user found for Key ID and Secret"}
LOCKED = {"detail": "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing"}


@dataclass
class Reply:
    """An HTTP answer as the routes send it: a str body is HTML, anything else JSON."""

    status: int
    body: object
    headers: dict[str, str] = field(default_factory=dict)
    drip_s: float | None = None  # send the body a byte at a time, this far apart


def ingress(status: int) -> Reply:
    title = {502: "502 Bad Gateway", 503: "503 Service Temporarily Unavailable"}[status]
    html = f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center><hr><center>nginx</center></body></html>"  # noqa: E501
    return Reply(status, html)


@dataclass
class QueuedRequest:
    id: str
    app: str  # owner/app: where status, result and cancel live
    endpoint: str  # the full model id it was submitted to
    payload: object
    headers: dict[str, str]  # the submit's request headers (lower-case names)
    submitted: float
    start_at: float  # leaves the queue (inf: never)
    ended_at: float | None  # COMPLETED from then on (None: never, a hang)
    end: str  # "ok", "invalid", "request_timeout", "cancelled" or a runner fault
    job: Job | list[Detail]
    polls: int = 0
    reply: Reply | None = None

    def phase(self, now: float) -> Phase:
        if self.ended_at is not None and now >= self.ended_at:
            return "COMPLETED"
        return "IN_QUEUE" if now < self.start_at else "IN_PROGRESS"


class FakeFal:
    def __init__(self, *, inference_s: float = 0.05, queue_s: float = 0.0, response_suffix: bool = False) -> None:
        self.inference_s = inference_s
        self.queue_s = queue_s
        # True: response_url ends in /response (the docs' example) instead of the bare request URL.
        self.response_suffix = response_suffix
        # True: the CDN answers 404 for every file, as fal's does once it has dropped one.
        self.cdn_gone = False
        self._lock = threading.RLock()
        self._armed: deque[FakeFault] = deque()
        self._requests: dict[str, QueuedRequest] = {}
        self._cdn: dict[str, tuple[bytes, str]] = {}
        self._counts = dict.fromkeys(
            ("submits", "submit_refusals", "status_polls", "streams", "results", "cancels", "cancel_requests",
             "drips", "dripping"), 0
        )  # fmt: skip

    # --- for tests --------------------------------------------------------------------------------

    def fail_next(self, fault: str, count: int = 1) -> None:
        if fault not in FAULTS:
            raise ValueError(f"fal has no fault {fault!r}")
        with self._lock:
            self._armed.extend([fault] * count)  # type: ignore[list-item]

    def disarm(self) -> int:
        """Drop the faults not yet taken (a storm that is over); returns how many there were."""
        with self._lock:
            left = len(self._armed)
            self._armed.clear()
            return left

    def end_hung(self, end: str) -> int:
        """End every request the `hang` and `queued` faults hold, now, as `end` ("ok" or a runner fault): a
        test decides when a slow upstream answers, and how. The number of requests ended."""
        if end != "ok" and end not in FAULTS - SUBMIT_FAULTS - POLL_FAULTS - {"hang", "queued"}:
            raise ValueError(f"a hung request cannot end as {end!r}")
        with self._lock:
            hung = [r for r in self._requests.values() if r.end in ("hang", "queued") and r.ended_at is None]
            for request in hung:
                request.ended_at, request.end = time.monotonic(), end
            return len(hung)

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {**self._counts, "polls": {r.id: r.polls for r in self._requests.values()}}

    def count(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def requests(self) -> list[QueuedRequest]:
        with self._lock:
            return list(self._requests.values())

    # --- the queue --------------------------------------------------------------------------------

    def _take(self, kinds: frozenset[str]) -> FakeFault | None:
        if self._armed and self._armed[0] in kinds:
            return self._armed.popleft()
        return None

    def refuse_submit(self, app: str, max_queue_length: int | None) -> Reply | None:
        """A submit-time fault or a full queue, else None."""
        with self._lock:
            fault = self._take(SUBMIT_FAULTS)
            reply: Reply | None = None
            if fault == "rate_limited" or (
                max_queue_length is not None and self._waiting(app, time.monotonic()) >= max_queue_length
            ):
                reply = Reply(429, {"detail": "Too many requests in the queue"}, {"retry-after": "1"})
            elif fault == "auth":
                reply = Reply(401, NO_USER)
            elif fault == "locked":
                reply = Reply(403, LOCKED)
            elif fault in ("ingress_502", "ingress_503"):
                reply = ingress(502 if fault == "ingress_502" else 503)
            if reply is not None:
                self._counts["submit_refusals"] += 1
            return reply

    def submit(self, endpoint: str, payload: object, headers: dict[str, str]) -> QueuedRequest:
        app = fal_schema.ENDPOINTS[endpoint][0]
        job = fal_schema.validate(endpoint, payload)
        now = time.monotonic()
        with self._lock:
            fault = self._take(FAULTS - SUBMIT_FAULTS - POLL_FAULTS)
            start_at = now + self.queue_s
            end: str = fault or ("ok" if isinstance(job, Job) else "invalid")
            ended_at: float | None = start_at + self.inference_s
            if end in ("invalid", "rejected_input"):
                ended_at = start_at  # the runner validates before it generates
            elif end == "hang":
                ended_at = None
            elif end == "queued":
                start_at, ended_at = float("inf"), None
            start_timeout = _float(headers.get("x-fal-request-timeout"))
            if start_timeout is not None and self.queue_s > start_timeout:
                start_at, ended_at, end = float("inf"), now + start_timeout, "request_timeout"
            request = QueuedRequest(
                str(uuid.uuid4()), app, endpoint, payload, headers, now, start_at, ended_at, end, job
            )
            self._requests[request.id] = request
            self._counts["submits"] += 1
            return request

    def find(self, app: str, request_id: str) -> QueuedRequest | None:
        with self._lock:
            request = self._requests.get(request_id)
            return request if request is not None and request.app == app else None

    def urls(self, request: QueuedRequest, origin: str) -> dict[str, str]:
        base = f"{origin}/{request.app}/requests/{request.id}"
        return {
            "response_url": base + ("/response" if self.response_suffix else ""),
            "status_url": base + "/status",
            "cancel_url": base + "/cancel",
        }

    def status(self, request: QueuedRequest, origin: str, *, logs: bool, poll: bool = True) -> Reply:
        with self._lock:
            if poll:
                request.polls += 1
                self._counts["status_polls"] += 1
                if self._take(POLL_FAULTS):
                    return ingress(502)
            now = time.monotonic()
            phase = request.phase(now)
            body: dict[str, object] = {
                "status": phase,
                "request_id": request.id,
                "response_url": self.urls(request, origin)["response_url"],
            }
            if phase == "IN_QUEUE":
                body["queue_position"] = self._position(request, now)
                return Reply(202, body)
            body["logs"] = _logs(request, phase) if logs else None
            if phase == "IN_PROGRESS":
                return Reply(202, body)
            body["metrics"] = {"inference_time": self.inference_s}
            error = _status_error(request.end)
            if error is not None:
                body["error"] = error[0]
                if error[1] is not None:
                    body["error_type"] = error[1]
            return Reply(200, body)

    def result(self, request: QueuedRequest, origin: str) -> Reply:
        with self._lock:
            self._counts["results"] += 1
            if request.phase(time.monotonic()) != "COMPLETED":
                return Reply(400, {"detail": "Request is still in progress"})
            if request.reply is None:
                request.reply = self._final_reply(request, origin)
            return Reply(request.reply.status, request.reply.body, {**request.reply.headers}, request.reply.drip_s)

    def cancel(self, request: QueuedRequest) -> Reply:
        """§2.5: queued requests are removed, running ones signalled (here: they stop at once)."""
        with self._lock:
            self._counts["cancel_requests"] += 1
            now = time.monotonic()
            if request.phase(now) == "COMPLETED":
                return Reply(400, {"status": "ALREADY_COMPLETED"})
            request.ended_at, request.end = now, "cancelled"
            self._counts["cancels"] += 1
            return Reply(202, {"status": "CANCELLATION_REQUESTED"})

    def queue_position(self, request: QueuedRequest) -> int:
        with self._lock:
            return self._position(request, time.monotonic())

    def count_stream(self) -> None:
        with self._lock:
            self._counts["streams"] += 1

    def count_drip(self, change: int) -> None:
        """A dripping answer began (+1: `drips` and `dripping` grow) or its connection ended (-1)."""
        with self._lock:
            self._counts["dripping"] += change
            if change > 0:
                self._counts["drips"] += 1

    def cdn(self, name: str) -> tuple[bytes, str] | None:
        with self._lock:
            return None if self.cdn_gone else self._cdn.get(name)

    # --- internals --------------------------------------------------------------------------------

    def _waiting(self, app: str, now: float) -> int:
        return sum(1 for r in self._requests.values() if r.app == app and r.phase(now) == "IN_QUEUE")

    def _position(self, request: QueuedRequest, now: float) -> int:
        return sum(
            1
            for r in self._requests.values()
            if r.app == request.app and r.submitted < request.submitted and r.phase(now) == "IN_QUEUE"
        )

    def _final_reply(self, request: QueuedRequest, origin: str) -> Reply:
        end, job = request.end, request.job
        if end in ("ok", "drip") and isinstance(job, Job):
            return Reply(200, self._output(job, origin), drip_s=DRIP_S if end == "drip" else None)
        if end == "invalid" and isinstance(job, list):
            return Reply(422, {"detail": job})
        if end == "garbage":
            return Reply(200, {"images": [{"content_type": "image/png", "file_name": "output.png"}], "seed": 1})
        if end == "rejected_input":
            prompt = job.prompt if isinstance(job, Job) else ""
            item = fal_schema.detail(
                "prompt", "String should have at most 8 characters", "string_too_long", ctx={"max_length": 8}
            )
            return Reply(422, {"detail": [{**item, "input": prompt}]})
        if end == "content_policy":
            msg = "The content could not be processed because it contained material flagged by a content checker."
            return Reply(422, {"detail": [fal_schema.detail("prompt", msg, "content_policy_violation")]})
        if end == "generation_timeout":
            item = fal_schema.detail("prompt", "Generation timed out.", "generation_timeout")
            return Reply(504, {"detail": [{**item, "loc": ["body"]}]})
        if end == "completed_with_error":
            item = fal_schema.detail("prompt", "Internal server error", "internal_server_error")
            return Reply(500, {"detail": [{**item, "loc": ["body"]}]})
        error_type, status, text = {
            "unavailable": ("runner_disconnected", 503, "Runner disconnected"),
            "request_timeout": ("request_timeout", 504, "Request timed out"),
            "cancelled": ("client_cancelled", 499, "Request cancelled by the client"),
        }[end]
        headers = {"x-fal-error-type": error_type}
        if end == "request_timeout":
            headers["x-fal-request-timeout-type"] = "user"
        return Reply(status, {"detail": text, "error_type": error_type}, headers)

    def _output(self, job: Job, origin: str) -> dict[str, object]:
        seed = job.seed if job.seed is not None else random.randrange(2**32)
        content_type = "image/png" if job.output_format == "png" else "image/jpeg"
        ext = "png" if job.output_format == "png" else "jpeg"
        images: list[dict[str, object]] = []
        for i in range(job.num_images):
            data = fal_schema.render(job.width, job.height, job.output_format, seed, i)
            if job.sync_mode:
                url = f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
            else:
                name = f"{uuid.uuid4().hex}.{ext}"
                self._cdn[name] = (data, content_type)
                url = f"{origin}/cdn/files/{name}"
            images.append(
                {
                    "url": url,
                    "width": job.width,
                    "height": job.height,
                    "content_type": content_type,
                    "file_name": f"output_{i}.{ext}",
                    "file_size": len(data),
                }
            )
        return {
            "images": images,
            "timings": {"inference": self.inference_s},
            "seed": seed,
            "has_nsfw_concepts": [False] * job.num_images,
            "prompt": job.prompt,
        }


def _status_error(end: str) -> tuple[str, str | None] | None:
    """The error/error_type a COMPLETED status carries for a failed request (§5.4)."""
    return {
        "ok": None,
        "garbage": None,
        "drip": None,
        "invalid": ("Invalid status code: 422", None),
        "rejected_input": ("Invalid status code: 422", None),
        "content_policy": ("Invalid status code: 422", "content_policy_violation"),
        "generation_timeout": ("Invalid status code: 504", "generation_timeout"),
        "completed_with_error": ("Invalid status code: 500", "internal_server_error"),
        "unavailable": ("Runner disconnected", "runner_disconnected"),
        "request_timeout": ("Request timed out", "request_timeout"),
        "cancelled": ("Request cancelled by the client", "client_cancelled"),
    }[end]


def _logs(request: QueuedRequest, phase: Phase) -> list[dict[str, str]]:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    entries = [{"message": "Generating image...", "level": "INFO", "source": "USER", "timestamp": stamp}]
    if phase == "COMPLETED":
        entries.append({"message": "Done.", "level": "INFO", "source": "USER", "timestamp": stamp})
    return entries


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
