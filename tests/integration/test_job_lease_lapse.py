"""A replica that is alive but stops renewing a job's lease (SIGSTOPped past the lease) loses the
job to the other replica, which serves it under the same reservation. When the first resumes, it
stops its work on the job without settling that reservation: the job is charged once, in full."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from gateway.accounting.keys import team_prefix
from tests.integration.replicas import Cluster, running_cluster
from tests.integration.test_job_takeover import PRICE, _owner_replica

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # fal takes 6 s an image: the job is still at fal when its replica stops, and when it resumes.
    env = {"GATEWAY_JOB_LEASE_S": "1.5", "GATEWAY_JOB_POLL_S": "0.1"}
    with running_cluster(tmp_path_factory.mktemp("lapse"), fal_inference_s=6.0, gateway_env=env) as made:
        yield made


def test_a_replica_that_lost_its_lease_leaves_the_reservation_to_the_new_owner(cluster: Cluster) -> None:
    team_id, key = cluster.team("lapse")
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(
        cluster.bases[0] + "/v1/images/generations",
        json={"model": "hidream-i1-full", "prompt": "lapse"},
        headers={**auth, "Prefer": "respond-async"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    with redis.Redis.from_url(cluster.redis.url) as db:
        deadline = time.monotonic() + 20
        while (stopped := _owner_replica(cluster, db, job_id)) is None:
            assert time.monotonic() < deadline, "no replica leased the job"
            time.sleep(0.02)
        deadline = time.monotonic() + 20
        while httpx.get(cluster.fal + "/_fake/stats").json()["submits"] == 0:
            assert time.monotonic() < deadline, "the job never reached fal"
            time.sleep(0.02)
        group = cluster.processes[stopped].proc.pid
        os.killpg(group, signal.SIGSTOP)
        try:
            # Frozen past its lease: the other replica takes the job over (the reservation still held).
            deadline = time.monotonic() + 20
            while _owner_replica(cluster, db, job_id) != 1 - stopped:
                assert time.monotonic() < deadline, "the other replica never took the job over"
                time.sleep(0.02)
            assert db.hexists(team_prefix(team_id) + "res", job_id)
        finally:
            os.killpg(group, signal.SIGCONT)
        other = cluster.bases[1 - stopped]

        deadline = time.monotonic() + 60
        while True:
            job: dict[str, Any] = httpx.get(f"{other}/v1/images/jobs/{job_id}", headers=auth).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, f"the job was never finished: {job}"
            time.sleep(0.1)
        assert job["status"] == "succeeded", job
        assert _owner_replica(cluster, db, job_id) == 1 - stopped
        # The resumed replica answers again, and sees the job as the other finished it.
        seen = httpx.get(f"{cluster.bases[stopped]}/v1/images/jobs/{job_id}", headers=auth, timeout=10).json()
        assert seen["status"] == "succeeded", seen
        time.sleep(1.0)
        events = [f for _, f in db.xrange(team_prefix(team_id) + "ledger") if f[b"request_id"] == job_id.encode()]
        charges = [(e[b"status"], int(e[b"charged_micros"])) for e in events]
        assert charges == [(b"succeeded", PRICE)]
        assert db.hlen(team_prefix(team_id) + "res") == 0  # no reservation left behind
