"""?dryRun=true: the quote in Lumenfall's shape, the route the router would pick now and why, and
whether the team would be admitted, with nothing generated, charged, counted or written."""

from __future__ import annotations

import io

import redis
from PIL import Image

from gateway.accounting.keys import team_prefix
from tests.api.conftest import Routed, admin_headers


def _dry(routed: Routed, key: str | None = None, **body: object) -> dict[str, object]:
    r = routed.client.post(
        "/v1/images/generations?dryRun=true",
        json={"model": "hidream-i1-full", "prompt": "quote me", **body},
        headers={"Authorization": f"Bearer {key or routed.key}"},
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _ledger_length(redis_url: str, team_id: str) -> int:
    with redis.Redis.from_url(redis_url) as r:
        return int(r.xlen(team_prefix(team_id) + "ledger"))


def test_the_quote_route_and_admission_in_lumenfalls_shape(routed: Routed) -> None:
    quote = _dry(routed, n=3, size="1792x1024", output_format="webp", quality="hd")
    assert {k: quote[k] for k in ("estimated", "model", "provider", "total_cost_micros", "currency")} == {
        "estimated": True, "model": "hidream-i1-full", "provider": "local_gpu", "total_cost_micros": 150_000,
        "currency": "USD",
    }  # fmt: skip
    assert quote["components"] == [
        {"type": "output", "metric": "image", "quantity": 3, "billable_quantity": 3, "unit_price": 0.05,
         "total_cost": 150_000}
    ]  # fmt: skip
    route = quote["route"]
    assert isinstance(route, dict) and route["reason"] == "cheapest_healthy" and route["fallbacks"] == ["fal"]
    assert isinstance(route["expected_seconds"], float)
    admission = quote["admission"]
    assert isinstance(admission, dict) and admission["admitted"] is True and admission["refused_by"] is None
    assert admission["budget_left_usd"] == admission["budget_usd"] and admission["in_flight"] == 0
    assert (quote["size"], quote["generated_size"], quote["ignored_params"]) == ("1792x1024", "1360x768", ["quality"])


def test_a_dry_run_generates_charges_and_counts_nothing(routed: Routed, redis_url: str) -> None:
    team = routed.client.post(
        "/admin/teams", json={"name": "tight", "limits": {"requests_per_minute": 2}}, headers=admin_headers()
    ).json()
    key = routed.client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    jobs, submits = routed.worker.jobs_started(), routed.fal.count("submits")
    for _ in range(5):
        assert _dry(routed, key)["admission"]["admitted"] is True  # type: ignore[index]
    assert (routed.worker.jobs_started(), routed.fal.count("submits")) == (jobs, submits)
    assert _ledger_length(redis_url, team["id"]) == 0
    usage = routed.client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    assert (usage["requests"], usage["spent_usd"]) == (0, 0.0)
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(2):  # the rate limit is whole: the dry runs took none of it
        body = {"prompt": "x", "num_inference_steps": 2}
        r = routed.client.post("/v1/images/generations", json=body, headers=headers)
        assert r.status_code == 200
    refused = _dry(routed, key)["admission"]
    assert refused == {**refused, "admitted": False, "refused_by": "rpm", "requests_remaining": 0}  # type: ignore[dict-item]


def test_a_team_over_budget_is_told_so(routed: Routed) -> None:
    team = routed.client.post("/admin/teams", json={"name": "poor", "monthly_budget_usd": 0.04},
                              headers=admin_headers()).json()  # fmt: skip
    key = routed.client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    admission = _dry(routed, key)["admission"]
    assert isinstance(admission, dict) and (admission["admitted"], admission["refused_by"]) == (False, "budget")
    assert admission["budget_left_usd"] == 0.04


def test_bad_input_in_a_dry_run_is_still_a_400(routed: Routed) -> None:
    r = routed.client.post(
        "/v1/images/generations?dryRun=true", json={"prompt": "x", "n": 0},
        headers={"Authorization": f"Bearer {routed.key}"},
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_an_edit_dry_run_quotes_the_route_that_can_edit(routed: Routed) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1360, 768), "teal").save(buf, "PNG")
    submits = routed.fal.count("submits")
    r = routed.client.post(
        "/v1/images/edits?dryRun=true",
        data={"model": "hidream-i1-full", "prompt": "make it red"},
        files={"image": ("in.png", buf.getvalue(), "image/png")},
        headers={"Authorization": f"Bearer {routed.key}"},
    )
    assert r.status_code == 200, r.text
    quote = r.json()
    assert (quote["provider"], quote["total_cost_micros"], quote["size"]) == ("fal", 50_000, "1360x768")
    assert routed.fal.count("submits") == submits


def test_a_dry_run_with_stream_is_refused_not_answered_as_json(routed: Routed) -> None:
    r = routed.client.post(
        "/v1/images/generations?dryRun=true", json={"prompt": "x", "stream": True},
        headers={"Authorization": f"Bearer {routed.key}"},
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


def test_a_split_requests_expected_time_is_its_last_share_not_one_image(routed: Routed) -> None:
    one, four = _dry(routed, n=1)["route"], _dry(routed, n=4)["route"]
    assert isinstance(one, dict) and isinstance(four, dict)
    # The idle GPU takes all four (cheapest, within the target) and works them one after another.
    assert four["split"] == [{"provider": "local_gpu", "images": 4}]
    assert abs(float(four["expected_seconds"]) - 4 * float(one["expected_seconds"])) < 0.01
