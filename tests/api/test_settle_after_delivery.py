"""A served request is settled after its answer is handed to the caller's connection: charged when
the connection was open, settled as cancelled and charged nothing when the caller had gone."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.accounting.keys import Principal, team_prefix
from gateway.api.state import AppState
from gateway.images.validation import Params, validate_generation


def _ledger(state: AppState, team_id: str) -> list[tuple[bytes, bytes]]:
    r = redis.Redis.from_url(state.settings.redis_url or "")
    try:
        return [(f[b"status"], f[b"charged_micros"]) for _, f in r.xrange(team_prefix(team_id) + "ledger")]
    finally:
        r.close()


@pytest.mark.parametrize("delivered", [True, False])
def test_the_verdict_on_delivery_decides_the_charge(served: tuple[TestClient, str], delivered: bool) -> None:
    client, team_id = served
    state: AppState = client.app.state.gateway  # type: ignore[attr-defined]
    valid = validate_generation(
        state.catalog, Params({"model": "hidream-i1-full", "prompt": "x", "num_inference_steps": 1}, form=False)
    )
    principal = Principal(team_id=team_id, key_id="key_test")

    async def serve_and_deliver() -> None:
        result = await state.service.generate(principal, valid, f"req_{delivered}")
        assert result.delivery is not None and result.body["data"]
        assert _ledger(state, team_id) == []  # nothing settled before the answer is handed over
        await result.delivery(delivered)
        await result.delivery(not delivered)  # a second verdict changes nothing

    client.portal.call(serve_and_deliver)  # type: ignore[union-attr]
    expected = [(b"succeeded", b"50000")] if delivered else [(b"cancelled", b"0")]
    assert _ledger(state, team_id) == expected
