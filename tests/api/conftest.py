from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings

ADMIN = "adm-test-" + "x" * 16


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, pricing_file: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        admin_key=ADMIN,
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


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}
