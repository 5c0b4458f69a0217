"""Whole objects by key, kept where the images are: a local directory or the object store's bucket
under its prefix (the same obstore client as the images). The ledger archive keeps its days here.

Keys are slash-separated paths the gateway makes itself ("ledger/<team>/<month>/<day>...").
A put replaces an object whole or not at all, so a reader never sees half of one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Protocol

import obstore
from obstore.store import S3Store

from gateway.errors import StorageUnavailableError
from gateway.images.object_store import FAILED, MISSING
from gateway.images.storage import write_all
from gateway.images.store import OnStoreError, failure_kind

log = logging.getLogger(__name__)

# What a key may hold: path segments of letters, digits and -_. (no "..", no absolute path).
KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
TMP_MARK = ".tmp-"  # a local put in progress: never listed


class Blobs(Protocol):
    where: str  # for log lines: the directory or the bucket's URL

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes | None:
        """The object, or None when there is none."""
        ...

    async def keys(self, prefix: str) -> list[str]:
        """The keys under `prefix` (a folder: "a/b/"), sorted."""
        ...


class BlobError(StorageUnavailableError):
    def __init__(self) -> None:
        super().__init__("The gateway's archive store is unavailable; please retry shortly.")


def check_key(key: str) -> str:
    if not KEY.fullmatch(key) or "/../" in f"/{key}/" or TMP_MARK in key:
        raise ValueError(f"not a blob key: {key!r}")
    return key


class FileBlobs:
    """Objects as files under a directory; a put is written to a temporary name, synced and
    renamed into place (billing records: a crash leaves the old object or the new, never a part)."""

    def __init__(self, root: Path, on_error: OnStoreError | None = None) -> None:
        self.root = root
        self.where = str(root)
        self._on_error = on_error or (lambda operation, kind: None)

    async def put(self, key: str, data: bytes) -> None:
        path = self.root / check_key(key)
        try:
            await asyncio.to_thread(_write_atomically, path, data)
        except OSError as exc:
            self._on_error("put", failure_kind(exc))
            log.warning("the archive directory failed a put of %s: %s", key, exc)
            raise BlobError() from exc

    async def get(self, key: str) -> bytes | None:
        path = self.root / check_key(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._on_error("get", failure_kind(exc))
            log.warning("the archive directory failed a get of %s: %s", key, exc)
            raise BlobError() from exc

    async def keys(self, prefix: str) -> list[str]:
        try:
            return await asyncio.to_thread(self._list, prefix)
        except OSError as exc:
            self._on_error("list", failure_kind(exc))
            log.warning("the archive directory failed a list of %s: %s", prefix, exc)
            raise BlobError() from exc

    def _list(self, prefix: str) -> list[str]:
        top = self.root / check_key(prefix.rstrip("/"))
        out: list[str] = []
        for folder, _, files in os.walk(top):
            rel = Path(folder).relative_to(self.root).as_posix()
            out += [f"{rel}/{name}" for name in files if TMP_MARK not in name]
        return sorted(out)


class S3Blobs:
    """Objects in the bucket, under the store's prefix: each put is one PUT (whole or nothing)."""

    def __init__(self, bucket: S3Store, where: str, on_error: OnStoreError | None = None) -> None:
        self._s3 = bucket
        self.where = where
        self._on_error = on_error or (lambda operation, kind: None)

    async def put(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self._s3, check_key(key), data, use_multipart=False)
        except FAILED as exc:
            self._on_error("put", failure_kind(exc))
            log.warning("the object store failed an archive put of %s: %s", key, exc)
            raise BlobError() from exc

    async def get(self, key: str) -> bytes | None:
        try:
            got = await obstore.get_async(self._s3, check_key(key))
            return bytes(await got.bytes_async())
        except MISSING:
            return None
        except FAILED as exc:
            self._on_error("get", failure_kind(exc))
            log.warning("the object store failed an archive get of %s: %s", key, exc)
            raise BlobError() from exc

    async def keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            async for batch in obstore.list(self._s3, check_key(prefix.rstrip("/")) + "/", chunk_size=1000):
                keys += [m["path"] for m in batch]
        except FAILED as exc:
            self._on_error("list", failure_kind(exc))
            log.warning("the object store failed an archive list of %s: %s", prefix, exc)
            raise BlobError() from exc
        return sorted(keys)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
