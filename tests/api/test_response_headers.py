"""Headers every response carries, on FastAPI's routes and on the hot path alike, errors included."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient

from gateway.api.state import AppState
from tests.api.conftest import admin_headers


def _key(client: TestClient, team_id: str) -> dict[str, str]:
    key = client.post(f"/admin/teams/{team_id}/keys", headers=admin_headers()).json()["key"]
    return {"Authorization": f"Bearer {key}"}


def test_every_response_tells_browsers_not_to_sniff_its_type(bare_client: TestClient) -> None:
    responses = {
        "a FastAPI route": bare_client.get("/health"),
        "a FastAPI error": bare_client.get("/admin/teams"),
        "an unknown path": bare_client.get("/no/such/path"),
        "a hot-path error": bare_client.post("/v1/images/generations", json={"prompt": "x"}),
    }
    assert [r.status_code for r in responses.values()] == [200, 401, 404, 401]
    for what, r in responses.items():
        assert r.headers.get("x-content-type-options") == "nosniff", what
        assert r.headers["x-request-id"].startswith("req_"), what


def test_served_images_and_their_files_are_not_sniffed_either(served: tuple[TestClient, str]) -> None:
    client, team_id = served
    r = client.post(
        "/v1/images/generations",
        json={"model": "hidream-i1-full", "prompt": "x", "num_inference_steps": 1},
        headers=_key(client, team_id),
    )
    assert r.status_code == 200, r.text
    assert r.headers.get("x-content-type-options") == "nosniff"
    image = client.get(r.json()["data"][0]["url"].removeprefix("http://gw.test"))
    assert image.status_code == 200 and image.headers.get("x-content-type-options") == "nosniff"


def test_an_image_is_cached_no_longer_than_its_url_lives(served: tuple[TestClient, str]) -> None:
    client, team_id = served
    r = client.post(
        "/v1/images/generations",
        json={"model": "hidream-i1-full", "prompt": "x", "num_inference_steps": 1},
        headers=_key(client, team_id),
    )
    name = r.json()["data"][0]["url"].split("/v1/files/images/")[1].split("?")[0]
    state: AppState = client.app.state.gateway  # type: ignore[attr-defined]
    # A URL signed 50 minutes ago (ttl 1 h) has about 10 minutes left: no cache may keep it longer.
    url = urlsplit(state.store.signed_url(name, now=time.time() - 3000))
    expires = int(parse_qs(url.query)["expires"][0])
    before = time.time()
    image = client.get(f"{url.path}?{url.query}")
    assert image.status_code == 200
    stored = state.store.path_of(name)  # type: ignore[attr-defined]
    assert stored is not None and image.content == stored.read_bytes()  # the file, byte for byte
    directives = dict(d.strip().partition("=")[::2] for d in image.headers["cache-control"].split(","))
    assert "private" in directives
    assert 0 < int(directives["max-age"]) <= expires - before <= 600


def test_another_method_on_the_hot_path_is_a_405_naming_post(bare_client: TestClient) -> None:
    # As on FastAPI's routes: the resource exists, the method does not (it answered 404 not_found).
    for method in ("GET", "PUT", "DELETE", "OPTIONS"):
        for path in ("/v1/images/generations", "/openai/v1/images/generations"):
            r = bare_client.request(method, path)
            assert r.status_code == 405, (method, path, r.text)
            assert r.headers["allow"] == "POST"
            assert r.json()["error"]["code"] == "method_not_allowed"
            assert r.headers["x-request-id"].startswith("req_")
    assert bare_client.get("/v1/models").status_code == 401  # the other routes are FastAPI's, as before
    r = bare_client.post("/v1/models")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_a_405_allows_every_method_the_path_serves(bare_client: TestClient) -> None:
    # Several routes share these paths; Starlette's 405 named the first route's methods only.
    for path, methods in (
        ("/admin/teams", {"GET", "POST"}),
        ("/admin/teams/t1", {"GET", "PATCH"}),
        ("/admin/teams/t1/keys", {"GET", "POST"}),
        ("/v1/usage", {"GET"}),
    ):
        r = bare_client.request("PUT", path)
        assert r.status_code == 405, (path, r.text)
        assert set(r.headers["allow"].split(", ")) == methods, path
        assert r.json()["error"]["code"] == "method_not_allowed"


def test_an_image_url_serves_the_stored_file_whole_or_a_range_of_it(served: tuple[TestClient, str]) -> None:
    client, team_id = served
    r = client.post(
        "/v1/images/generations",
        json={"model": "hidream-i1-full", "prompt": "x", "num_inference_steps": 1},
        headers=_key(client, team_id),
    )
    url = urlsplit(r.json()["data"][0]["url"])
    name = url.path.split("/v1/files/images/")[1]
    state: AppState = client.app.state.gateway  # type: ignore[attr-defined]
    stored = (state.store.root / name).read_bytes()  # type: ignore[attr-defined]
    whole = client.get(f"{url.path}?{url.query}")
    assert (whole.status_code, whole.headers["content-type"], whole.content) == (200, "image/png", stored)
    assert int(whole.headers["content-length"]) == len(stored)
    part = client.get(f"{url.path}?{url.query}", headers={"range": "bytes=8-15"})
    assert (part.status_code, part.content) == (206, stored[8:16])
    (state.store.root / name).unlink()  # type: ignore[attr-defined]
    assert client.get(f"{url.path}?{url.query}").status_code == 404
