"""Settlements that could not reach Redis wait here, one small JSON file each, until Redis is back.

The settlement script is idempotent per reservation, so a file replayed twice (two processes, or
a crash between settling and deleting) still charges once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from gateway.periodic import repeat

log = logging.getLogger(__name__)


class SettlementSpool:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, request_id: str, record: dict[str, Any]) -> Path:
        path = self.root / f"{request_id}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.root.glob("*.json"))

    async def drain(self, settle: Callable[[dict[str, Any]], Awaitable[bool]]) -> int:
        """Replay every pending settlement; `settle` returns False while Redis is still away."""
        done = 0
        for path in self.pending():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # another process drained it
            except json.JSONDecodeError:
                log.error("unreadable spooled settlement %s; moved aside", path.name)
                path.rename(path.with_suffix(".bad"))
                continue
            if not await settle(record):
                return done
            path.unlink(missing_ok=True)
            done += 1
        return done

    async def drain_forever(self, settle: Callable[[dict[str, Any]], Awaitable[bool]], every_s: float = 2.0) -> None:
        """Drain every `every_s` for the life of the app (gateway/periodic.py's loop: a failed round
        is logged, a cancel ends it even when the Redis client lost it)."""
        await repeat(partial(self._drain_and_tell, settle), every_s, "draining the settlement spool")

    async def _drain_and_tell(self, settle: Callable[[dict[str, Any]], Awaitable[bool]]) -> None:
        settled = await self.drain(settle)
        if settled:
            log.info("settled %d spooled requests", settled)


def to_record(**parts: Any) -> dict[str, Any]:
    return {name: asdict(value) if hasattr(value, "__dataclass_fields__") else value for name, value in parts.items()}
