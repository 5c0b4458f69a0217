"""Real PNG files of any size for the fake upstream, made once per size and kept with their base64,
so serving one costs nothing per request. An optional incompressible ancillary chunk pads a file
to about a given number of bytes (the "bytes" scenario sends 2 MiB images)."""

from __future__ import annotations

import base64
import random
import struct
import zlib
from dataclasses import dataclass

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary (lowercase 1st letter), private (2nd), reserved bit clear (3rd uppercase), safe to copy
# (4th lowercase): decoders skip it, so the padding never changes the pixels.
PAD_CHUNK = b"npAd"
CHUNK_OVERHEAD = 12  # length + type + CRC
RGB = (214, 96, 40)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_png(width: int, height: int, *, target_bytes: int = 0, seed: int = 0) -> bytes:
    """A solid-colour RGB PNG of width x height, padded after IDAT to at least target_bytes."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad PNG size {width}x{height}")
    row = b"\x00" + bytes(RGB) * width  # filter type 0 per scanline
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    head = SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(row * height, 6))
    tail = _chunk(b"IEND", b"")
    missing = target_bytes - len(head) - len(tail) - CHUNK_OVERHEAD
    if missing > 0:
        head += _chunk(PAD_CHUNK, random.Random(seed).randbytes(missing))
    return head + tail


@dataclass(frozen=True, slots=True)
class Png:
    data: bytes
    b64: bytes  # ASCII base64 of data, ready to splice into a JSON string


class PngCache:
    """One PNG per size, made on first use (and eagerly for `sizes`)."""

    def __init__(self, target_bytes: int, sizes: tuple[tuple[int, int], ...] = ()) -> None:
        self._target_bytes = target_bytes
        self._pngs: dict[tuple[int, int], Png] = {}
        for width, height in sizes:
            self.get(width, height)

    def get(self, width: int, height: int) -> Png:
        found = self._pngs.get((width, height))
        if found is None:
            data = make_png(width, height, target_bytes=self._target_bytes, seed=width * 65536 + height)
            found = self._pngs[(width, height)] = Png(data, base64.b64encode(data))
        return found


def parse_size(value: object) -> tuple[int, int] | None:
    """`WIDTHxHEIGHT` -> (width, height); None if it is not one (or is absurdly large)."""
    if not isinstance(value, str):
        return None
    width, sep, height = value.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        return None
    w, h = int(width), int(height)
    if not (0 < w <= 8192 and 0 < h <= 8192):
        return None
    return w, h
