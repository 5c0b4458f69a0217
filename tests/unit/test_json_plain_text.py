"""A body that json_body.plain_text calls plain holds no string that validation would refuse, in
whatever encoding and escaping it came (so skipping the walk of its strings refuses nothing more)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.api.json_body import parse_object, plain_text
from gateway.errors import InvalidRequestError
from gateway.images.validation import Params

TEXT = st.text(st.characters(codec=None, categories=None, exclude_categories=()), max_size=8)
VALUES = st.recursive(st.none() | st.integers() | TEXT, lambda kids: st.lists(kids, max_size=3), max_leaves=6)


def _encodings(body: object) -> list[bytes]:
    out = []
    for ascii_only in (True, False):
        text = json.dumps(body, ensure_ascii=ascii_only)
        for codec in ("utf-8", "utf-16", "utf-32", "utf-8-sig"):
            out.append(text.encode(codec, errors="surrogatepass"))
    return out


@given(st.dictionaries(TEXT, VALUES, max_size=4))
def test_a_plain_body_holds_nothing_the_walk_would_refuse(body: dict[str, object]) -> None:
    for raw in _encodings(body):
        try:
            parsed = parse_object(raw)
        except InvalidRequestError:
            continue  # not read at all
        walked = True
        try:
            Params(parsed, form=False)
        except InvalidRequestError:
            walked = False
        assert walked or not plain_text(raw), raw


def test_plain_text_is_false_for_any_escape_and_for_nul_bytes() -> None:
    assert plain_text(b'{"prompt": "a red fox"}')
    assert not plain_text(b'{"prompt": "caf\\u00e9"}')  # harmless, but walked
    assert not plain_text('{"prompt": "x"}'.encode("utf-16"))
    assert not plain_text(b'{"\xed\xa0\x80": null}')  # a lone surrogate as bytes, read by json.loads
