"""A PNG checked whole without decoding its pixels: every chunk's length and CRC, IHDR first and
IEND last, and the image data inflated a piece at a time and counted, each scanline's filter byte
read, so a truncated, corrupt or short file is refused as Pillow's full decode refuses it (and a
bad CRC anywhere, which Pillow reads past once the pixels are in), while the memory is one piece
of inflated data, not the pixels (a 40 MP upload held 160 MB decoded), and the CPU is the inflate
and CRC, not the unfiltering and pixel copies.

What it does not know (an animated PNG's frames, a bit depth its colour type cannot have) it says
so, and the caller decodes with Pillow as before. The pixel limit is the caller's: the header's
size is checked before this runs (validation.probe_upload)."""

from __future__ import annotations

import struct
from typing import cast

# The zlib module's API with SIMD CRC-32 and a faster inflate (pyproject.toml says how much).
from zlib_ng import zlib_ng as zlib

ZLIB_ERROR = cast("type[Exception]", zlib.error)  # its stub declares the class an instance

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type -> (samples a pixel, the bit depths it may have)
COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)), 6: (4, (8, 16))}
# Adam7: each pass's (first column, first row, column step, row step)
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
INFLATE_PIECE = 256 * 1024  # inflated bytes held at once
# Compressed bytes handed to zlib at once: what it leaves unconsumed it copies out (unconsumed_tail),
# so one IDAT chunk of a photo's 10 MiB fed whole was copied again for every piece inflated from it
# (about 200 MB of copying, and a second copy of the chunk held), where slices of this size leave
# at most this much to copy.
FEED_PIECE = 64 * 1024
# What check_png holds beside the file: one inflated piece, the slice's leftover and zlib's state.
CHECK_BYTES = INFLATE_PIECE + FEED_PIECE + 64 * 1024
MAX_FILTER = 4  # None, Sub, Up, Average, Paeth


class PngError(Exception):
    """Not a whole, well-formed PNG (the message says where)."""


class NotChecked(Exception):
    """A PNG this module does not check (an animated one); decode it instead."""


def check_png(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Width and height of a whole, well-formed PNG; PngError if it is not one, NotChecked if it
    is one this module does not check."""
    view = memoryview(data)
    if bytes(view[:8]) != SIGNATURE:
        raise PngError("no PNG signature")
    rows: list[tuple[int, int]] | None = None  # (scanlines, bytes a scanline) per pass
    width = height = 0
    inflater: _Inflater | None = None
    at, end = 8, len(view)
    previous = b""
    while True:
        if at + 8 > end:
            raise PngError("truncated: a chunk header is cut off (no IEND)")
        length, kind = struct.unpack_from(">I4s", view, at)
        if length > 0x7FFFFFFF:
            raise PngError(f"chunk {kind!r} declares {length} bytes")
        body_end = at + 8 + length
        if body_end + 4 > end:
            raise PngError(f"truncated: chunk {kind!r} is cut off")
        crc = zlib.crc32(view[at + 4 : body_end])
        if crc != struct.unpack_from(">I", view, body_end)[0]:
            raise PngError(f"bad CRC in chunk {kind!r}")
        body = view[at + 8 : body_end]
        if rows is None:
            if kind != b"IHDR":
                raise PngError("the first chunk is not IHDR")
            width, height, rows = _header(body)
            inflater = _Inflater(rows)
        elif kind == b"IHDR":
            raise PngError("a second IHDR")
        elif kind == b"acTL":
            raise NotChecked("an animated PNG")
        elif kind == b"IDAT":
            assert inflater is not None
            if previous != b"IDAT" and inflater.started:
                raise PngError("IDAT chunks are not consecutive")
            inflater.feed(body)
        elif kind == b"IEND":
            assert inflater is not None
            inflater.finish()
            return width, height
        previous = kind
        at = body_end + 4


def checked_without_pixels(data: bytes | bytearray | memoryview) -> bool:
    """Whether check_png checks this file itself, holding about CHECK_BYTES beside it, rather than
    leaving it to a decoder (NotChecked): an IHDR it knows and no acTL before the image data. Reads
    chunk headers only; a file too broken to tell is one check_png refuses without decoding."""
    view = memoryview(data)
    at, end = 8, len(view)
    while at + 8 <= end:
        length, kind = struct.unpack_from(">I4s", view, at)
        if kind == b"IHDR":
            try:
                _header(view[at + 8 : at + 8 + length])
            except NotChecked:
                return False
            except PngError:
                return True
        elif kind == b"acTL":
            return False
        elif kind == b"IDAT":
            return True
        at += 12 + length
    return True


def _header(body: memoryview) -> tuple[int, int, list[tuple[int, int]]]:
    if len(body) != 13:
        raise PngError("IHDR is not 13 bytes")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
        raise PngError(f"IHDR declares {width}x{height}")
    allowed = COLOUR_TYPES.get(colour)
    if allowed is None or depth not in allowed[1] or compression != 0 or filtering != 0 or interlace > 1:
        raise NotChecked(f"colour type {colour}, depth {depth}, method {compression}/{filtering}/{interlace}")
    bits = allowed[0] * depth
    if interlace == 0:
        return width, height, [(height, (width * bits + 7) // 8)]
    passes = []
    for x0, y0, dx, dy in ADAM7:
        cols, lines = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if cols > 0 and lines > 0:  # an empty pass has no scanlines at all, not even filter bytes
            passes.append((lines, (cols * bits + 7) // 8))
    return width, height, passes


class _Inflater:
    """The concatenated IDAT data inflated a piece at a time: counted against the scanlines the
    header makes, each scanline's filter byte read. Inflating stops once every scanline is in (a
    decoder reads no further: what follows cannot be a bomb)."""

    def __init__(self, passes: list[tuple[int, int]]) -> None:
        self._zlib = zlib.decompressobj()
        self._passes = passes
        self._pass = 0
        self._lines_left = passes[0][0]
        self._next_filter = 0  # offset in the inflated stream of the next scanline's filter byte
        self._seen = 0  # bytes inflated so far
        self.expected = sum(lines * (1 + size) for lines, size in passes)
        self.started = False

    def feed(self, data: memoryview) -> None:
        self.started = True
        for start in range(0, len(data), FEED_PIECE):
            pending: bytes | memoryview = data[start : start + FEED_PIECE]
            while pending and self._seen < self.expected:
                try:
                    out = self._zlib.decompress(pending, min(INFLATE_PIECE, self.expected - self._seen))
                except ZLIB_ERROR as exc:
                    raise PngError(f"corrupt image data ({exc})") from None
                self._scan(out)
                pending = self._zlib.unconsumed_tail
                if self._zlib.eof:
                    return
            if self._seen >= self.expected:
                return

    def finish(self) -> None:
        if not self.started:
            raise PngError("no IDAT chunk")
        if self._seen < self.expected:
            raise PngError(f"truncated image data: {self._seen} of {self.expected} bytes")

    def _scan(self, out: bytes) -> None:
        start, stop = self._seen, self._seen + len(out)
        while self._next_filter < stop and self._pass < len(self._passes):
            if out[self._next_filter - start] > MAX_FILTER:
                raise PngError(f"unknown filter type {out[self._next_filter - start]}")
            self._next_filter += 1 + self._passes[self._pass][1]
            self._lines_left -= 1
            if self._lines_left == 0:
                self._pass += 1
                if self._pass < len(self._passes):
                    self._lines_left = self._passes[self._pass][0]
        self._seen = stop
