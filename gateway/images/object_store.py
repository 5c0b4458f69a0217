"""Images in an S3-compatible object store (AWS S3, MinIO, Cloudflare R2, GCS's S3 API), so that
every replica serves every URL. The client is obstore: its Rust core runs the HTTP calls on
threads of its own, so nothing here blocks the event loop.

Objects live under `<prefix>/images/<name>`. An image's URL lives `ttl_s` from its last put or
reissue; the sweeper deletes what is older than that (a reissue copies the object onto itself
through a temporary name, which moves its last-modified time to now)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store

from gateway.errors import StorageUnavailableError
from gateway.ids import RandomIds
from gateway.images.storage import sign_url, verify_url
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

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

log = logging.getLogger(__name__)

# obstore raises a missing object as FileNotFoundError (its NotFoundError where it can tell).
MISSING = (NotFoundError, FileNotFoundError)
# ...and a store it could not reach, or that refused, as one of its own errors or an OSError.
FAILED = (BaseError, OSError)

# A streamed put (an upstream's image copied as it downloads) buffers up to one part, S3's
# smallest: an image below it is sent in one PUT when its source is read to the end.
STREAM_PART_BYTES = 5 * 1024 * 1024
# The sweeper lists every object; it deletes in batches of this many (S3's DeleteObjects cap).
DELETE_BATCH = 1000


def open_s3(url: str, *, endpoint_url: str | None, region: str | None) -> S3Store:
    """The bucket of `s3://<bucket>/<prefix>`. Credentials the standard AWS way, as the store's
    client reads them: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), a web
    identity token (EKS), the ECS container role, or the EC2 instance role."""
    config: dict[str, Any] = {}
    if endpoint_url:
        config["endpoint"] = endpoint_url
        # MinIO and most S3-compatible servers take the bucket in the path, not the host name.
        config["virtual_hosted_style_request"] = False
    if region:
        config["region"] = region
    client: ClientConfig = {"connect_timeout": timedelta(seconds=3), "timeout": timedelta(seconds=60)}
    if endpoint_url and endpoint_url.startswith("http://"):
        client["allow_http"] = True
    # A store that is down is said to the caller (503) within seconds, not after minutes of retries.
    retry: RetryConfig = {"max_retries": 2, "retry_timeout": timedelta(seconds=10)}
    return S3Store.from_url(url, client_options=client, retry_config=retry, **config)


class S3ImageStore:
    def __init__(
        self,
        bucket: S3Store,
        public_url: str,
        signing_key: bytes,
        ttl_s: int,
        *,
        presigned: bool = False,
        on_error: OnStoreError | None = None,
    ) -> None:
        self._s3 = bucket
        self._on_error = on_error or (lambda operation, kind: None)
        self.public_url = public_url
        self._key = signing_key
        self.ttl_s = ttl_s
        self._presigned = presigned
        self._ids = RandomIds()

    def has_room(self, size: int = 0) -> bool:
        return True  # a bucket has no free space to watch; a refused write is a 503 of its own

    async def put(self, data: ImageBytes, content_type: str) -> StoredImage:
        name = self._new_name(content_type)
        key = _key(name)
        try:
            # One PUT, whole or not at all: no part of it is ever visible under its name.
            await obstore.put_async(self._s3, key, data, attributes={"Content-Type": content_type}, use_multipart=False)
        except FAILED as exc:
            raise self._unavailable("put", exc) from exc
        return StoredImage(name, key)

    async def put_stream(self, chunks: AsyncIterator[bytes], content_type: str) -> StoredImage:
        name = self._new_name(content_type)
        key = _key(name)
        writer = obstore.open_writer_async(
            self._s3, key, attributes={"Content-Type": content_type}, buffer_size=STREAM_PART_BYTES
        )
        try:
            async with writer:  # leaving it by an exception aborts the upload: nothing is written
                while True:
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:  # the source's failure, not the store's: raised as it is
                        raise _SourceError(exc) from exc
                    await writer.write(chunk)
        except _SourceError as failed:
            raise failed.error from None
        except FAILED as exc:
            raise self._unavailable("put_stream", exc) from exc
        return StoredImage(name, key)

    async def url(self, name: str) -> str:
        if not self._presigned:
            return sign_url(self.public_url, self._key, name, self.ttl_s)
        try:
            return await obstore.sign_async(self._s3, "GET", _key(name), timedelta(seconds=self.ttl_s))
        except FAILED as exc:
            raise self._unavailable("presign", exc) from exc

    async def reissue(self, name: str) -> str | None:
        if not is_image_name(name):
            return None
        key = _key(name)
        fresh = f"{key}.renew-{self._ids.urlsafe(6)}"
        try:
            # Server-side copies: no byte of the image passes through the gateway.
            await obstore.copy_async(self._s3, key, fresh)
            await obstore.rename_async(self._s3, fresh, key)
        except MISSING:
            return None
        except FAILED as exc:
            raise self._unavailable("reissue", exc) from exc
        return await self.url(name)

    async def take_back(self, name: str) -> bytes | None:
        if await self.reissue(name) is None:
            return None
        try:
            got = await obstore.get_async(self._s3, _key(name))
            return bytes(await got.bytes_async())
        except MISSING:
            return None
        except FAILED as exc:
            raise self._unavailable("get", exc) from exc

    def verify(self, name: str, expires: int, sig: str, now: float | None = None) -> bool:
        return verify_url(self._key, name, expires, sig, now)

    async def open(self, name: str) -> Download | None:
        if not is_image_name(name):
            return None
        try:
            got = await obstore.get_async(self._s3, _key(name))
        except MISSING:
            return None
        except FAILED as exc:
            raise self._unavailable("get", exc) from exc
        content_type = CONTENT_TYPES[name.rsplit(".", 1)[-1]]
        return Download(content_type, got.meta["size"], chunks=_chunks(got))

    async def discard(self, names: list[str]) -> None:
        keys = [_key(n) for n in names if is_image_name(n)]
        if not keys:
            return
        try:
            await obstore.delete_async(self._s3, keys)
        except FAILED as exc:
            self._on_error("delete", failure_kind(exc))
            log.warning("could not delete %d images of a failed request (the sweeper will): %s", len(keys), exc)

    async def sweep_expired(self, now: float | None = None) -> int:
        cutoff = (now if now is not None else time.time()) - self.ttl_s - 60
        expired: list[str] = []
        try:
            async for batch in obstore.list(self._s3, "images/", chunk_size=DELETE_BATCH):
                expired += [m["path"] for m in batch if m["last_modified"].timestamp() < cutoff]
            for start in range(0, len(expired), DELETE_BATCH):
                await obstore.delete_async(self._s3, expired[start : start + DELETE_BATCH])
        except FAILED as exc:
            self._on_error("sweep", failure_kind(exc))
            log.warning("image sweep of the object store failed: %s", exc)
        return len(expired)

    async def aclose(self) -> None:
        return None

    def _new_name(self, content_type: str) -> str:
        return f"{self._ids.urlsafe(18)}.{EXTENSIONS.get(content_type, 'bin')}"

    def _unavailable(self, operation: str, exc: BaseException) -> StorageUnavailableError:
        self._on_error(operation, failure_kind(exc))
        log.warning("the object store failed a %s: %s", operation, exc)
        return StorageUnavailableError()


class _SourceError(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _key(name: str) -> str:
    return "images/" + name


async def _chunks(got: obstore.GetResult) -> AsyncIterator[bytes]:
    async for chunk in got.stream(min_chunk_size=256 * 1024):
        yield bytes(chunk)
