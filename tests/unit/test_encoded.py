"""gateway/images/encoded.py: JSON with images' base64 written a piece at a time is, joined, the
JSON orjson makes of the same body with the base64 in it."""

from __future__ import annotations

import base64
import random

import orjson
import pytest

from gateway.images.encoded import PIECE, Base64Of, as_text, json_parts, parts_length


@pytest.mark.parametrize("size", [0, 1, 2, 3, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 2])
def test_pieces_join_to_the_whole_base64(size: int) -> None:
    data = random.Random(size).randbytes(size)
    encoded = Base64Of(data)
    whole = base64.b64encode(data)
    assert b"".join(encoded.pieces()) == whole and encoded.length == len(whole)
    assert encoded.text() == whole.decode()


def test_parts_join_to_what_orjson_makes_of_the_body_whole() -> None:
    images = [random.Random(i).randbytes(PIECE + i) for i in range(12)]  # .1 and .10 both present
    body = {
        "created": 1,
        "data": [{"revised_prompt": 'a "cat" \u00e9 \\', "b64_json": Base64Of(d)} for d in images],
        "size": "1024x1024",
    }
    parts = json_parts(body)
    assert sum(isinstance(p, Base64Of) for p in parts) == 12
    joined = b"".join(p if isinstance(p, bytes) else b"".join(p.pieces()) for p in parts)
    assert joined == orjson.dumps(body, default=as_text)
    assert parts_length(parts) == len(joined)
    assert [base64.b64decode(d["b64_json"]) for d in orjson.loads(joined)["data"]] == images


def test_a_prompt_cannot_pose_as_a_marker() -> None:
    body = {"revised_prompt": "x", "b64_json": Base64Of(b"abc"), "after": '0.0"'}
    joined = b"".join(p if isinstance(p, bytes) else b"".join(p.pieces()) for p in json_parts(body))
    assert orjson.loads(joined) == {"revised_prompt": "x", "b64_json": "YWJj", "after": '0.0"'}


def test_a_body_without_images_is_one_part() -> None:
    assert json_parts({"a": [1, "b"]}) == [b'{"a":[1,"b"]}']
    with pytest.raises(TypeError):
        as_text(object())
