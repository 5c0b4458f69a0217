"""What the lifespan builds and every route handler reads: one object on app.state."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.accounting.keys import KeyStore
from gateway.accounting.ledger_archive import LedgerArchive
from gateway.api.shedding import LoadShedder
from gateway.api.throttle import SecretThrottle
from gateway.catalog import Catalog
from gateway.images.store import ImageStorage
from gateway.jobs.service import JobService
from gateway.live_catalog import LiveCatalog
from gateway.metrics import Metrics
from gateway.redis.client import RedisClient
from gateway.routing.health import HealthBoard
from gateway.service import ImageService
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    catalogs: LiveCatalog
    redis: RedisClient
    keys: KeyStore
    store: ImageStorage
    metrics: Metrics
    service: ImageService
    health: HealthBoard
    shedder: LoadShedder
    secrets_throttle: SecretThrottle
    # Fields the configured adapters set themselves: no caller may pass them through.
    owned_params: frozenset[str] = frozenset()
    jobs: JobService | None = None  # async jobs (Prefer: respond-async)
    archive: LedgerArchive | None = None  # closed days of the ledger, moved out of Redis

    @property
    def catalog(self) -> Catalog:
        """The catalog in use now (pricing.yaml as last loaded): read it once per request."""
        return self.catalogs.current
