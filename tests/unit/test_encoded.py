"""gateway/images/encoded.py: JSON with images' base64 written a piece at a time is, joined, the
JSON orjson makes of the same body with the base64 in it."""

from __future__ import annotations

import asyncio
import base64
import random

import orjson
import pytest

from gateway.api.json_response import JsonBytesResponse
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


async def test_the_answer_lets_the_event_loop_turn_between_pieces() -> None:
    """The server hands a turn's writes to the socket at the turn's end and holds send() back while
    the socket is full: each piece must go out (a turn) before the next is encoded, or every piece
    of the base64 is made and held at once."""
    data = random.Random(5).randbytes(3 * PIECE + 7)
    response = JsonBytesResponse({"data": [{"b64_json": Base64Of(data)}]})
    loop = asyncio.get_running_loop()
    turns: list[int] = []  # for each body message, the loop turns seen before it
    seen = [0]
    sent: list[bytes] = []

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            turns.append(seen[0])
            sent.append(message["body"])  # type: ignore[arg-type]
            loop.call_soon(seen.__setitem__, 0, seen[0] + 1)  # runs at the next turn

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
    body = b"".join(sent)
    assert orjson.loads(body)["data"][0]["b64_json"] == base64.b64encode(data).decode()
    pieces = [i for i, b in enumerate(sent) if len(b) == PIECE // 3 * 4]
    assert len(pieces) == 3
    # the loop turned after each piece before the next was sent
    assert all(turns[i + 1] > turns[i] for i in pieces)
