"""A job whose runner fails every time, for a reason other than its request, is not taken over
forever: after `max_attempts` leases it is failed with an OpenAI-shaped error, charged nothing,
its reservation released, and its webhook sent as for any failure. The runner and its Redis
(a real redis-server), meter and webhook sender are the gateway's own; only its work fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.accounting.keys import KeyStore, TeamLimits, team_prefix
from gateway.accounting.metering import Admission, Meter
from gateway.accounting.spool import to_record
from gateway.jobs.runner import JobRunner, RunnerConfig
from gateway.jobs.ssrf import TargetPolicy
from gateway.jobs.store import Job, JobStore
from gateway.jobs.webhooks import TeamWebhooks, WebhookSender
from tests.fakes.webhook_receiver import Receiver, running_receiver

MAX_ATTEMPTS = 3


class FailingRunner(JobRunner):
    """The gateway's runner, whose work on a job always fails (as a process dying would)."""

    executed: list[int]

    async def _execute(self, job: Job) -> None:
        self.executed.append(job.runs)
        raise RuntimeError("the runner failed")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as made:
        yield made


async def test_a_job_failing_every_attempt_is_failed_uncharged_after_max_attempts(
    redis: Redis, receiver: Receiver
) -> None:
    team = await KeyStore(redis).create_team("t", 100.0, TeamLimits(100, 100, 100))
    meter = Meter(redis)
    jobs = JobStore(redis, keep_s=60)
    webhooks = TeamWebhooks(redis)
    await webhooks.rotate_secret(team.id)
    job_id = "job_attempts"
    admission = await meter.admit(team.id, job_id, 1, 50_000, hold_s=60)
    assert isinstance(admission, Admission)
    fields = {
        "team_id": team.id,
        "key_id": "k",
        "model": "hidream-i1-full",
        "kind": "generation",
        "request": json.dumps({"prompt": "never"}),
        "admission": json.dumps(to_record(a=admission)["a"]),
        "webhook_url": receiver.url(),
        "webhook": json.dumps({"state": "pending", "attempts": []}),
    }
    await jobs.create(job_id, fields, live_s=60, inputs={})
    config = RunnerConfig(
        owner="test:1:a", concurrency=1, lease_s=0.3, poll_s=0.05, hold_s=60, public_url="http://gateway.test",
        webhook_attempts=1, webhook_backoff_s=0.1, max_attempts=MAX_ATTEMPTS,
    )  # fmt: skip
    sender = WebhookSender(TargetPolicy.parse(["127.0.0.0/8"], allow_http=True), timeout_s=5)
    # Neither the image service, the catalog nor the image store is reached: the work fails first.
    unused: Any = None
    runner = FailingRunner(jobs, unused, meter, lambda: unused, unused, webhooks, sender, config)
    runner.executed = []
    running = asyncio.create_task(runner.run_forever())
    try:
        async with asyncio.timeout(30):
            while (job := await jobs.get(job_id)) is None or job.status != "failed" or not receiver.deliveries():
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await sender.aclose()

    assert runner.executed == list(range(1, MAX_ATTEMPTS + 1))  # each lease tried once, then no more
    assert job.runs == MAX_ATTEMPTS + 1
    assert job.error == {
        "status": 500,
        "error": {
            "message": f"The job was attempted {MAX_ATTEMPTS} times without finishing; it was charged nothing.",
            "type": "server_error",
            "param": None,
            "code": "job_attempts_exhausted",
        },
    }
    events = [f for _, f in await redis.xrange(team_prefix(team.id) + "ledger") if f[b"request_id"] == job_id.encode()]
    assert [(e[b"status"], int(e[b"charged_micros"])) for e in events] == [(b"failed", 0)]
    assert await redis.hlen(team_prefix(team.id) + "res") == 0
    [delivery] = receiver.deliveries()
    event: dict[str, Any] = json.loads(delivery.body)
    assert event["type"] == "image.job.failed"
    assert event["data"]["id"] == job_id and event["data"]["error"] == job.error
