"""Generations: text that cannot be sent upstream is refused at the edge with a 400 naming the
parameter, before admission or routing, and costs nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import admin_headers


@pytest.fixture
def key(bare_client: TestClient) -> str:
    team = bare_client.post("/admin/teams", json={"name": "g"}, headers=admin_headers()).json()
    k: str = bare_client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    return k


# Raw bodies: a lone surrogate exists only as a JSON escape (raw UTF-8 cannot hold one).
@pytest.mark.parametrize(
    ("body", "param"),
    [
        (rb'{"model": "hidream-i1-full", "prompt": "a\ud800cat"}', "prompt"),
        (rb'{"model": "hidream-i1-full", "prompt": "a cat\udfff"}', "prompt"),
        (rb'{"model": "hidream-i1-full", "prompt": "a\u0000cat"}', "prompt"),
        (rb'{"model": "hidream-i1-full", "prompt": "a cat", "negative_prompt": "\udc00blur"}', "negative_prompt"),
        (rb'{"model": "hidream-i1-full", "prompt": "a cat", "user": "team\ud800"}', "user"),
        (rb'{"model": "hidream-i1-full\ud800", "prompt": "a cat"}', "model"),
        (rb'{"model": "hidream-i1-full", "prompt": "a cat", "metadata": {"k": ["\ud800"]}}', "metadata"),
        (rb'{"model": "hidream-i1-full", "prompt": "a cat", "\ud800": 1}', "\\ud800"),
    ],
)
def test_text_that_cannot_be_encoded_is_refused_at_the_edge(
    bare_client: TestClient, key: str, body: bytes, param: str
) -> None:
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    r = bare_client.post("/v1/images/generations", content=body, headers=auth)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_text", param)
    usage = bare_client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    assert usage["requests"] == 0 and usage["failed_requests"] == 0 and usage["spent_usd"] == 0


def test_a_surrogate_pair_is_one_character_and_accepted(bare_client: TestClient, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = rb'{"model": "hidream-i1-full", "prompt": "a cat \ud83d\ude00", "negative_prompt": "caf\u00e9"}'
    r = bare_client.post("/v1/images/generations", content=body, headers=auth)
    # past validation: refused only because this app has no provider configured
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable", r.text


def test_json_nested_deeper_than_the_parser_goes_is_a_400(bare_client: TestClient, key: str) -> None:
    depth = 100_000  # 200 KB, within the body limit
    body = b'{"prompt": "a cat", "deep": ' + b"[" * depth + b"]" * depth + b"}"
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    r = bare_client.post("/v1/images/generations", content=body, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text
