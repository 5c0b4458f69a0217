from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.fakes.fal_server import create_app as create_fal_app
from tests.fakes.fal_state import FakeFal
from tests.fakes.server import serve_in_thread
from tests.fakes.stand_in_pipeline import StandInPipeline
from tests.fakes.worker_server import RunningWorker, running_worker

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


@dataclass
class Routed:
    client: TestClient
    worker: RunningWorker
    fal: FakeFal
    key: str
    team_id: str

    def generate(self, headers: dict[str, str] | None = None, **body: object) -> httpx.Response:
        return self.client.post(
            "/v1/images/generations",
            json={"model": "hidream-i1-full", "prompt": "route me", "num_inference_steps": 2, **body},
            headers={"Authorization": f"Bearer {self.key}", **(headers or {})},
        )


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def routed(redis_url: str, tmp_path: Path, pricing_file: Path, request: pytest.FixtureRequest) -> Iterator[Routed]:
    """The stack above; `@pytest.mark.parametrize("routed", [{setting: value}], indirect=True)`
    changes gateway settings."""
    with routed_stack(redis_url, tmp_path, pricing_file, **getattr(request, "param", {})) as stack:
        yield stack


@contextmanager
def routed_stack(redis_url: str, tmp_path: Path, pricing_file: Path, **more: Any) -> Iterator[Routed]:
    """The `routed` stack, with more gateway settings."""
    fal_key = f"{secrets.token_hex(4)}:{secrets.token_hex(8)}"
    fal_state = FakeFal(inference_s=0.05)
    with (
        running_worker("full", max_queue=1, pipeline=StandInPipeline(step_s=0.01)) as worker,
        serve_in_thread(create_fal_app(fal_state, key=fal_key)) as fal_url,
    ):
        own_pricing = tmp_path / "pricing.yaml"  # a copy a test may edit while the gateway runs
        own_pricing.write_bytes(pricing_file.read_bytes())
        settings = Settings(
            redis_url=redis_url,
            admin_key=ADMIN,
            metrics_token=METRICS,
            data_dir=tmp_path / "data",
            pricing_file=own_pricing,
            fal_key=fal_key,
            fal_queue_url=fal_url,
            fal_poll_initial_s=0.02,
            local_gpu_urls=[worker.url],
            probe_interval_s=0.05,
            **more,
        )
        with TestClient(create_app(settings)) as client:
            team = client.post(
                "/admin/teams", json={"name": "r", "allow_provider_pinning": True}, headers=admin_headers()
            ).json()
            key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
            yield Routed(client, worker, fal_state, key, team["id"])
        worker.pipeline.release.set()
        worker.join_fillers()
