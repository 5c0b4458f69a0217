"""A disabled team (PATCH /admin/teams/{id} {"disabled": true}): every request of its keys is refused
at admission with a 403 `team_disabled`, costing nothing and counting against no limit; its keys still
read its own settings and usage; enabled again, it works at once."""

from __future__ import annotations

import redis

from gateway.accounting.keys import team_prefix
from tests.api.conftest import Routed, admin_headers


def _patch(routed: Routed, team_id: str, body: object) -> dict[str, object]:
    r = routed.client.patch(f"/admin/teams/{team_id}", json=body, headers=admin_headers())
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _team_state(redis_url: str, team_id: str) -> tuple[int, int, int]:
    """Ledger events, request-window entries, reservations: what admitting anything writes."""
    p = team_prefix(team_id)
    with redis.Redis.from_url(redis_url) as r:
        return int(r.xlen(p + "ledger")), int(r.zcard(p + "win:req")), int(r.hlen(p + "res"))


def test_a_disabled_teams_requests_are_refused_costing_nothing_until_enabled(routed: Routed, redis_url: str) -> None:
    assert routed.generate().status_code == 200
    before = _team_state(redis_url, routed.team_id)
    jobs, submits = routed.worker.jobs_started(), routed.fal.count("submits")

    team = _patch(routed, routed.team_id, {"disabled": True})
    assert team["disabled"] is True
    listed = routed.client.get("/admin/teams", headers=admin_headers()).json()["data"]
    assert [t["disabled"] for t in listed if t["id"] == routed.team_id] == [True]

    for r in (
        routed.generate(),
        routed.generate(stream=True, response_format="b64_json"),
        routed.generate(headers={"Idempotency-Key": "k-1"}),
        routed.generate(model="fal/hidream-i1-full"),
    ):
        assert r.status_code == 403, r.text
        assert r.json()["error"] == {
            "message": "This key's team is disabled; ask your gateway admin to enable it. Nothing was charged.",
            "type": "invalid_request_error", "param": None, "code": "team_disabled",
        }  # fmt: skip
        assert r.headers["x-request-id"].startswith("req_")
    assert (routed.worker.jobs_started(), routed.fal.count("submits")) == (jobs, submits)
    assert _team_state(redis_url, routed.team_id) == before  # no event, no window entry, no reservation

    # The quote says so; the key still reads its team (the portal shows why).
    headers = {"Authorization": f"Bearer {routed.key}"}
    quote = routed.client.post(
        "/v1/images/generations?dryRun=true", json={"prompt": "quote me"}, headers=headers
    ).json()
    assert (quote["admission"]["admitted"], quote["admission"]["refused_by"]) == (False, "team_disabled")
    own = routed.client.get("/v1/team", headers=headers)
    assert own.status_code == 200 and own.json()["disabled"] is True

    assert _patch(routed, routed.team_id, {"disabled": False})["disabled"] is False
    assert routed.generate().status_code == 200
    assert routed.generate(headers={"Idempotency-Key": "k-1"}).status_code == 200
    assert _team_state(redis_url, routed.team_id)[0] == before[0] + 2


def test_an_idempotent_replay_is_refused_too_while_disabled(routed: Routed) -> None:
    first = routed.generate(headers={"Idempotency-Key": "again"})
    assert first.status_code == 200
    _patch(routed, routed.team_id, {"disabled": True})
    r = routed.generate(headers={"Idempotency-Key": "again"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "team_disabled"
    _patch(routed, routed.team_id, {"disabled": False})
    again = routed.generate(headers={"Idempotency-Key": "again"})
    assert again.status_code == 200 and again.headers["x-gateway-idempotent-replay"] == "true"
    # The same images; their URLs are signed afresh for the replay (a new expiry once a second passed).
    assert "url" in first.json()["data"][0]
    assert _unsigned(again.json()["data"]) == _unsigned(first.json()["data"])


def _unsigned(data: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: str(v).split("?")[0] if k == "url" else v for k, v in item.items()} for item in data]


def test_disabling_leaves_the_other_settings_and_other_teams_alone(routed: Routed) -> None:
    other = routed.client.post("/admin/teams", json={"name": "other"}, headers=admin_headers()).json()
    key = routed.client.post(f"/admin/teams/{other['id']}/keys", headers=admin_headers()).json()["key"]
    before = routed.client.get(f"/admin/teams/{routed.team_id}", headers=admin_headers()).json()
    after = _patch(routed, routed.team_id, {"disabled": True})
    assert after == {**before, "disabled": True}
    r = routed.client.post(
        "/v1/images/generations",
        json={"prompt": "another team", "num_inference_steps": 2},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200
    # A patch without `disabled` keeps the state.
    assert _patch(routed, routed.team_id, {"monthly_budget_usd": 7.0})["disabled"] is True


def test_disabled_is_strictly_a_boolean(routed: Routed) -> None:
    for value in (0, 1, "true", "yes", [True]):
        r = routed.client.patch(f"/admin/teams/{routed.team_id}", json={"disabled": value}, headers=admin_headers())
        assert r.status_code == 400, value
        assert r.json()["error"]["param"] == "disabled" and r.json()["error"]["type"] == "invalid_request_error"
    team = routed.client.get(f"/admin/teams/{routed.team_id}", headers=admin_headers()).json()
    assert team["disabled"] is False
    r = routed.client.patch("/admin/teams/team_nope", json={"disabled": True}, headers=admin_headers())
    assert r.status_code == 404 and r.json()["error"]["param"] == "team_id"
