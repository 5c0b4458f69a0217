"""Edits are admitted (rate limits, in-flight, budget) before any upload is fully decoded; a decode
that fails after admission is settled as failed and charged nothing; and the decodes running at
once in a process stay within its decode-memory budget.

Full decodes are counted where Pillow does them (ImageFile.load): Image.open reads a header only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import ImageFile

from gateway.api.state import AppState
from gateway.app import create_app
from gateway.images import validation
from gateway.settings import Settings
from tests.api.conftest import admin_headers
from tests.api.test_edits_validation import png
from tests.fakes.worker_server import wait_until
from tests.unit.test_validation import noise_png

FIELDS = {"model": "hidream-i1-full", "prompt": "edit"}


class Decodes:
    """Counts full checks of an upload (a PNG's structural check, gateway/images/png.py, or
    Pillow's decode of anything else), and can hold each one until released to see how many run
    at once."""

    def __init__(self, hold: bool = False) -> None:
        self.calls = 0
        self.running = 0
        self.peak = 0
        self.threads: set[str] = set()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._lock = threading.Lock()

    def wrap(self, load: Any) -> Any:
        def counted(img: Any) -> Any:
            with self._lock:
                self.calls += 1
                self.threads.add(threading.current_thread().name)
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                assert self.release.wait(10), "never released"
                return load(img)
            finally:
                with self._lock:
                    self.running -= 1

        return counted


def _decodes(monkeypatch: pytest.MonkeyPatch, *, hold: bool = False) -> Decodes:
    decodes = Decodes(hold)
    monkeypatch.setattr(ImageFile.ImageFile, "load", decodes.wrap(ImageFile.ImageFile.load))
    monkeypatch.setattr(validation, "check_png", decodes.wrap(validation.check_png))
    return decodes


def _key(client: TestClient, **team: object) -> str:
    made = client.post("/admin/teams", json={"name": "e", **team}, headers=admin_headers()).json()
    key: str = client.post(f"/admin/teams/{made['id']}/keys", headers=admin_headers()).json()["key"]
    return key


def _edit(client: TestClient, key: str, image: bytes) -> tuple[int, dict[str, Any]]:
    r = client.post(
        "/v1/images/edits",
        data=FIELDS,
        files=[("image", ("a.png", image, "image/png"))],
        headers={"Authorization": f"Bearer {key}"},
    )
    return r.status_code, r.json()


@pytest.mark.parametrize(
    ("team", "code"),
    [
        ({"limits": {"requests_per_minute": 1}}, "rate_limit_exceeded"),
        ({"monthly_budget_usd": 0}, "insufficient_quota"),
    ],
)
def test_an_edit_refused_by_admission_decodes_nothing(
    bare_client: TestClient, monkeypatch: pytest.MonkeyPatch, team: dict[str, object], code: str
) -> None:
    key = _key(bare_client, **team)
    image = png(512, 512)
    if code == "rate_limit_exceeded":
        assert _edit(bare_client, key, image)[0] == 503  # admitted (no route is configured)
    decodes = _decodes(monkeypatch)
    status, body = _edit(bare_client, key, image)
    assert (status, body["error"]["code"]) == (429, code)
    assert decodes.calls == 0


def test_a_decode_that_fails_after_admission_is_charged_nothing_and_frees_its_slot(bare_client: TestClient) -> None:
    key = _key(bare_client, limits={"max_in_flight": 1})
    whole = noise_png(256, 256)
    status, body = _edit(bare_client, key, whole[: len(whole) // 2])  # the header reads; the pixels stop halfway
    assert (status, body["error"]["param"], body["error"]["code"]) == (400, "image", "invalid_image")
    # the one slot is free again: the next edit is admitted (and fails for want of a route)
    assert _edit(bare_client, key, png())[0] == 503
    auth = {"Authorization": f"Bearer {key}"}
    usage = bare_client.get("/v1/usage", headers=auth).json()
    assert (usage["spent_usd"], usage["reserved_usd"], usage["failed_requests"]) == (0, 0, 2)
    team_id = bare_client.get("/admin/teams", headers=admin_headers()).json()["data"][0]["id"]
    lines = bare_client.get(f"/admin/usage?team_id={team_id}", headers=admin_headers()).json()["lines"]
    assert [(x["status"], x["charged_usd"], x["error_kind"]) for x in lines][0] == ("failed", 0, "invalid_request")


SIDE = 256  # the test image: SIDE x SIDE RGB, 4 bytes a pixel once decoded
BOUND = 2


@pytest.fixture
def budgeted(settings: Settings) -> Iterator[TestClient]:
    budget = Settings(**{**settings.model_dump(), "upload_decode_budget_bytes": BOUND * SIDE * SIDE * 4})
    app = create_app(budget, registry={"fal": lambda s: None, "local_gpu": lambda s: None})
    with TestClient(app) as client:
        yield client


def test_concurrent_decodes_stay_within_the_memory_budget(
    budgeted: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, edits = budgeted, 2 * BOUND
    key = _key(client)
    state: AppState = client.app.state.gateway  # type: ignore[attr-defined]
    decodes = _decodes(monkeypatch, hold=True)

    async def send_all() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
            requests = [
                http.post(
                    "/v1/images/edits",
                    data=FIELDS,
                    files=[("image", ("a.png", png(SIDE, SIDE), "image/png"))],
                    headers={"Authorization": f"Bearer {key}"},
                )
                for _ in range(edits)
            ]
            return [r.status_code for r in await asyncio.gather(*requests)]

    def waiting() -> int:
        return int(state.metrics.registry.get_sample_value("gateway_upload_decodes_waiting") or 0)

    portal = client.portal
    assert portal is not None
    future = portal.start_task_soon(send_all)
    try:
        # every edit has reached its decode: running it, or waiting for memory
        wait_until(lambda: decodes.running + waiting() == edits, "every edit at its decode")
        assert (decodes.running, waiting()) == (BOUND, edits - BOUND)
    finally:
        decodes.release.set()
    assert future.result(timeout=30) == [503] * edits  # decoded, then refused for want of a route
    assert decodes.calls == edits and decodes.peak == BOUND
    assert waiting() == 0
    # on the decoder's own few threads, so the memory one frees is reused by the next
    assert len(decodes.threads) <= state.settings.upload_decode_threads
    assert all(name.startswith("upload-decode") for name in decodes.threads), decodes.threads
