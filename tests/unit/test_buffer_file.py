from __future__ import annotations

import io

import pytest
from PIL import Image

from gateway.images.buffer_file import BufferFile, image_file
from tests.unit.test_validation import noise_png


def test_a_buffer_file_reads_and_seeks_as_bytesio_does() -> None:
    data = bytearray(range(256)) * 4
    ours, theirs = BufferFile(data), io.BytesIO(bytes(data))
    for step in (("read", 10), ("seek", 100, 0), ("read", 5), ("seek", -3, 1), ("read", 7), ("seek", -10, 2),
                 ("read", 100), ("read", 1), ("seek", 5000, 0), ("read", 3)):  # fmt: skip
        if step[0] == "read":
            assert ours.read(step[1]) == theirs.read(step[1])
        else:
            assert ours.seek(step[1], step[2]) == theirs.seek(step[1], step[2])
        assert ours.tell() == theirs.tell()
    with pytest.raises(ValueError):
        ours.seek(-1)


def test_pil_opens_an_upload_held_in_a_bytearray_without_a_copy() -> None:
    png = noise_png(64, 48)
    held = bytearray(png)
    with Image.open(image_file(held)) as img:
        assert img.size == (64, 48)
        img.load()
        assert img.tobytes() == Image.open(io.BytesIO(png)).tobytes()
    assert isinstance(image_file(png), io.BytesIO)  # bytes: BytesIO shares them already
