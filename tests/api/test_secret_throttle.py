"""Guessing the admin key (or the metrics token) is throttled per client address: past 10 failures
in a minute that address gets 429 + retry-after, whatever it sends, until the minute is over.
Successful calls are not counted, and other addresses are not affected."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.api.conftest import admin_headers, metrics_headers

WRONG = {"Authorization": "Bearer adm-guess"}


def _assert_throttled(r: object, window_s: int) -> None:
    assert r.status_code == 429, r.text  # type: ignore[attr-defined]
    assert 1 <= int(r.headers["retry-after"]) <= window_s  # type: ignore[attr-defined]
    error = r.json()["error"]  # type: ignore[attr-defined]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"


def test_an_address_past_ten_failures_is_refused_even_the_right_key(bare_client: TestClient) -> None:
    for _ in range(15):  # successes are not failures
        assert bare_client.get("/admin/teams", headers=admin_headers()).status_code == 200
    for i in range(10):
        path = "/admin/teams" if i % 2 else "/metrics"  # wrong admin keys and metrics tokens count alike
        assert bare_client.get(path, headers=WRONG).status_code == 401
    _assert_throttled(bare_client.get("/admin/teams", headers=WRONG), 60)
    # Refused with the right key too: were it let through, 429 against 200 would tell a guesser
    # which guess was right at full speed.
    _assert_throttled(bare_client.get("/admin/teams", headers=admin_headers()), 60)
    _assert_throttled(bare_client.get("/metrics", headers=metrics_headers()), 60)
    _assert_throttled(bare_client.get("/ready", headers=admin_headers()), 60)
    assert bare_client.get("/ready").json() == {"ready": False}  # plain /ready takes no secret

    elsewhere = TestClient(bare_client.app, client=("198.51.100.7", 40000))
    elsewhere.portal = bare_client.portal  # the running app's event loop (its Redis connections live there)
    assert elsewhere.get("/admin/teams", headers=admin_headers()).status_code == 200
    assert elsewhere.get("/admin/teams", headers=WRONG).status_code == 401


def test_the_address_is_let_in_again_when_its_window_ends(settings: Settings) -> None:
    settings = settings.model_copy(update={"auth_failure_window_s": 1})
    app = create_app(settings, registry={"fal": lambda s: None, "local_gpu": lambda s: None})
    with TestClient(app) as client:
        for _ in range(10):
            assert client.get("/admin/teams", headers=WRONG).status_code == 401
        _assert_throttled(client.get("/admin/teams", headers=admin_headers()), 1)
        deadline = time.monotonic() + 10
        while (r := client.get("/admin/teams", headers=admin_headers())).status_code == 429:
            assert time.monotonic() < deadline, "the window never ended"
            time.sleep(0.1)
        assert r.status_code == 200
