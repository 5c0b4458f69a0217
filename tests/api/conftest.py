from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import running_worker

ADMIN = "adm-test-" + "x" * 16
METRICS = "met-test-" + "y" * 16


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, pricing_file: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        admin_key=ADMIN,
        metrics_token=METRICS,
        data_dir=tmp_path / "data",
        pricing_file=pricing_file,
        public_url="http://gw.test",
    )


@pytest.fixture
def bare_client(settings: Settings) -> Iterator[TestClient]:
    """The real app with its lifespan, with no upstream configured."""
    app = create_app(settings, registry={"fal": lambda s: None, "local_gpu": lambda s: None})
    with TestClient(app) as client:
        yield client


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[TestClient, str]]:
    """The real app served by one real (stand-in pipeline) GPU worker, and a team: (client, team id)."""
    with running_worker("full", pipeline=StandInPipeline(step_s=0.001)) as worker:
        settings = settings.model_copy(update={"local_gpu_urls": [worker.url], "probe_interval_s": 0.05})
        with TestClient(create_app(settings)) as client:
            team = client.post("/admin/teams", json={"name": "d"}, headers=admin_headers()).json()
            yield client, team["id"]


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def metrics_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {METRICS}"}
