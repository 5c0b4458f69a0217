"""Bodies a JSON parser chokes on (nesting past any sane depth, integers past Python's 4,300-digit
limit, numbers past a double) are the caller's mistake: a 400 naming the body or the field, never
a 500 with a traceback in the log."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import admin_headers
from tests.api.test_edits_validation import png

NESTED = b"[" * 5000 + b"]" * 5000
HUGE = b"1" + b"0" * 5000


@pytest.fixture
def key(bare_client: TestClient) -> str:
    team = bare_client.post("/admin/teams", json={"name": "j"}, headers=admin_headers()).json()
    k: str = bare_client.post(f"/admin/teams/{team['id']}/keys", headers=admin_headers()).json()["key"]
    return k


def _no_traceback_logged(caplog: pytest.LogCaptureFixture) -> None:
    logged = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (NESTED, None),
        (b'{"prompt": "x", "user": ' + NESTED + b"}", None),
        (b'{"prompt": "x", "seed": ' + HUGE + b"}", "seed"),
        (b'{"prompt": "x", "seed": -' + HUGE + b"}", "seed"),
        (b'{"prompt": "x", "seed": 18446744073709551616}', "seed"),  # past 64 bits, short of a double's range
        (b'{"prompt": "x", "guidance_scale": 1e999}', "guidance_scale"),
        (b'{"prompt": "x", "guidance_scale": NaN}', "guidance_scale"),
        (b'{"prompt": "x", "n": ' + HUGE + b"}", "n"),
    ],
)
def test_unparseable_numbers_and_nesting_are_400s_naming_the_body_or_field(
    bare_client: TestClient, key: str, caplog: pytest.LogCaptureFixture, body: bytes, param: str | None
) -> None:
    r = bare_client.post(
        "/v1/images/generations",
        content=body,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    if param is None:
        assert error["code"] == "invalid_json"
    _no_traceback_logged(caplog)
    usage = bare_client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).json()
    assert usage["requests"] == 0 and usage["spent_usd"] == 0


@pytest.mark.parametrize(
    "body",
    [
        NESTED,
        b'{"name": "x", "limits": ' + NESTED + b"}",
        b'{"name": "x", "monthly_budget_usd": ' + HUGE + b"}",
        b'{"name": "x", "limits": {"max_in_flight": ' + HUGE + b"}}",
    ],
)
def test_admin_bodies_that_cannot_be_parsed_are_400s(
    bare_client: TestClient, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    r = bare_client.post("/admin/teams", content=body, headers={**admin_headers(), "content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    _no_traceback_logged(caplog)
    assert bare_client.get("/admin/teams", headers=admin_headers()).json()["data"] == []


@pytest.mark.parametrize(("field", "value"), [("seed", HUGE.decode()), ("n", HUGE.decode()), ("strength", "1e999")])
def test_edit_form_fields_past_the_limits_are_400s_naming_the_field(
    bare_client: TestClient, key: str, caplog: pytest.LogCaptureFixture, field: str, value: str
) -> None:
    r = bare_client.post(
        "/v1/images/edits",
        data={"model": "hidream-i1-full", "prompt": "e", field: value},
        files=[("image", ("a.png", png(), "image/png"))],
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field
    _no_traceback_logged(caplog)
