"""What a caller may call a model: its id, an alias from pricing.yaml, or `<provider>/<model>` where
the team may pin; and the paths code written for other gateways uses (/openai/v1, variations)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import admin_headers


def _key(client: TestClient, **team: object) -> dict[str, str]:
    made = client.post("/admin/teams", json={"name": "names", **team}, headers=admin_headers()).json()
    key = client.post(f"/admin/teams/{made['id']}/keys", headers=admin_headers()).json()["key"]
    return {"Authorization": f"Bearer {key}"}


def test_models_list_shows_aliases_and_only_pinning_teams_see_provider_ids(bare_client: TestClient) -> None:
    plain = bare_client.get("/v1/models", headers=_key(bare_client)).json()["data"]
    ids = {m["id"]: m for m in plain}
    assert ids["dall-e-3"]["alias_of"] == "hidream-i1-full" and ids["gpt-image-1"]["alias_of"] == "hidream-i1-full"
    assert not any("/" in i for i in ids)
    pinning = bare_client.get("/v1/models", headers=_key(bare_client, allow_provider_pinning=True)).json()["data"]
    pinned = {m["id"]: m for m in pinning if "/" in m["id"]}
    fal_full = pinned["fal/hidream-i1-full"]
    assert (fal_full["provider"], fal_full["model"]) == ("fal", "hidream-i1-full")
    assert "local_gpu/hidream-i1-fast" in pinned
    one = bare_client.get("/v1/models/fal/hidream-i1-dev", headers=_key(bare_client)).json()
    assert (one["id"], one["provider"], one["model"]) == ("fal/hidream-i1-dev", "fal", "hidream-i1-dev")


def test_a_provider_prefix_without_permission_is_a_403_naming_model(bare_client: TestClient) -> None:
    r = bare_client.post(
        "/v1/images/generations", json={"model": "fal/hidream-i1-full", "prompt": "x"}, headers=_key(bare_client)
    )
    assert r.status_code == 403 and r.json()["error"]["param"] == "model"


def test_a_request_without_model_uses_the_default_model(bare_client: TestClient) -> None:
    # No upstream is configured here, so the answer names the model the request resolved to.
    r = bare_client.post("/v1/images/generations", json={"prompt": "x"}, headers=_key(bare_client))
    assert r.status_code == 503 and "hidream-i1-full" in r.json()["error"]["message"]


def test_the_openai_v1_prefix_serves_the_same_api(bare_client: TestClient) -> None:
    headers = _key(bare_client)
    assert (
        bare_client.get("/openai/v1/models", headers=headers).json()
        == bare_client.get("/v1/models", headers=headers).json()
    )
    r = bare_client.post("/openai/v1/images/generations", json={"prompt": "x", "n": 0}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


@pytest.mark.parametrize("path", ["/v1/images/variations", "/openai/v1/images/variations"])
def test_variations_point_to_edits(bare_client: TestClient, path: str) -> None:
    r = bare_client.post(path, files={"image": ("a.png", b"x", "image/png")}, headers=_key(bare_client))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unsupported_endpoint" and "/v1/images/edits" in r.json()["error"]["message"]
    assert bare_client.post(path, files={"image": ("a.png", b"x", "image/png")}).status_code == 401
