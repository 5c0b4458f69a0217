"""pricing.yaml edited while the gateway runs: new prices are billed without a restart; a file
that does not validate changes nothing and is counted."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.api.conftest import Routed, metrics_headers

FAST_RELOAD = [{"pricing_reload_s": 0.05}]


def _charged(routed: Routed) -> float:
    r = routed.generate(model="hidream-i1-full", prompt="a price", response_format="b64_json")
    assert r.status_code == 200, r.text
    return float(r.headers["x-gateway-charged-usd"])


def _listed_price(routed: Routed) -> float:
    r = routed.client.get("/v1/models/hidream-i1-full", headers={"Authorization": f"Bearer {routed.key}"})
    return float(r.json()["price_per_image_usd"])


def _rejections(routed: Routed) -> float:
    text = routed.client.get("/metrics", headers=metrics_headers()).text
    for line in text.splitlines():
        if line.startswith('gateway_pricing_reloads_total{result="rejected"}'):
            return float(line.split()[-1])
    return 0.0


def _eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10  # only keeps a broken gateway from hanging the test
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("routed", FAST_RELOAD, indirect=True)
def test_a_new_price_is_billed_without_a_restart(routed: Routed) -> None:
    pricing = routed.client.app.state.gateway.settings.pricing_file  # type: ignore[attr-defined]
    assert _charged(routed) == 0.05
    pricing.write_text(pricing.read_text().replace("price_per_image_usd: 0.05", "price_per_image_usd: 0.07"))
    _eventually(lambda: _listed_price(routed) == 0.07, "the new price was never listed")
    assert _charged(routed) == 0.07
    usage = routed.client.get("/v1/usage", headers={"Authorization": f"Bearer {routed.key}"}).json()
    assert usage["spent_usd"] == pytest.approx(0.12)


@pytest.mark.parametrize("routed", FAST_RELOAD, indirect=True)
def test_a_bad_file_keeps_the_prices_in_use(routed: Routed) -> None:
    pricing = routed.client.app.state.gateway.settings.pricing_file  # type: ignore[attr-defined]
    pricing.write_text(pricing.read_text().replace("price_per_image_usd: 0.05", "price_per_image_usd: oops"))
    _eventually(lambda: _rejections(routed) >= 1, "the bad file was never seen")
    assert _listed_price(routed) == 0.05
    assert _charged(routed) == 0.05
