from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import admin_headers, metrics_headers


def _team(client: TestClient, **body: object) -> dict[str, object]:
    r = client.post("/admin/teams", json={"name": "design", **body}, headers=admin_headers())
    assert r.status_code == 201, r.text
    data: dict[str, object] = r.json()
    return data


def test_create_team_with_limits_and_budget_as_designed(bare_client: TestClient) -> None:
    team = _team(
        bare_client,
        monthly_budget_usd=100.0,
        limits={"requests_per_minute": 60, "images_per_minute": 120, "max_in_flight": 8},
    )
    assert str(team["id"]).startswith("team_")
    assert team["limits"] == {"requests_per_minute": 60, "images_per_minute": 120, "max_in_flight": 8}
    got = bare_client.get(f"/admin/teams/{team['id']}", headers=admin_headers()).json()
    assert got == team
    listed = bare_client.get("/admin/teams", headers=admin_headers()).json()["data"]
    assert [t["id"] for t in listed] == [team["id"]]


def test_team_defaults_and_patch(bare_client: TestClient) -> None:
    team = _team(bare_client)
    assert team["monthly_budget_usd"] == 100.0 and team["limits"]["max_in_flight"] == 8  # type: ignore[index]
    r = bare_client.patch(
        f"/admin/teams/{team['id']}", json={"monthly_budget_usd": 5.5, "limits": {"max_in_flight": 2}},
        headers=admin_headers(),
    )  # fmt: skip
    assert r.status_code == 200
    assert r.json()["monthly_budget_usd"] == 5.5 and r.json()["limits"]["max_in_flight"] == 2
    assert r.json()["limits"]["requests_per_minute"] == 60 and r.json()["name"] == "design"


def test_key_is_shown_once_and_listed_by_prefix(bare_client: TestClient) -> None:
    team = _team(bare_client)
    created = bare_client.post(f"/admin/teams/{team['id']}/keys", json={"name": "ci"}, headers=admin_headers())
    assert created.status_code == 201
    key = created.json()
    assert key["key"].startswith(key["prefix"]) and key["team_id"] == team["id"]
    listed = bare_client.get(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["data"]
    assert listed == [{k: v for k, v in key.items() if k != "key"}]
    assert bare_client.get("/v1/models", headers={"Authorization": f"Bearer {key['key']}"}).status_code == 200
    assert bare_client.delete(f"/admin/keys/{key['id']}", headers=admin_headers()).status_code == 200
    r = bare_client.get("/v1/models", headers={"Authorization": f"Bearer {key['key']}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert bare_client.delete(f"/admin/keys/{key['id']}", headers=admin_headers()).status_code == 404


def test_admin_routes_need_the_admin_key(bare_client: TestClient) -> None:
    team = _team(bare_client)
    key = bare_client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {key}"}):
        r = bare_client.get("/admin/teams", headers=headers)
        assert r.status_code == 401, headers
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert r.headers["x-request-id"].startswith("req_")


def test_bad_admin_bodies_name_the_field(bare_client: TestClient) -> None:
    r = bare_client.post("/admin/teams", json={"name": ""}, headers=admin_headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "name"
    r = bare_client.post("/admin/teams", json={"name": "x", "limits": {"max_in_flight": 0}}, headers=admin_headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "limits.max_in_flight"
    r = bare_client.post("/admin/teams", json={"name": "x", "budget": 3}, headers=admin_headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "budget"
    for body, field in (
        ({"name": "x", "allow_provider_pinning": 0}, "allow_provider_pinning"),
        ({"name": "x", "limits": {"max_in_flight": "5"}}, "limits.max_in_flight"),
        ({"name": 7}, "name"),
    ):
        r = bare_client.post("/admin/teams", json=body, headers=admin_headers())
        assert r.status_code == 400 and r.json()["error"]["param"] == field, body
    r = bare_client.post("/admin/teams", json={"name": "x", "monthly_budget_usd": 12}, headers=admin_headers())
    assert r.status_code == 201 and r.json()["monthly_budget_usd"] == 12
    r = bare_client.get("/admin/teams/team_nope", headers=admin_headers())
    assert r.status_code == 404 and r.json()["error"]["param"] == "team_id"


def test_models_come_from_pricing_yaml(bare_client: TestClient) -> None:
    team = _team(bare_client)
    key = bare_client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    h = {"Authorization": f"Bearer {key}"}
    body = bare_client.get("/v1/models", headers=h).json()
    assert body["object"] == "list"
    full = body["data"][0]
    assert (full["id"], full["object"], full["price_per_image_usd"], full["supports_edits"]) == (
        "hidream-i1-full", "model", 0.05, True,
    )  # fmt: skip
    assert bare_client.get("/v1/models/hidream-i1-fast", headers=h).json()["supports_edits"] is False
    r = bare_client.get("/v1/models/gpt-image-9", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_no_configured_route_means_not_ready_and_503_costing_nothing(bare_client: TestClient) -> None:
    assert bare_client.get("/health").json() == {"status": "ok"}
    ready = bare_client.get("/ready", headers=metrics_headers())
    assert ready.status_code == 503 and ready.json()["redis"] is True
    team = _team(bare_client)
    key = bare_client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    h = {"Authorization": f"Bearer {key}"}
    r = bare_client.post("/v1/images/generations", json={"prompt": "x"}, headers=h)
    assert r.status_code == 503 and "retry-after" in r.headers
    usage = bare_client.get("/v1/usage", headers=h).json()
    assert usage["spent_usd"] == 0 and usage["reserved_usd"] == 0 and usage["failed_requests"] == 1


@pytest.mark.parametrize("month", ["0000-01", "1969-12"])
def test_a_month_before_the_ledger_began_is_a_400_not_a_500(bare_client: TestClient, month: str) -> None:
    # The ledger's ids count milliseconds from 1970: year 0 broke the calendar, 1969 Redis's XRANGE.
    team = _team(bare_client)
    key = bare_client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    answers = [
        bare_client.get(f"/admin/usage?month={month}", headers=admin_headers()),
        bare_client.get(f"/admin/usage?month={month}&format=csv", headers=admin_headers()),
        bare_client.get(f"/admin/usage?month={month}&team_id={team['id']}", headers=admin_headers()),
        bare_client.get(f"/v1/usage?month={month}", headers={"Authorization": f"Bearer {key}"}),
    ]
    for r in answers:
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "month"


def test_usage_month_is_validated(bare_client: TestClient) -> None:
    team = _team(bare_client)
    key = bare_client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    for month in ("2026-13", "2026-11%0A", "%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-11"):  # a newline; fullwidth digits
        r = bare_client.get(f"/v1/usage?month={month}", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "month", month
    csv = bare_client.get("/admin/usage?format=csv&month=2026-11", headers=admin_headers())
    assert csv.status_code == 200 and csv.text.startswith("time,request_id,team_id")
