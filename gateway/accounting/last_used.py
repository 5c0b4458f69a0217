"""When each API key was last used, without a Redis write per request: authentication notes the
time in a dict, and a background flush writes a key's latest use at most once per `interval_s` in
each process. So `last_used` is late by at most about the interval (a minute by default)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from importlib import resources

from gateway.periodic import repeat
from gateway.redis.client import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)


def key_record(key_id: str) -> str:
    return f"gw:keyid:{key_id}"


class LastUse:
    def __init__(
        self,
        redis: RedisClient,
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._wall = wall
        self._seen: dict[str, int] = {}  # key id -> unix seconds of its latest use not yet written
        self._written: dict[str, float] = {}  # key id -> when this process last wrote it (clock)
        text = resources.files("gateway.accounting").joinpath("scripts", "last_used.lua").read_text(encoding="utf-8")
        self._write = redis.register_script(text)

    def saw(self, key_id: str) -> None:
        """A request came with this key (the request path: no I/O)."""
        self._seen[key_id] = int(self._wall())

    async def flush(self) -> int:
        """Write the uses of keys this process has not written within the interval; the others
        wait for a later flush. Returns how many were written."""
        now = self._clock()
        due = [k for k in self._seen if now - self._written.get(k, float("-inf")) >= self._interval_s]
        written = 0
        for key_id in due:
            at = self._seen.pop(key_id)
            try:
                written += int(await self._write(keys=[key_record(key_id)], args=[at]))
            except REDIS_ERRORS:
                self._seen.setdefault(key_id, at)  # kept (unless a newer use came meanwhile) for the next flush
                log.warning("could not record keys' last use; trying again at the next flush")
                break
            self._written[key_id] = now
        # A write older than the interval no longer holds anything back.
        for key_id in [k for k, t in self._written.items() if now - t >= self._interval_s]:
            del self._written[key_id]
        return written

    async def flush_forever(self, every_s: float = 1.0) -> None:
        try:
            await repeat(self.flush, every_s, "keys' last-use flush")
        finally:
            # At shutdown: the uses noted since their last write, if the interval allows.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())
