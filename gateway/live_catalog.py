"""pricing.yaml while the gateway runs: every process watches the file (and looks at once on
SIGHUP, see gateway/app.py) and, when it changes, validates it exactly as at boot and swaps the
whole catalog in at once, so a request sees either the old prices or the new ones, never a mix.
A file that does not validate changes nothing: the old catalog stays, the log says why (file,
line, field) and `gateway_pricing_reloads{result="rejected"}` counts it.

A reload may change prices, sizes, ranges, aliases, routing policies and routes between the
providers the process started with. A route to a provider the process did not start with needs a
restart (building a provider means credentials, connection pools and probes), and is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Collection
from pathlib import Path

from gateway.catalog import Catalog, CatalogError, parse_catalog
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class LiveCatalog:
    def __init__(
        self,
        path: Path,
        catalog: Catalog,
        *,
        known_providers: Collection[str],
        metrics: Metrics | None = None,
        on_change: Callable[[Catalog], None] | None = None,
    ) -> None:
        self.current = catalog
        self.path = path
        self._checking = asyncio.Lock()  # the periodic check and a SIGHUP's, one at a time
        self._known = frozenset(known_providers)
        self._started_with = frozenset(catalog.providers())
        self._metrics = metrics
        self._on_change = on_change
        self._digest = _digest(path)

    async def check(self) -> bool:
        """Reloads the file if it changed since the last look; True when a new catalog is in use.

        The file is read and hashed each time (a few KB): a stat's mtime can miss an edit made in
        the same clock tick as the last look, and then would miss it for good."""
        async with self._checking:
            return await self._check()

    async def _check(self) -> bool:
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:  # mid-replacement, or removed: keep serving, look again next time
            log.warning("pricing file %s cannot be read (%s); keeping the catalog in use", self.path, exc)
            return False
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:  # touched, or rewritten with the same bytes
            return False
        self._digest = digest
        try:
            text = data.decode("utf-8", errors="replace")
            catalog = await asyncio.to_thread(parse_catalog, text, self.path, self._known)
            added = catalog.providers() - self._started_with
            if added:
                raise CatalogError(
                    f"{self.path}: routes to {', '.join(sorted(added))} need a restart "
                    f"(this process started with {', '.join(sorted(self._started_with)) or 'none'})"
                )
        except CatalogError as exc:
            log.error("pricing file rejected, the catalog in use is unchanged: %s", exc)
            self._count("rejected")
            return False
        self.current = catalog
        if self._on_change is not None:
            self._on_change(catalog)
        log.info("pricing file %s reloaded (sha256 %s)", self.path, digest[:12])
        self._count("loaded")
        return True

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.pricing_reloads.labels(result).inc()


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""
