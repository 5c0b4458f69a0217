"""Submitting, reading and cancelling jobs for a team (the API's side of them; the runner serves
them). A job is admitted as a request is, at submission: a refusal is an ordinary error then, and
an admitted job holds its reservation (keyed to the job id) until it is settled."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from gateway.accounting.keys import Principal
from gateway.accounting.metering import Meter
from gateway.accounting.spool import to_record
from gateway.errors import ConflictError, InvalidRequestError, NotFoundError
from gateway.images.store import ImageStorage
from gateway.images.validation import ValidRequest
from gateway.jobs import requests
from gateway.jobs.runner import unserved
from gateway.jobs.ssrf import ForbiddenTargetError, TargetPolicy, check_url
from gateway.jobs.store import Job, JobStore
from gateway.jobs.views import job_json
from gateway.jobs.webhooks import TeamWebhooks
from gateway.routing.dispatch import RoutingRequest
from gateway.service import Admitted, ImageService


@dataclass(frozen=True, slots=True)
class Submitted:
    body: dict[str, Any]
    headers: dict[str, str]


class JobService:
    def __init__(
        self,
        jobs: JobStore,
        service: ImageService,
        meter: Meter,
        store: ImageStorage,
        webhooks: TeamWebhooks,
        policy: TargetPolicy,
        *,
        hold_s: float,
        public_url: str,
    ) -> None:
        self._jobs = jobs
        self._service = service
        self._meter = meter
        self._store = store
        self.webhooks = webhooks
        self.policy = policy
        self._hold_s = hold_s
        self._public_url = public_url

    async def check_webhook_url(self, url: str, param: str = "webhook_url") -> None:
        try:
            await check_url(url, self.policy)
        except ForbiddenTargetError as exc:
            raise InvalidRequestError(
                f"'{param}' is refused: {exc}.", param=param, code="invalid_webhook_url"
            ) from None

    async def submit(self, principal: Principal, valid: ValidRequest, routing: RoutingRequest) -> Submitted:
        if valid.stream:
            raise InvalidRequestError(
                "A job answers 202 and its result later; send stream=true or Prefer: respond-async, not both.",
                param="stream",
            )
        url = valid.webhook_url or await self.webhooks.default_url(principal.team_id)
        if url is not None:
            await self.check_webhook_url(url)
            if await self.webhooks.key(principal.team_id) is None:
                raise InvalidRequestError(
                    "This team has no webhook signing secret yet; the gateway admin makes one with "
                    "POST /admin/teams/{team_id}/webhook-secret.",
                    param="webhook_url",
                    code="webhook_secret_missing",
                )
        job_id = "job_" + secrets.token_hex(12)
        admitted = await self._service.admit(principal, valid, job_id, routing, None, self._hold_s)
        assert isinstance(admitted, Admitted)  # no Idempotency-Key: never a replay
        data, uploads = requests.dump(valid, routing)
        fields = {
            "team_id": principal.team_id,
            "key_id": principal.key_id,
            "model": valid.model.id,
            "kind": "edit" if valid.images else "generation",
            "request": json.dumps(data),
            "admission": json.dumps(to_record(a=admitted.admission)["a"]),
        }
        if url is not None:
            fields["webhook_url"] = url
            fields["webhook"] = json.dumps({"state": "pending", "attempts": []})
        try:
            await self._jobs.create(job_id, fields, live_s=self._hold_s, inputs=uploads)
            job = await self._jobs.get(job_id)
            assert job is not None
        except BaseException:
            await self._meter.settle(admitted.admission, unserved(_draft(job_id, fields), "cancelled"))
            raise
        body = await job_json(job, position=await self._jobs.position(job_id), store=self._store,
                              public_url=self._public_url)  # fmt: skip
        headers = {**admitted.headers(), "preference-applied": "respond-async", "location": body["links"]["self"]}
        return Submitted(body, headers)

    async def get(self, team_id: str, job_id: str) -> dict[str, Any]:
        job = await self._owned(team_id, job_id)
        position = await self._jobs.position(job_id) if job.status == "queued" else None
        return await job_json(job, position=position, store=self._store, public_url=self._public_url)

    async def cancel(self, team_id: str, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job: its upstream call is cancelled (by the process running
        it, which learns of it when it next renews its lease) and it is settled charged nothing."""
        was = await self._jobs.cancel(job_id, team_id)
        if was is None:
            raise _not_found(job_id)
        job = await self._owned(team_id, job_id)
        if was in ("queued", "running"):
            # Settled here at once; the runner's own settlement of the cancelled call finds it done.
            await self._meter.settle(self._meter.admission_of(job.admission), unserved(job, "cancelled"))
            await self._jobs.drop_inputs(job_id)
        elif was == "settling":
            raise ConflictError("The job has made its images and is finishing; it can no longer be cancelled.",
                                param="job_id", code="job_finished")  # fmt: skip
        return await job_json(job, position=None, store=self._store, public_url=self._public_url)

    async def _owned(self, team_id: str, job_id: str) -> Job:
        job = await self._jobs.get(job_id) if job_id.startswith("job_") and len(job_id) <= 64 else None
        if job is None or job.team_id != team_id:  # another team's job is as absent as none
            raise _not_found(job_id)
        return job


def _not_found(job_id: str) -> NotFoundError:
    return NotFoundError(f"No job '{job_id[:64]}'.", param="job_id", code="job_not_found")


def _draft(job_id: str, fields: dict[str, str]) -> Job:
    return Job.from_hash(job_id, {**fields, "status": "queued"})
