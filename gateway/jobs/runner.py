"""The job runner every gateway process runs: it leases queued jobs (and jobs whose process died,
once their lease ran out), serves each through ImageService as a synchronous request would be,
keeps the answer, settles it once and sends the webhook, renewing the lease all the while.

Settled exactly once: the answer is written to the job (status `settling`, with its settlement)
before the charge, so a process that dies between the two leaves a job the next one settles from
what was written; the settlement script charges a reservation once, whoever settles it. A job
found `running` (its process died mid-call) is served again: its reservation, keyed to the job,
still holds (it was admitted for the job's whole life), or is admitted anew if it was released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from gateway.accounting.keys import Principal
from gateway.accounting.metering import Meter, Settlement
from gateway.accounting.spool import to_record
from gateway.catalog import Catalog
from gateway.errors import GatewayError, GoneError
from gateway.images.store import ImageStorage
from gateway.jobs import requests
from gateway.jobs.store import Job, JobStore
from gateway.jobs.views import job_json
from gateway.jobs.webhooks import TeamWebhooks, WebhookSender
from gateway.periodic import raise_if_cancelling
from gateway.redis.client import REDIS_ERRORS
from gateway.service import Admitted, ImageService, ImagesResponse

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    owner: str  # this process, as leases name it
    concurrency: int  # jobs this process runs at once
    lease_s: float
    poll_s: float
    hold_s: float  # how long a job's reservation holds (its admission's hold)
    public_url: str
    webhook_attempts: int
    webhook_backoff_s: float  # the wait before the second attempt; doubled before each next one
    max_attempts: int = 5  # leases of a job that never finished before it is failed instead


class LeaseLostError(Exception):
    """The job was cancelled, or another process took it over: stop working on it."""


def error_json(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, GatewayError):
        return {"status": exc.status_code, **exc.body()}
    log.exception("job failed", exc_info=exc)
    return {"status": 500, "error": {"message": "The server had an error while processing the job.",
                                     "type": "server_error", "param": None, "code": None}}  # fmt: skip


class JobRunner:
    def __init__(
        self,
        jobs: JobStore,
        service: ImageService,
        meter: Meter,
        catalog: Callable[[], Catalog],  # the catalog in use now (pricing.yaml may be reloaded)
        store: ImageStorage,
        webhooks: TeamWebhooks,
        sender: WebhookSender,
        config: RunnerConfig,
    ) -> None:
        self._jobs = jobs
        self._service = service
        self._meter = meter
        self._catalog = catalog
        self._store = store
        self._webhooks = webhooks
        self._sender = sender
        self._c = config
        self._running: dict[str, asyncio.Task[None]] = {}

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self._take()
                except REDIS_ERRORS as exc:
                    log.warning("job runner: Redis unavailable (%s)", type(exc).__name__)
                except Exception:
                    log.exception("job runner: leasing failed")
                raise_if_cancelling()  # stopped while leasing: the stop stands
                await asyncio.sleep(self._c.poll_s)
        finally:
            await self._stop()

    async def _take(self) -> None:
        while len(self._running) < self._c.concurrency:
            job_id = await self._jobs.lease(self._c.owner, self._c.lease_s, self._running)
            if job_id is None:
                return
            if not job_id or job_id in self._running:
                continue
            task = asyncio.create_task(self._run(job_id))
            self._running[job_id] = task
            task.add_done_callback(partial(self._forget, job_id))

    def _forget(self, job_id: str, _: object) -> None:
        self._running.pop(job_id, None)

    async def _stop(self) -> None:
        """Shutting down: jobs in hand are cancelled upstream and settled uncharged, and their
        leases end now, so another process serves them again at once (admitted anew)."""
        tasks = dict(self._running)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for job_id in tasks:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._jobs.expire_lease(job_id, self._c.owner)

    # --- one job ------------------------------------------------------------------------------

    async def _run(self, job_id: str) -> None:
        try:
            await self._leased(job_id, self._work(job_id))
        except LeaseLostError:
            log.info("job %s: cancelled, taken over or its lease unknown (Redis); stopped", job_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the lease runs out and another process tries again
            log.exception("job %s: the runner failed", job_id)

    async def _leased(self, job_id: str, work: Awaitable[None]) -> None:
        """Run `work` while renewing the job's lease; cancel it if the job is cancelled or lost (taken
        over: its reservation is then left to the new owner, see `_still_ours`)."""
        task = asyncio.ensure_future(work)
        every = self._c.lease_s / 3
        try:
            while not task.done():
                await asyncio.wait((task,), timeout=every)
                if task.done():
                    break
                try:
                    verdict, status = await self._jobs.renew(job_id, self._c.owner, self._c.lease_s)
                except REDIS_ERRORS:
                    continue
                if verdict != "ok" or status == "cancelled":
                    task.cancel()
                    await asyncio.wait((task,))
                    raise LeaseLostError(job_id)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait((task,))
            raise
        task.result()

    async def _work(self, job_id: str) -> None:
        job = await self._jobs.get(job_id)
        if job is None:
            return
        if job.status == "running" and job.runs > self._c.max_attempts:
            await self._give_up(job)
        elif job.status == "running":
            await self._execute(job)
        elif job.status == "settling":
            await self._resettle(job)
        job = await self._jobs.get(job_id)
        if job is not None and job.status in ("succeeded", "failed") and _webhook_pending(job):
            await self._deliver(job)
        await self._jobs.move(job_id, self._c.owner, ("succeeded", "failed", "cancelled"), {}, release=True)

    async def _execute(self, job: Job) -> None:
        principal = Principal(job.team_id, job.key_id)
        try:
            valid, routing = requests.load(self._catalog(), job.request, await self._jobs.inputs(job.id))
            admission = self._meter.admission_of(job.admission)
            if not await self._meter.is_reserved(job.team_id, job.id):
                # Released (the process serving it stopped, or the hold ran out): admitted anew.
                again = await self._service.admit(principal, valid, job.id, routing, None, self._c.hold_s)
                assert isinstance(again, Admitted)  # no Idempotency-Key: never a replay
                admission = again.admission
                await self._move(job, ("running",), {"admission": json.dumps(to_record(a=admission)["a"])})

            async def submitted(provider: str, handle: str) -> None:
                await self._move(job, ("running",), {"upstream": json.dumps([provider, handle])})

            admitted = Admitted(
                principal, valid, admission, routing, keep=True, upstream=job.upstream, on_submitted=submitted,
                still_ours=partial(self._still_ours, job.id),
            )  # fmt: skip
            result = await self._service.serve(admitted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Settled (charged nothing) by the service if it was served; if it failed before, here
            # (a second settlement of the same reservation changes nothing). Not if another process
            # took the job over: it serves the job under the same reservation.
            if not await self._still_ours(job.id):
                raise LeaseLostError(job.id) from exc
            await self._meter.settle(self._meter.admission_of(job.admission), unserved(job, "failed", exc))
            await self._move(job, ("running",), {"status": "failed", "error": json.dumps(error_json(exc)),
                                                  "finished_ms": _now_ms()})  # fmt: skip
            await self._jobs.drop_inputs(job.id)
            return
        await self._keep(job, result, b64=valid.response_format == "b64_json")

    async def _give_up(self, job: Job) -> None:
        """Leased `max_attempts` times and never finished (the processes serving it died, or their
        runner failed): failed, charged nothing, rather than taken over forever."""
        exc = GatewayError(
            f"The job was attempted {self._c.max_attempts} times without finishing; it was charged nothing.",
            code="job_attempts_exhausted",
        )
        log.warning("job %s: given up after %d attempts", job.id, job.runs - 1)
        await self._meter.settle(self._meter.admission_of(job.admission), unserved(job, "failed", exc))
        await self._move(job, ("running",), {"status": "failed", "error": json.dumps(error_json(exc)),
                                              "finished_ms": _now_ms()})  # fmt: skip
        await self._jobs.drop_inputs(job.id)

    async def _keep(self, job: Job, result: ImagesResponse, *, b64: bool) -> None:
        delivery = result.delivery
        assert delivery is not None and delivery.outcome is not None
        settlement = to_record(admission=self._meter.admission_of(job.admission), outcome=delivery.outcome)
        if settlement["admission"]["request_id"] != job.id:  # pragma: no cover - the job id is the request id
            raise AssertionError("a job's request id is its own")
        kept_body = {
            **result.body,
            "data": [{k: v for k, v in d.items() if k != "b64_json"} for d in result.body["data"]],
        }
        headers = {k: v for k, v in result.headers.items() if k.startswith("x-gateway-")}
        kept = {"body": kept_body, "headers": headers, "images": list(result.kept), "b64": b64}
        try:
            verdict = await self._jobs.move(
                job.id, self._c.owner, ("running",), {"status": "settling", "result": json.dumps(kept),
                                                       "settlement": json.dumps(settlement)},
            )  # fmt: skip
        except BaseException:
            # Not known whether it was written: left to whoever next holds the job, which serves it
            # again under the reservation (still running) or settles what was written (settling).
            await delivery(None)
            raise
        if verdict != "ok":  # cancelled (or taken over) while it was made: not charged
            await self._unkept(job, result, taken_over=verdict == "lost")
            raise LeaseLostError(job.id)
        await delivery(True)
        await self._move(job, ("settling",), {"status": "succeeded", "finished_ms": _now_ms(), "settlement": ""})
        await self._jobs.drop_inputs(job.id)

    async def _unkept(self, job: Job, result: ImagesResponse, *, taken_over: bool) -> None:
        """Images made and refused by the job: they are this run's alone, so they go. Settled
        cancelled, charged nothing; unless another process took the job over, which serves it
        under the same reservation (settling it here would release that process's reservation)."""
        assert result.delivery is not None
        await result.delivery(None if taken_over else False)
        await asyncio.shield(self._store.discard([n for n in result.kept if n is not None]))

    async def _still_ours(self, job_id: str) -> bool:
        """Whether this process still holds the job (False: another process took it over once this
        one's lease lapsed). Redis unreachable: not known, so False: the reservation is left on the
        job (a spooled settlement replayed later could release a new owner's), to whoever finishes
        it once this lease lapses; a DELETE settles its job itself."""
        try:
            verdict, _ = await self._jobs.renew(job_id, self._c.owner, self._c.lease_s)
        except REDIS_ERRORS:
            return False
        return verdict != "lost"

    async def _resettle(self, job: Job) -> None:
        """The process that made the images died before it had settled them: settle from what it wrote
        (a no-op if it had settled after all)."""
        if job.settlement is not None and not await self._meter.settle_spooled(job.settlement):
            raise ConnectionError("Redis unavailable; settling later")
        await self._move(job, ("settling",), {"status": "succeeded", "finished_ms": _now_ms(), "settlement": ""})
        await self._jobs.drop_inputs(job.id)

    async def _move(self, job: Job, allowed: tuple[str, ...], fields: dict[str, str]) -> None:
        if await self._jobs.move(job.id, self._c.owner, allowed, fields) != "ok":
            raise LeaseLostError(job.id)

    # --- the webhook --------------------------------------------------------------------------

    async def _deliver(self, job: Job) -> None:
        assert job.webhook_url is not None
        attempts: list[dict[str, Any]] = list((job.webhook or {}).get("attempts", []))
        key = await self._webhooks.key(job.team_id)
        if key is None:
            await self._record(job, attempts, "failed", "the team has no webhook secret")
            return
        body = await self._payload(job)
        while len(attempts) < self._c.webhook_attempts:
            if attempts:
                wait = self._c.webhook_backoff_s * 2 ** (len(attempts) - 1)
                await asyncio.sleep(max(0.0, attempts[-1]["at"] + wait - time.time()))
            attempt = await self._sender.send(job.webhook_url, key, job.id, body)
            attempts.append(attempt.as_json())
            if attempt.ok:
                await self._record(job, attempts, "delivered")
                return
            log.info("job %s: webhook attempt %d failed: %s", job.id, len(attempts), attempt.error)
            last = len(attempts) >= self._c.webhook_attempts
            await self._record(job, attempts, "failed" if last else "pending")

    async def _payload(self, job: Job) -> bytes:
        try:
            data = await job_json(job, position=None, store=self._store, public_url=self._c.public_url)
        except GoneError as exc:  # the images were swept before the webhook could be sent
            data = await job_json(_without_result(job), position=None, store=self._store, public_url=self._c.public_url)
            data["error"] = {"status": exc.status_code, **exc.body()}
        data.pop("webhook", None)
        event = {
            "type": f"image.job.{data['status']}",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "data": data,
        }
        return orjson.dumps(event)

    async def _record(self, job: Job, attempts: list[dict[str, Any]], state: str, error: str | None = None) -> None:
        record: dict[str, Any] = {"state": state, "attempts": attempts}
        if error:
            record["error"] = error
        await self._move(job, ("succeeded", "failed"), {"webhook": json.dumps(record)})


def unserved(job: Job, status: str, exc: Exception | None = None) -> Settlement:
    """The settlement of a job that made no image (cancelled, or failed before it was served)."""
    kind = exc.kind if isinstance(exc, GatewayError) else ("internal" if exc else status)
    fields = (("team_id", job.team_id), ("key_id", job.key_id), ("provider", ""),
              ("kind", job.kind), ("error_kind", kind))  # fmt: skip
    return Settlement(status, 0, 0, 0, job.model, fields)


def _webhook_pending(job: Job) -> bool:
    return job.webhook_url is not None and (job.webhook or {}).get("state", "pending") == "pending"


def _without_result(job: Job) -> Job:
    return replace(job, result=None)


def _now_ms() -> str:
    return str(int(time.time() * 1000))
