"""n past one upstream call: the request is fanned out over parallel calls, possibly on several
routes; all n or nothing, charged only for a complete answer."""

from __future__ import annotations

import base64
import io

import redis
from PIL import Image

from gateway.accounting.keys import team_prefix
from tests.api.conftest import Routed


def _ledger(redis_url: str, team_id: str) -> list[dict[bytes, bytes]]:
    with redis.Redis.from_url(redis_url) as r:
        return [fields for _, fields in r.xrange(team_prefix(team_id) + "ledger")]


def _spent(routed: Routed) -> float:
    usage = routed.client.get("/v1/usage", headers={"Authorization": f"Bearer {routed.key}"}).json()
    return float(usage["spent_usd"])


def test_ten_images_from_routes_that_make_four_at_a_time(routed: Routed, redis_url: str) -> None:
    r = routed.generate(n=10, size="512x512", response_format="b64_json", seed=42)
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-route-reason"] == "fan_out"
    assert r.headers["x-gateway-charged-usd"] == "0.500000"
    data = r.json()["data"]
    assert len(data) == 10
    pictures = [Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in data]
    assert {p.size for p in pictures} == {(512, 512)}
    (event,) = _ledger(redis_url, routed.team_id)
    assert (event[b"status"], event[b"images"], event[b"charged_micros"]) == (b"succeeded", b"10", b"500000")


def test_a_failed_part_falls_back_to_another_route(routed: Routed) -> None:
    routed.worker.pipeline.plan("fail", count=3)  # every part the GPU takes fails once
    r = routed.generate(n=8)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 8 and "fal" in r.headers["x-gateway-provider"].split(",")


def test_all_n_or_nothing_and_nothing_charged(routed: Routed, redis_url: str) -> None:
    # Pinned to fal, so a part has no other route; one of its submits is refused for good.
    routed.fal.fail_next("auth", count=1)
    r = routed.generate(n=8, headers={"x-gateway-provider": "fal"})
    assert r.status_code == 502 and "data" not in r.json()
    assert _spent(routed) == 0.0
    (event,) = _ledger(redis_url, routed.team_id)
    assert (event[b"status"], event[b"charged_micros"]) == (b"failed", b"0")
