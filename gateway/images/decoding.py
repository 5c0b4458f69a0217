"""The full decode of an admitted edit's uploads, in a thread."""

from __future__ import annotations

import asyncio

from gateway.images.validation import ValidRequest, decode_fully


class UploadDecoder:
    async def check(self, valid: ValidRequest) -> None:
        """Decode every upload of an edit; a truncated or corrupt one is an InvalidRequestError
        naming it."""
        for image in valid.images:
            await asyncio.to_thread(decode_fully, image, "image")
        if valid.mask is not None:
            await asyncio.to_thread(decode_fully, valid.mask, "mask")
