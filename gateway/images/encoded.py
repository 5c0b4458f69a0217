"""An image's base64 in an answer, encoded a piece at a time while the answer is sent instead of
whole beforehand: a 2 MiB image's b64_json is 2.7 MB of text, held whole (then copied once more
into the JSON body) for as long as the caller took to read it. Pieces keep one image's bytes and a
piece of text per request in flight."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import orjson
import pybase64

from providers.base import ImageBytes

# Bytes encoded at a time: 192 KiB in, 256 KiB of text out (a multiple of 3: no padding between
# pieces). With pybase64's SIMD encoder the piece size hardly shows in the time (2 MiB: 0.1-0.2 ms
# in pieces of 192 or 768 KiB, within the noise), and a request holds about two pieces beside the
# image while its answer is sent.
PIECE = 3 * 64 * 1024


class Base64Of:
    """A JSON string value: the base64 of `data`, made when it is written. (Not a dataclass:
    orjson would write one as an object, never asking `default`.)"""

    __slots__ = ("data",)

    def __init__(self, data: ImageBytes) -> None:
        self.data = data

    @property
    def length(self) -> int:
        return 4 * -(-len(self.data) // 3)

    def pieces(self) -> Iterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), PIECE):
            yield pybase64.b64encode(view[start : start + PIECE])

    def text(self) -> str:
        return pybase64.b64encode_as_string(self.data)


def as_text(value: object) -> str:
    """orjson's `default` for a body that may hold Base64Of: each encoded whole."""
    if isinstance(value, Base64Of):
        return value.text()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_parts(content: Any) -> list[bytes | Base64Of]:
    """`content` as JSON, in parts: bytes, and each Base64Of (a JSON string's text without its
    quotes) where it stands. Without any Base64Of, one part."""
    found: list[Base64Of] = []
    # No caller's text (a prompt) can hold the salt: it is new for each answer, and made only for
    # an answer that holds an image (a URL answer needs none).
    salt = ""

    def mark(value: object) -> str:
        nonlocal salt
        if isinstance(value, Base64Of):
            salt = salt or secrets.token_hex(12)
            found.append(value)
            return f"{salt}.{len(found) - 1}"
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    raw = orjson.dumps(content, default=mark)
    if not found:
        return [raw]
    parts: list[bytes | Base64Of] = []
    at = 0
    for i, value in enumerate(found):
        marker = f"{salt}.{i}".encode()
        where = raw.index(marker + b'"', at)  # with its closing quote: .1 is not .10
        parts += [raw[at:where], value]
        at = where + len(marker)
    parts.append(raw[at:])
    return parts


def parts_length(parts: list[bytes | Base64Of]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.length for p in parts)
