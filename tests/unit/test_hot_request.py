"""The hot path's request answers its headers and query as Starlette's Request does."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers
from starlette.requests import Request

from gateway.api.hot_request import HotHeaders, HotRequest

RAW = [
    (b"authorization", b"Bearer sk-gw-x"),
    (b"prefer", b"respond-async"),
    (b"prefer", b"wait=10"),
    (b"x-gateway-provider", b"caf\xe9"),  # latin-1, as HTTP has it
    (b"Odd-Case", b"as sent"),  # no ASGI server sends one; matched as Headers matches it
]
KEYS = ["authorization", "Authorization", "PREFER", "x-gateway-provider", "odd-case", "Odd-Case", "absent"]


def _scope(query: bytes = b"") -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": "/", "headers": list(RAW), "query_string": query}


@pytest.mark.parametrize("key", KEYS)
def test_hot_headers_answer_every_lookup_as_starlette_headers_do(key: str) -> None:
    ours, theirs = HotHeaders(_scope()), Headers(scope=_scope())
    assert ours.get(key) == theirs.get(key)
    assert ours.get(key, "dflt") == theirs.get(key, "dflt")
    assert (key in ours) == (key in theirs)
    assert ours.getlist(key) == theirs.getlist(key)
    if key in theirs:
        assert ours[key] == theirs[key]
    else:
        with pytest.raises(KeyError):
            ours[key]
    assert ours == theirs and ours.raw == theirs.raw and list(ours.items()) == list(theirs.items())


async def _receive() -> dict[str, object]:
    return {"type": "http.disconnect"}


@pytest.mark.parametrize("query", [b"", b"dryRun=true&x=1&x=2"])
def test_hot_request_parses_its_query_as_starlette_does(query: bytes) -> None:
    ours, theirs = HotRequest(_scope(query), _receive), Request(_scope(query), _receive)
    assert ours.query_params == theirs.query_params
    assert ours.query_params.get("dryRun", "") == theirs.query_params.get("dryRun", "")
    assert ours.headers.get("prefer") == theirs.headers.get("prefer") == "respond-async"
