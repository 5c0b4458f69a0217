"""/metrics holds every team's budget, spend and provider cost: only the metrics token reads it.
/ready says to anyone whether the gateway is ready; its detail (Redis, each route's health) only
to the metrics token or the admin key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import admin_headers, metrics_headers


def _team_key(client: TestClient) -> dict[str, str]:
    team = client.post("/admin/teams", json={"name": "m"}, headers=admin_headers()).json()
    key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    return {"Authorization": f"Bearer {key}"}


def _assert_openai_401(r: object, what: str) -> None:
    assert r.status_code == 401, what  # type: ignore[attr-defined]
    error = r.json()["error"]  # type: ignore[attr-defined]
    assert set(error) == {"message", "type", "param", "code"}, what
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key", what
    assert "gateway_" not in r.text, what  # type: ignore[attr-defined]


def test_metrics_need_the_metrics_token(bare_client: TestClient) -> None:
    refused = {
        "no token": {},
        "a wrong token": {"Authorization": "Bearer met-wrong"},
        "a team key": _team_key(bare_client),
        "the admin key": admin_headers(),
    }
    for what, headers in refused.items():
        _assert_openai_401(bare_client.get("/metrics", headers=headers), what)
    r = bare_client.get("/metrics", headers=metrics_headers())
    assert r.status_code == 200 and "# TYPE gateway_requests_total counter" in r.text


def test_without_a_metrics_token_configured_metrics_are_closed(settings: Settings) -> None:
    settings = settings.model_copy(update={"metrics_token": None})
    app = create_app(settings, registry={"fal": lambda s: None, "local_gpu": lambda s: None})
    with TestClient(app) as client:
        r = client.get("/metrics", headers=metrics_headers())
        assert r.status_code == 403 and "GATEWAY_METRICS_TOKEN" in r.json()["error"]["message"]
        # /ready's detail still opens to the admin key
        assert "routes" in client.get("/ready", headers=admin_headers()).json()


def test_plain_ready_says_only_whether_the_gateway_is_ready(bare_client: TestClient) -> None:
    r = bare_client.get("/ready")
    assert r.status_code == 503 and r.json() == {"ready": False}  # no route is configured here


@pytest.mark.parametrize("who", ["metrics token", "admin key"])
def test_ready_detail_for_the_metrics_token_or_the_admin_key(served: tuple[TestClient, str], who: str) -> None:
    client, _ = served
    headers = metrics_headers() if who == "metrics token" else admin_headers()
    body = client.get("/ready", headers=headers).json()
    assert body["redis"] is True and body["pricing_loaded"] is True
    assert set(body["routes"]["hidream-i1-full"]["local_gpu"]) == {"healthy", "detail"}
    assert set(client.get("/ready").json()) == {"ready"}


def test_ready_detail_with_a_wrong_token_is_refused(bare_client: TestClient) -> None:
    _assert_openai_401(bare_client.get("/ready", headers={"Authorization": "Bearer nope"}), "wrong token")
    _assert_openai_401(bare_client.get("/ready", headers=_team_key(bare_client)), "team key")
