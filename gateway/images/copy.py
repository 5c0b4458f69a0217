"""An upstream's image that came as a URL (fal's CDN) copied into the gateway's own store as it
downloads, a chunk at a time, so that every URL the gateway answers is its own: it expires when
the gateway says, and names no upstream.

Downloaded with aiohttp, as the fal adapter talks to fal: its C parser and stream reader cost less
than httpx's pure-Python h11 on a body of megabytes (the copy of a 2 MiB image was most of the
Python in a fal URL answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from gateway.errors import UpstreamError
from gateway.images.store import ImageStorage, StoredImage
from providers.base import sniff_content_type

CHUNK_BYTES = 256 * 1024
SNIFF_BYTES = 16  # enough of the start for sniff_content_type (WebP's is 12)


class UpstreamImageCopier:
    def __init__(self, client: aiohttp.ClientSession, store: ImageStorage, *, max_bytes: int) -> None:
        self._client = client  # one for every copy, built and closed by the lifespan
        self._store = store
        self._max_bytes = max_bytes

    async def copy(self, url: str) -> StoredImage:
        """The image at `url`, stored under a name of the gateway's. A download that fails, is
        not an image or is too large is the upstream's failure (502); the store's failure is its
        own (503). Either way nothing is left in the store."""
        try:
            async with self._client.get(url, allow_redirects=False) as reply:
                if reply.status != 200:
                    raise _failed(f"answered {reply.status}")
                declared = reply.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise _failed(f"is larger than {self._max_bytes} bytes")
                first = b""
                while len(first) < SNIFF_BYTES and (more := await reply.content.read(CHUNK_BYTES - len(first))):
                    first += more
                # Named by what it is (never by the declared type).
                sniffed = sniff_content_type(first)
                if sniffed is None:
                    raise _failed("is not a PNG, JPEG or WebP image")
                rest = reply.content.iter_chunked(CHUNK_BYTES)
                return await self._store.put_stream(self._limited(first, rest), sniffed)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failed(f"could not be downloaded ({type(exc).__name__})") from exc

    async def _limited(self, first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        size = len(first)
        yield first
        async for chunk in rest:
            size += len(chunk)
            if size > self._max_bytes:
                raise _failed(f"is larger than {self._max_bytes} bytes")
            yield chunk


def _failed(why: str) -> UpstreamError:
    return UpstreamError(f"The image provider's result {why}; please retry.")
