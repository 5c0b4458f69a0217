"""A job as the API and its webhook show it: status, queue position, and once it succeeded the same
body a synchronous call answers, its URLs signed anew at each read (as an idempotent replay's are)."""

from __future__ import annotations

import copy
from typing import Any

from gateway.errors import GoneError
from gateway.images.store import ImageStorage, give_back
from gateway.jobs.store import Job

JOBS_PATH = "/v1/images/jobs/"

# A served answer's x-gateway-* headers, as a job's result carries them (the 202 was sent long before).
LATE_HEADERS = {
    "x-gateway-provider": "provider",
    "x-gateway-route-reason": "route_reason",
    "x-gateway-charged-usd": "charged_usd",
    "x-gateway-generated-size": "generated_size",
}


def public_status(status: str) -> str:
    return "running" if status == "settling" else status


def _seconds(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


async def job_json(job: Job, *, position: int | None, store: ImageStorage, public_url: str) -> dict[str, Any]:
    link = public_url + JOBS_PATH + job.id
    out: dict[str, Any] = {
        "id": job.id,
        "object": "image.job",
        "status": public_status(job.status),
        "kind": job.kind,
        "model": job.model,
        "created_at": _seconds(job.created_ms),
        "started_at": _seconds(job.started_ms),
        "finished_at": _seconds(job.finished_ms),
        "queue_position": position,
        "links": {"self": link, "cancel": link},
        "result": None,
        "error": job.error,
        "webhook": _webhook(job),
    }
    if job.status == "succeeded" and job.result is not None:
        out["result"] = await result_body(job, store)
    return out


def _webhook(job: Job) -> dict[str, Any] | None:
    if job.webhook_url is None:
        return None
    state = job.webhook or {}
    return {"url": job.webhook_url, "state": state.get("state", "pending"), "attempts": state.get("attempts", [])}


async def result_body(job: Job, store: ImageStorage) -> dict[str, Any]:
    """The synchronous answer's body, each kept image given a URL signed now (or read back as
    b64_json); the x-gateway-* facts under `gateway`."""
    assert job.result is not None
    kept = job.result
    body: dict[str, Any] = copy.deepcopy(kept["body"])
    b64 = kept.get("b64", False)
    if not await give_back(store, body["data"], kept.get("images", ()), b64=b64):
        raise GoneError(
            f"The images of job {job.id} have been deleted (images are kept about {store.ttl_s} s after "
            "their URL was last issued).",
            param="job_id",
            code="job_images_gone",
        )
    headers = kept.get("headers", {})
    gateway: dict[str, Any] = {key: headers[h] for h, key in LATE_HEADERS.items() if h in headers}
    ignored = headers.get("x-gateway-ignored-params")
    gateway["ignored_params"] = ignored.split(", ") if ignored else []
    body["gateway"] = gateway
    return body
