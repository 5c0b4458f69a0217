"""A served request is settled after its answer is handed to the caller's connection: charged when
the connection was open, settled as cancelled and charged nothing when the caller had gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.accounting.keys import Principal, team_prefix
from gateway.api.state import AppState
from gateway.app import create_app
from gateway.images.validation import Params, validate_generation
from gateway.settings import Settings
from tests.api.conftest import ADMIN, admin_headers
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import running_worker


@pytest.fixture
def served(redis_url: str, tmp_path: Path, pricing_file: Path) -> Iterator[tuple[TestClient, str]]:
    with running_worker("full", pipeline=StandInPipeline(step_s=0.001)) as worker:
        settings = Settings(
            redis_url=redis_url, admin_key=ADMIN, data_dir=tmp_path / "data", pricing_file=pricing_file,
            local_gpu_urls=[worker.url], probe_interval_s=0.05,
        )  # fmt: skip
        with TestClient(create_app(settings)) as client:
            team = client.post("/admin/teams", json={"name": "d"}, headers=admin_headers()).json()
            yield client, team["id"]


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
