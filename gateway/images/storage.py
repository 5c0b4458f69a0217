"""Generated images the gateway serves itself: bytes kept under the data dir (the embedded default
of gateway/images/store.py), reachable through URLs signed with an HMAC and an expiry, so a URL
works without an API key until it expires."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.errors import StorageFullError
from gateway.ids import RandomIds
from gateway.images.store import (
    CONTENT_TYPES,
    EXTENSIONS,
    Download,
    OnStoreError,
    StoredImage,
    failure_kind,
    is_image_name,
)
from providers.base import ImageBytes

__all__ = ["CONTENT_TYPES", "EXTENSIONS", "ImageStore", "StoredImage", "sign_url", "verify_url"]

# Images up to this size are written on the event loop (into the page cache: no fsync).
INLINE_WRITE_BYTES = 256 * 1024


class ImageStore:
    def __init__(
        self,
        root: Path,
        public_url: str,
        signing_key: bytes,
        ttl_s: int,
        *,
        min_free_bytes: int = 0,
        on_error: OnStoreError | None = None,
    ) -> None:
        self.root = root
        self._on_error = on_error or (lambda operation, kind: None)
        # Answers by URL are refused (503) before the disk holding the images has less than this free.
        self._min_free = min_free_bytes
        self._free = 0
        self._free_read_at = float("-inf")
        self.public_url = public_url
        self._key = signing_key
        self._ids = RandomIds()
        self.ttl_s = ttl_s
        root.mkdir(parents=True, exist_ok=True)
        self._dir = str(root) + os.sep

    def has_room(self, size: int = 0) -> bool:
        """Whether `size` more bytes leave the disk its minimum free space (read at most once a
        second: a statvfs per image is cheap, but not free)."""
        now = time.monotonic()
        if now - self._free_read_at >= 1.0:
            self._free = shutil.disk_usage(self.root).free
            self._free_read_at = now
        return self._free - size >= self._min_free

    async def put(self, data: ImageBytes, content_type: str) -> StoredImage:
        if not self.has_room(len(data)):
            self._on_error("put", "full")
            raise StorageFullError()
        name = f"{self._ids.urlsafe(18)}.{EXTENSIONS.get(content_type, 'bin')}"
        file = self._dir + name
        try:
            if len(data) <= INLINE_WRITE_BYTES:
                _write_new(file, data)  # a small write costs less than a hop to a thread and back
            else:
                await asyncio.to_thread(_write_new, file, data)
        except OSError as exc:
            self._on_error("put", failure_kind(exc))
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._free_read_at = float("-inf")  # read the disk again on the next request
            raise StorageFullError() from exc
        self._free -= len(data)
        return StoredImage(name, file)

    async def put_stream(self, chunks: AsyncIterator[bytes], content_type: str) -> StoredImage:
        """Written as it arrives, a chunk at a time (on the event loop up to INLINE_WRITE_BYTES, as
        put() writes a small image: a 2 MiB copy in 256 KiB chunks made a hop to a thread and back
        for each, 9 with the open); on any failure the file is removed."""
        if not self.has_room():
            self._on_error("put_stream", "full")
            raise StorageFullError()
        name = f"{self._ids.urlsafe(18)}.{EXTENSIONS.get(content_type, 'bin')}"
        file = self._dir + name
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        size = 0
        try:
            async for chunk in chunks:
                if len(chunk) <= INLINE_WRITE_BYTES:
                    write_all(fd, chunk)
                else:
                    await asyncio.to_thread(write_all, fd, chunk)
                size += len(chunk)
        except BaseException as exc:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk's, not the source's
                self._on_error("put_stream", "full")
                self._free_read_at = float("-inf")
                raise StorageFullError() from exc
            raise
        os.close(fd)
        self._free -= size
        return StoredImage(name, file)

    def signed_url(self, name: str, now: float | None = None) -> str:
        return sign_url(self.public_url, self._key, name, self.ttl_s, now)

    async def url(self, name: str) -> str:
        return self.signed_url(name)

    async def reissue(self, name: str) -> str | None:
        return self.renew(name)

    async def open(self, name: str) -> Download | None:
        path = self.path_of(name)
        if path is None:
            return None
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return Download(CONTENT_TYPES[name.rsplit(".", 1)[-1]], size, path=path)

    async def discard(self, names: list[str]) -> None:
        for name in names:
            if is_image_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._dir + name)

    async def sweep_expired(self, now: float | None = None) -> int:
        return await asyncio.to_thread(self.sweep, now)

    async def aclose(self) -> None:
        return None

    def renew(self, name: str, now: float | None = None) -> str | None:
        """A fresh signed URL for an image kept earlier (an idempotent replay), or None when it has
        been swept. The file's mtime moves to now, so the sweeper keeps it as long as the new URL."""
        try:
            os.utime(self._dir + name, None if now is None else (now, now))
        except FileNotFoundError:
            return None
        return self.signed_url(name, now)

    async def take_back(self, name: str, now: float | None = None) -> bytes | None:
        """An image kept earlier, read back for an idempotent replay of a b64_json answer (None
        when it has been swept); like renew, it is kept another URL lifetime from now."""
        if self.renew(name, now) is None:
            return None
        try:
            return await asyncio.to_thread(Path(self._dir + name).read_bytes)
        except FileNotFoundError:  # swept between the two
            return None

    def verify(self, name: str, expires: int, sig: str, now: float | None = None) -> bool:
        return verify_url(self._key, name, expires, sig, now)

    def path_of(self, name: str) -> Path | None:
        """The file for a name, or None when the name is not one we could have made."""
        if not is_image_name(name):
            return None
        path = self.root / name
        return path if path.is_file() else None

    def sweep(self, now: float | None = None) -> int:
        """Delete images whose URLs have all expired (the last was signed at the file's mtime: when
        it was written, or renewed); returns how many were removed."""
        cutoff = (now if now is not None else time.time()) - self.ttl_s - 60
        removed = 0
        # One entry at a time: Path.iterdir() listed the whole folder first, an hour of images
        # (330,000 names at 92 URL answers a second), in every worker process every 5 minutes;
        # each listing left Python's and glibc's heaps megabytes larger for good (the soak's steps).
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    st = entry.stat()
                    # a folder is not an image: the ledger archive's, when it shares this directory
                    if not stat.S_ISDIR(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # another worker process swept it first
        return removed


def sign_url(public_url: str, key: bytes, name: str, ttl_s: int, now: float | None = None) -> str:
    """A gateway URL for a stored image, valid for ttl_s from now (any store: the download route
    verifies it and streams the image from wherever it is kept)."""
    # name is URL-safe base64 plus an extension, sig is hex: nothing to escape
    expires = int((now if now is not None else time.time()) + ttl_s)
    return f"{public_url}/v1/files/images/{name}?expires={expires}&sig={_sign(key, name, expires)}"


def verify_url(key: bytes, name: str, expires: int, sig: str, now: float | None = None) -> bool:
    if expires < (now if now is not None else time.time()):
        return False
    # As bytes: compare_digest refuses str holding anything but ASCII, and a caller sends any text.
    return hmac.compare_digest(_sign(key, name, expires).encode(), sig.encode())


def _sign(key: bytes, name: str, expires: int) -> str:
    return hmac.new(key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()


def write_all(fd: int, data: bytes | bytearray) -> None:
    """All of `data` to `fd` (os.write may write less than asked); the image files and the ledger
    archive's objects both go through it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_new(path: str, data: ImageBytes) -> None:
    """Create the file (a fresh random name: O_EXCL) and write it whole. No temporary file and
    rename: nobody can ask for it before its URL is returned, which happens after this."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)
