"""A read-only file over bytes already in memory, without copying them: what PIL opens an upload
from. io.BytesIO shares a `bytes` object but copies anything else, and an upload is read into a
bytearray (gateway/api/edit_form.py): 10 MiB copied to read a header of a few hundred bytes."""

from __future__ import annotations

import io
from typing import IO, cast

from providers.base import ImageBytes


class BufferFile(io.RawIOBase):
    def __init__(self, data: ImageBytes) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._view.release()
        super().close()


def image_file(data: ImageBytes) -> IO[bytes]:
    """A file to open `data` from: BytesIO for bytes (it shares them), a BufferFile otherwise."""
    return io.BytesIO(data) if isinstance(data, bytes) else cast(IO[bytes], BufferFile(data))
