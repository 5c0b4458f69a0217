"""gateway/images/png.py: a PNG checked whole without its pixels must refuse everything Pillow's
full decode refuses (truncated, corrupt, short), and more (any bad CRC, no IEND)."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image

from gateway.errors import InvalidRequestError
from gateway.images.decoding import decode_bytes
from gateway.images.png import ADAM7, CHECK_BYTES, FEED_PIECE, NotChecked, PngError, check_png, checked_without_pixels
from gateway.images.validation import decode_fully, probe_upload
from providers.base import InputImage


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, raw: bytes, *, depth: int = 8, colour: int = 2, interlace: int = 0,
            idat_parts: int = 1, extra: bytes = b"") -> bytes:  # fmt: skip
    """A PNG of the given (already filtered) scanline data, its IDAT split in idat_parts chunks."""
    packed = zlib.compress(raw)
    step = -(-len(packed) // idat_parts)
    idats = b"".join(chunk(b"IDAT", packed[i : i + step]) for i in range(0, len(packed), step))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idats + extra + chunk(b"IEND", b"")


def pillow_png(mode: str, size: tuple[int, int] = (37, 23), **save: object) -> bytes:
    rng = random.Random(hash(mode) & 0xFFFF)
    img = Image.frombytes(mode, size, rng.randbytes(len(Image.new(mode, size).tobytes())))
    buf = io.BytesIO()
    img.save(buf, "PNG", **save)
    return buf.getvalue()


def pillow_refuses(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception:  # noqa: BLE001 - any refusal at all counts
        return True
    return False


def interlaced(width: int, height: int) -> tuple[bytes, bytes]:
    """An Adam7 RGB PNG made by hand (Pillow writes none) and the pixels it holds."""
    rng = random.Random(width * 1000 + height)
    pixels = [[bytes(rng.randbytes(3)) for _ in range(width)] for _ in range(height)]
    raw = b""
    for x0, y0, dx, dy in ADAM7:
        cols = range(x0, width, dx)
        for y in range(y0, height, dy):
            if len(cols):
                raw += b"\0" + b"".join(pixels[y][x] for x in cols)
    flat = b"".join(b"".join(row) for row in pixels)
    return raw_png(width, height, raw, interlace=1), flat


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])
def test_pngs_pillow_writes_pass_with_their_size(mode: str) -> None:
    data = pillow_png(mode)
    assert check_png(data) == (37, 23)


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (8, 8), (13, 9), (64, 31)])
def test_an_interlaced_png_passes_and_is_the_image_pillow_decodes(size: tuple[int, int]) -> None:
    data, flat = interlaced(*size)
    assert check_png(data) == size
    with Image.open(io.BytesIO(data)) as img:  # the hand-made file is what it claims to be
        assert img.convert("RGB").tobytes() == flat


def test_image_data_split_over_many_idat_chunks_passes() -> None:
    raw = b"".join(b"\1" + bytes(range(90)) for _ in range(40))
    assert check_png(raw_png(30, 40, raw, idat_parts=17)) == (30, 40)


def test_every_truncation_is_refused() -> None:
    data = pillow_png("RGB", (16, 12))
    for cut in range(len(data)):
        with pytest.raises(PngError):
            check_png(data[:cut])


def test_a_flipped_bit_anywhere_is_refused() -> None:
    data = pillow_png("RGB", (16, 12))
    for at in range(len(data)):
        bad = bytearray(data)
        bad[at] ^= 0x10
        with pytest.raises((PngError, NotChecked)):
            check_png(bytes(bad))


def test_everything_pillow_refuses_is_refused_too() -> None:
    """Random damage with the CRCs made right again, so that the image data itself is what is
    wrong: whatever Pillow's full decode refuses, the check refuses."""
    rng = random.Random(16)
    raw = b"".join(bytes([rng.randrange(5)]) + rng.randbytes(48) for _ in range(20))
    packed = bytearray(zlib.compress(raw))
    refused_by_pillow = 0
    for _ in range(300):
        bad = bytearray(packed)
        for _ in range(rng.randrange(1, 4)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        ihdr = struct.pack(">IIBBBBB", 16, 20, 8, 2, 0, 0, 0)
        data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(bad)) + chunk(b"IEND", b"")
        if pillow_refuses(data):
            refused_by_pillow += 1
            with pytest.raises(PngError):
                check_png(data)
    assert refused_by_pillow > 50  # the damage did reach the decoder


def test_a_bad_crc_is_refused_even_where_pillow_reads_past_it() -> None:
    data = bytearray(pillow_png("RGB", (16, 12)))
    data[-5] ^= 1  # IEND's CRC: Pillow never checks it
    assert not pillow_refuses(bytes(data))
    with pytest.raises(PngError, match="CRC"):
        check_png(bytes(data))


def test_short_image_data_is_refused_where_pillow_fills_in_the_rest() -> None:
    rows = b"".join(b"\0" + bytes(30) for _ in range(9))  # 9 of 10 scanlines, a whole zlib stream
    data = raw_png(10, 10, rows)
    assert not pillow_refuses(data)  # Pillow leaves the last row black
    with pytest.raises(PngError, match="truncated image data"):
        check_png(data)


def test_an_unknown_filter_type_is_refused() -> None:
    rows = b"".join(b"\0" + bytes(30) for _ in range(9)) + b"\5" + bytes(30)
    data = raw_png(10, 10, rows)
    assert pillow_refuses(data)
    with pytest.raises(PngError, match="filter"):
        check_png(data)


def test_a_decompression_bomb_header_is_refused_without_inflating_what_is_not_there() -> None:
    data = raw_png(100_000, 100_000, b"\0" * 16)
    with pytest.raises(PngError, match="truncated image data"):
        check_png(data)


def test_data_past_the_last_scanline_is_never_inflated() -> None:
    """A zlib bomb behind a small header: inflating stops at the scanlines the header makes (a
    stream that would inflate to 16 MiB), as Pillow's decoder stops."""
    rows = b"\0" * (1 + 3 * 8) * 8 + b"\0" * (16 * 1024 * 1024)
    data = raw_png(8, 8, rows)
    assert check_png(data) == (8, 8)


@pytest.mark.parametrize(
    ("ihdr", "error"),
    [
        (struct.pack(">IIBBBB", 8, 8, 8, 2, 0, 0), PngError),  # 12 bytes
        (struct.pack(">IIBBBBB", 0, 8, 8, 2, 0, 0, 0), PngError),
        (struct.pack(">IIBBBBB", 8, 8, 4, 2, 0, 0, 0), NotChecked),  # RGB at 4 bits does not exist
        (struct.pack(">IIBBBBB", 8, 8, 8, 5, 0, 0, 0), NotChecked),
        (struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 2), NotChecked),
    ],
)
def test_a_wrong_ihdr_is_refused_or_left_to_the_decoder(ihdr: bytes, error: type[Exception]) -> None:
    idat = chunk(b"IDAT", zlib.compress(bytes(8 * 25)))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")
    with pytest.raises(error):
        check_png(data)


def test_structure_errors() -> None:
    good = pillow_png("RGB", (4, 4))
    ihdr_end = 8 + 25
    with pytest.raises(PngError, match="signature"):
        check_png(b"\x89PNG\r\n\x1a\x00" + good[8:])
    with pytest.raises(PngError, match="first chunk"):
        check_png(good[:8] + chunk(b"tEXt", b"a\0b") + good[8:])
    with pytest.raises(PngError, match="second IHDR"):
        check_png(good[:ihdr_end] + good[8:ihdr_end] + good[ihdr_end:])
    with pytest.raises(PngError, match="no IDAT"):
        check_png(good[:ihdr_end] + chunk(b"IEND", b""))
    with pytest.raises(PngError, match="IEND"):
        check_png(good[:-12])


def test_an_animated_png_is_left_to_the_decoder_which_accepts_it() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(NotChecked):
        check_png(buf.getvalue())
    decode_fully(probe_upload(buf.getvalue(), param="image", max_pixels=10_000), "image")


def test_decode_fully_names_the_parameter_of_a_damaged_png() -> None:
    data = pillow_png("RGB", (16, 12))
    img = probe_upload(data, param="mask", max_pixels=10_000)
    decode_fully(img, "mask")
    damaged = probe_upload(data[:-20] + bytes(8) + data[-12:], param="mask", max_pixels=10_000)
    with pytest.raises(InvalidRequestError) as info:
        decode_fully(damaged, "mask")
    assert (info.value.code, info.value.param) == ("invalid_image", "mask")


def test_a_photo_sized_idat_chunk_is_inflated_a_slice_at_a_time() -> None:
    """Incompressible pixels in one IDAT chunk several FEED_PIECEs long (as a photo's): it passes,
    and its image data cut short past two slices (the CRC made right) is still refused."""
    rng = random.Random(3)
    width, height = 300, 300
    raw = b"".join(b"\0" + rng.randbytes(3 * width) for _ in range(height))
    data = raw_png(width, height, raw)
    assert len(data) > 3 * FEED_PIECE
    assert check_png(data) == (width, height)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    cut = zlib.compress(raw)[: 2 * FEED_PIECE + 5]
    short = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", cut) + chunk(b"IEND", b"")
    assert pillow_refuses(short)
    with pytest.raises(PngError, match="truncated image data"):
        check_png(short)


def test_which_pngs_are_checked_without_their_pixels() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    odd = struct.pack(">IIBBBBB", 8, 8, 4, 2, 0, 0, 0)  # RGB at 4 bits: left to the decoder
    odd_png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", odd) + chunk(b"IDAT", zlib.compress(bytes(8 * 25)))
    assert checked_without_pixels(pillow_png("RGB")) and checked_without_pixels(pillow_png("P"))
    assert not checked_without_pixels(buf.getvalue())  # animated: acTL before the image data
    assert not checked_without_pixels(odd_png)
    assert checked_without_pixels(b"not a png at all")  # refused by the check, nothing decoded
    # what the decode budget reserves: one inflated piece for a checked PNG, the pixels otherwise
    big = InputImage(pillow_png("RGB", (16, 12)), "image/png", 4000, 4000)
    animated = InputImage(buf.getvalue(), "image/png", 4000, 4000)
    assert decode_bytes(big) == CHECK_BYTES and decode_bytes(animated) == 4000 * 4000 * 4
