"""Redis unreachable: requests fail closed with 503 (never an unmetered image), and the gateway
recovers by itself when Redis comes back with its data."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import ADMIN, admin_headers
from tests.redis_server import RedisServer


def test_requests_fail_closed_while_redis_is_down_and_recover(tmp_path: Path, pricing_file: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = Settings(redis_url=server.url, admin_key=ADMIN, data_dir=tmp_path / "data", pricing_file=pricing_file)
    app = create_app(settings, registry={"fal": lambda s: None, "local_gpu": lambda s: None})
    try:
        with TestClient(app) as client:
            team = client.post("/admin/teams", json={"name": "t"}, headers=admin_headers()).json()
            key = client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
            h = {"Authorization": f"Bearer {key}"}
            assert client.get("/v1/models", headers=h).status_code == 200

            server.kill()
            for path, method in (("/v1/models", "GET"), ("/v1/images/generations", "POST"), ("/admin/teams", "GET")):
                headers = admin_headers() if path.startswith("/admin") else h
                r = client.request(method, path, json={"prompt": "x"} if method == "POST" else None, headers=headers)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"]["type"] == "server_error" and r.headers["retry-after"] == "2"
            ready = client.get("/ready", headers=admin_headers())
            assert ready.status_code == 503 and ready.json()["redis"] is False

            server.start()  # same port, same append-only file
            assert client.get("/v1/models", headers=h).status_code == 200
    finally:
        server.stop()
