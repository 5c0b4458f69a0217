"""Leases of jobs in a real redis-server: a lapsed lease is taken over and counted as an attempt,
unless its owner is still running the job (its renewal came late), which renews it instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.jobs.store import JOB, LEASES, JobStore

LEASE_S = 0.2  # a lease meant to lapse
HELD_S = 60.0  # a lease meant to hold while the test looks, however slow the machine


@pytest.fixture
async def jobs(redis_url: str) -> AsyncIterator[JobStore]:
    client = Redis.from_url(redis_url)
    yield JobStore(client, keep_s=60)
    await client.aclose()


async def _runs(jobs: JobStore, job_id: str) -> int:
    job = await jobs.get(job_id)
    assert job is not None
    return job.runs


async def _lapsed(jobs: JobStore, owner: str) -> str:
    await jobs.create("job_a", {"team_id": "t"}, live_s=60, inputs={})
    assert await jobs.lease(owner, LEASE_S) == "job_a"
    await asyncio.sleep(LEASE_S + 0.1)  # no renewal: the lease lapses
    return "job_a"


async def test_a_lapsed_lease_is_leased_again_as_another_attempt(jobs: JobStore) -> None:
    job_id = await _lapsed(jobs, "p1")
    # By another process, or by its owner once it no longer runs the job (its run failed).
    assert await jobs.lease("p2", HELD_S, ["job_other"]) == job_id
    assert await _runs(jobs, job_id) == 2
    job = await jobs.get(job_id)
    assert job is not None and job.status == "running"


async def test_its_owner_still_running_the_job_renews_the_lapsed_lease_and_counts_no_attempt(
    jobs: JobStore, redis_url: str
) -> None:
    job_id = await _lapsed(jobs, "p1")
    assert await jobs.lease("p1", HELD_S, [job_id]) is None  # nothing else to do
    assert await _runs(jobs, job_id) == 1
    r = Redis.from_url(redis_url)
    try:
        deadline = await r.zscore(LEASES, job_id)
        now_s, now_us = await r.time()
        assert deadline is not None and deadline > now_s * 1000 + now_us // 1000  # renewed: not late
        assert await r.hget(JOB + job_id, "owner") == b"p1"
    finally:
        await r.aclose()
    # And another process finds nothing to take over while it is renewed.
    assert await jobs.lease("p2", LEASE_S) is None


async def test_an_owner_whose_job_was_taken_over_takes_it_back_as_a_new_attempt(jobs: JobStore) -> None:
    # p2 took the job over from p1; p2's lease lapses too: p1, still running its old attempt,
    # does not renew p2's lease but takes the job as a new attempt (it is p1's now).
    job_id = await _lapsed(jobs, "p1")
    assert await jobs.lease("p2", LEASE_S) == job_id
    await asyncio.sleep(LEASE_S + 0.1)
    assert await jobs.lease("p1", HELD_S, [job_id]) == job_id
    assert await _runs(jobs, job_id) == 3


async def test_a_queued_job_is_leased_behind_the_lapsed_leases_its_owner_renews(jobs: JobStore) -> None:
    job_id = await _lapsed(jobs, "p1")
    await jobs.create("job_b", {"team_id": "t"}, live_s=60, inputs={})
    assert await jobs.lease("p1", HELD_S, [job_id]) == "job_b"
    assert await _runs(jobs, job_id) == 1
    assert await _runs(jobs, "job_b") == 1
