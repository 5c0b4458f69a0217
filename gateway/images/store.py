"""What the gateway asks of wherever it keeps the images it answers: the local directory (the
embedded default, gateway/images/storage.py) or an S3-compatible object store
(gateway/images/object_store.py). Both name images alike and sign gateway URLs alike."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pybase64
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

from providers.base import ImageBytes

# Told of each failed store call: (operation, kind), for the gateway_store_errors metric.
OnStoreError = Callable[[str, str], None]


def failure_kind(exc: BaseException) -> str:
    """A closed set, from the error's type (never its text): `denied` (the store refused our
    credentials or rights), `full` (a local disk out of space or quota), `failed` (anything else:
    unreachable, timed out, a 5xx)."""
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError | PermissionError):
        return "denied"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "full"
    return "failed"


EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CONTENT_TYPES = {v: k for k, v in EXTENSIONS.items()}


@dataclass(frozen=True, slots=True)
class StoredImage:
    name: str  # "<random>.<ext>"
    file: str  # its path, or its key in the bucket (a str: pathlib costs more than the write on the request path)

    @property
    def path(self) -> Path:
        return Path(self.file)


@dataclass(frozen=True, slots=True)
class Download:
    """A stored image, opened to be sent: a local file (sent by the server's file response) or
    the object store's body, a chunk at a time."""

    content_type: str
    size: int
    path: Path | None = None
    chunks: AsyncIterator[bytes] | None = None


class ImageStorage(Protocol):
    ttl_s: int

    def has_room(self, size: int = 0) -> bool:
        """Whether an answer by URL may be admitted (a local disk's free space; always for a bucket)."""
        ...

    async def put(self, data: ImageBytes, content_type: str) -> StoredImage: ...

    async def put_stream(self, chunks: AsyncIterator[bytes], content_type: str) -> StoredImage:
        """Store an image as it arrives, never holding it whole where the store allows; on any
        failure (the source's or the store's) nothing is left under its name."""
        ...

    async def url(self, name: str) -> str:
        """The URL answered for a stored image (gateway-signed, or the store's own presigned GET)."""
        ...

    async def reissue(self, name: str) -> str | None:
        """A fresh URL for an image kept earlier (an idempotent replay), kept as long as that URL;
        None when the image is gone."""
        ...

    async def take_back(self, name: str) -> bytes | None:
        """The bytes of an image kept earlier (a b64_json replay), kept another URL lifetime; None when gone."""
        ...

    def verify(self, name: str, expires: int, sig: str, now: float | None = None) -> bool: ...

    async def open(self, name: str) -> Download | None:
        """The image behind a gateway URL, or None when there is none (a name we could not have made, or swept)."""
        ...

    async def discard(self, names: list[str]) -> None:
        """Delete images of a request that failed after they were stored (best effort: what is
        left is swept when its URL would have expired)."""
        ...

    async def sweep_expired(self, now: float | None = None) -> int:
        """Delete the images whose URLs have all expired; how many were removed."""
        ...

    async def aclose(self) -> None: ...


def is_image_name(name: str) -> bool:
    """Whether a name is one the gateway could have made (no path tricks reach a store)."""
    stem, dot, ext = name.partition(".")
    return bool(dot) and ext in CONTENT_TYPES and bool(stem) and stem.replace("-", "").replace("_", "").isalnum()


async def give_back(store: ImageStorage, data: list[dict[str, Any]], names: Iterable[str | None], *, b64: bool) -> bool:
    """An answer kept by name (an idempotent replay, a job's result) made whole again: each kept
    image gets a URL issued now, or its bytes read back as b64_json. False when one of them has
    been deleted meanwhile (the caller says which answer in its own 410)."""
    for item, name in zip(data, names, strict=False):
        if name is None:  # kept before names were: as it was
            continue
        if b64:
            raw = await store.take_back(name)
            value = None if raw is None else pybase64.b64encode_as_string(raw)
        else:
            value = await store.reissue(name)
        if value is None:
            return False
        item["b64_json" if b64 else "url"] = value
    return True
