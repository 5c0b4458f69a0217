from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.redis.scripts import _pack_slowly, pack

ARGS = st.one_of(st.text(), st.binary(), st.integers(), st.floats(allow_nan=True), st.booleans())


@given(st.lists(ARGS, max_size=30))
def test_pack_gives_the_bytes_of_the_plain_encoder_for_every_argument_type(
    parts: list[str | bytes | int | float],
) -> None:
    assert pack("EVALSHA", *parts) == _pack_slowly(("EVALSHA", *parts))


def test_pack_encodes_text_as_utf8_and_numbers_as_their_decimal_text() -> None:
    assert (
        pack("SET", "é", 12, 0.5, b"\x00")
        == b"*5\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n$2\r\n12\r\n$3\r\n0.5\r\n$1\r\n\x00\r\n"
    )
    assert pack("X", True) == b"*2\r\n$1\r\nX\r\n$4\r\nTrue\r\n"  # refused by hiredis: encoded as before
