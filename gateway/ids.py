"""Random identifiers without a system call each: os.urandom read in blocks and sliced.

Request ids and image names are made on every request; on small VMs a getrandom() call costs
more than the rest of making an id. The bytes are the same cryptographic quality as secrets'.
"""

from __future__ import annotations

import base64
import os


class RandomIds:
    def __init__(self, block: int = 4096) -> None:
        self._block = block
        self._buf = b""
        self._pos = 0

    def bytes(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf = os.urandom(max(self._block, n))
            self._pos = 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def hex(self, n: int) -> str:
        return self.bytes(n).hex()

    def urlsafe(self, n: int) -> str:
        return base64.urlsafe_b64encode(self.bytes(n)).rstrip(b"=").decode("ascii")


def request_id(ids: RandomIds) -> str:
    """The id every response carries in x-request-id."""
    return "req_" + ids.hex(16)
