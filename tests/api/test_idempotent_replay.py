"""A retry with the same Idempotency-Key gets the first request's images, charged once, through
URLs that work when the retry comes: each is signed again at replay time. When the images have
been swept meanwhile, the retry is told so (410 naming the key) rather than handed dead URLs."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.accounting.metering import Idempotency
from gateway.api.state import AppState
from gateway.settings import Settings
from tests.api.conftest import admin_headers

BODY = {"model": "hidream-i1-full", "prompt": "twice", "n": 2, "num_inference_steps": 1}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # URLs live 2 s here, so the test can outlive one without waiting long.
    return settings.model_copy(update={"image_url_ttl_s": 2})


def _generate(client: TestClient, team_id: str, idempotency_key: str) -> tuple[dict[str, str], list[str]]:
    key = client.post(f"/admin/teams/{team_id}/keys", headers=admin_headers()).json()["key"]
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key}
    r = client.post("/v1/images/generations", json=BODY, headers=headers)
    assert r.status_code == 200, r.text
    return headers, [d["url"] for d in r.json()["data"]]


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _name(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


def test_a_replay_after_the_first_urls_expired_hands_back_urls_that_download(
    served: tuple[TestClient, str],
) -> None:
    client, team_id = served
    state: AppState = client.app.state.gateway  # type: ignore[attr-defined]
    headers, first = _generate(client, team_id, "order-1")
    deadline = time.monotonic() + 10
    while client.get(_path(first[0])).status_code != 403:  # wall-clock expiry: wait for it to pass
        assert time.monotonic() < deadline, "the first URL never expired"
        time.sleep(0.1)

    again = client.post("/v1/images/generations", json=BODY, headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["x-gateway-idempotent-replay"] == "true"
    assert again.headers["x-gateway-charged-usd"] == "0.000000"
    urls = [d["url"] for d in again.json()["data"]]
    assert [_name(u) for u in urls] == [_name(u) for u in first]  # the same images
    for url in urls:
        image = client.get(_path(url))
        assert image.status_code == 200
        stored = state.store.path_of(_name(url))
        assert stored is not None and image.content == stored.read_bytes()
    usage = client.get("/v1/usage", headers={"Authorization": headers["Authorization"]}).json()
    assert usage["images"] == 2 and usage["spent_usd"] == 0.1  # charged once


def test_a_replay_whose_images_were_swept_is_refused_with_410_naming_the_key(
    served: tuple[TestClient, str],
) -> None:
    client, team_id = served
    state: AppState = client.app.state.gateway  # type: ignore[attr-defined]
    headers, _ = _generate(client, team_id, "order-2")
    # The sweeper, run as if past the images' lifetime.
    assert state.store.sweep(now=time.time() + state.store.ttl_s + 61) == 2

    again = client.post("/v1/images/generations", json=BODY, headers=headers)
    assert again.status_code == 410, again.text
    error = again.json()["error"]
    assert error["param"] == "Idempotency-Key" and "order-2" in error["message"]
    assert error["type"] == "invalid_request_error" and error["code"] == "idempotency_images_gone"
    usage = client.get("/v1/usage", headers={"Authorization": headers["Authorization"]}).json()
    assert usage["images"] == 2 and usage["spent_usd"] == 0.1  # still charged once, nothing more


def test_a_b64_json_answer_is_kept_as_a_reference_and_replayed_byte_for_byte(
    served: tuple[TestClient, str], redis_url: str
) -> None:
    """Redis runs with noeviction: an idempotency record holds the images' names, not megabytes of
    base64 (a 2 MiB image made a 2.7 MB record)."""
    client, team_id = served
    key = client.post(f"/admin/teams/{team_id}/keys", headers=admin_headers()).json()["key"]
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "b64-1"}
    body = {**BODY, "response_format": "b64_json", "size": "1024x1024"}
    first = client.post("/v1/images/generations", json=body, headers=headers)
    assert first.status_code == 200, first.text
    images = [d["b64_json"] for d in first.json()["data"]]
    assert min(len(b) for b in images) > 1000
    with redis.Redis.from_url(redis_url) as r:
        record = r.get(Idempotency("b64-1", "").redis_key(team_id))
    assert record is not None and len(record) < 2000 and images[0][:200].encode() not in record
    again = client.post("/v1/images/generations", json=body, headers=headers)
    assert again.status_code == 200 and again.headers["x-gateway-idempotent-replay"] == "true"
    assert [d["b64_json"] for d in again.json()["data"]] == images
    state: AppState = client.app.state.gateway  # type: ignore[attr-defined]
    assert state.store.sweep(now=time.time() + state.store.ttl_s + 61) == 2
    gone = client.post("/v1/images/generations", json=body, headers=headers)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "idempotency_images_gone"
