"""The image store's disk filling up: answers by URL are refused with 503 storage_full before
anything is admitted or sent upstream, b64_json answers go on, and a write that meets a full disk
(ENOSPC) fails the request with its reservation released, charged nothing."""

from __future__ import annotations

import errno

import pytest
import redis

from gateway.accounting.keys import team_prefix
from gateway.images import storage
from tests.api.conftest import Routed, metrics_headers

FULL = [{"image_store_min_free_bytes": 10**18}]  # more than any disk has free


def _ledger(redis_url: str, team_id: str) -> list[dict[bytes, bytes]]:
    with redis.Redis.from_url(redis_url) as r:
        return [fields for _, fields in r.xrange(team_prefix(team_id) + "ledger")]


@pytest.mark.parametrize("routed", FULL, indirect=True)
def test_no_room_refuses_urls_before_admission_and_b64_still_works(routed: Routed, redis_url: str) -> None:
    jobs = routed.worker.jobs_started()
    r = routed.generate(response_format="url")
    assert r.status_code == 503 and r.headers["retry-after"] == "30"
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("storage_full", "response_format")
    assert routed.worker.jobs_started() == jobs and _ledger(redis_url, routed.team_id) == []
    ok = routed.generate(response_format="b64_json")
    assert ok.status_code == 200 and ok.json()["data"][0]["b64_json"]


def test_a_full_disk_mid_write_fails_the_request_uncharged(
    routed: Routed, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def enospc(path: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(storage, "_write_new", enospc)
    r = routed.generate(response_format="url")
    assert r.status_code == 503 and r.json()["error"]["code"] == "storage_full"
    (event,) = _ledger(redis_url, routed.team_id)
    assert (event[b"status"], event[b"charged_micros"]) == (b"failed", b"0")
    usage = routed.client.get("/v1/usage", headers={"Authorization": f"Bearer {routed.key}"}).json()
    assert usage["spent_usd"] == 0.0
    metrics = routed.client.get("/metrics", headers=metrics_headers()).text
    assert 'gateway_store_errors_total{kind="full",operation="put",store="images"} 1.0' in metrics
    monkeypatch.undo()
    assert routed.generate(response_format="url").status_code == 200  # the reservation was released


def test_trailing_slash_is_not_redirected_to_the_callers_host(routed: Routed) -> None:
    r = routed.client.get(
        "/v1/models/", headers={"Authorization": f"Bearer {routed.key}", "host": "evil.example"},
        follow_redirects=False,
    )  # fmt: skip
    assert r.status_code == 404 and "location" not in r.headers


def test_an_unexpected_error_after_the_upstream_answered_fails_the_request_uncharged(
    routed: Routed, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault of the gateway's own (a bug) once the image is made: a 500 in OpenAI's shape, the
    reservation settled as failed with error_kind internal, charged nothing, and freed."""

    def broken(path: str, data: bytes) -> None:
        raise RuntimeError("a bug in the store")

    monkeypatch.setattr(storage, "_write_new", broken)
    r = routed.generate(response_format="url")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    (event,) = _ledger(redis_url, routed.team_id)
    assert (event[b"status"], event[b"charged_micros"], event[b"error_kind"]) == (b"failed", b"0", b"internal")
    assert int(event[b"latency_ms"]) >= 0
    monkeypatch.undo()
    assert routed.generate(response_format="url").status_code == 200  # the reservation was released
