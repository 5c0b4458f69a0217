"""create_app(settings) and the lifespan that builds everything a request needs: the catalog,
Redis (embedded when no URL is set), the provider adapters, storage and metrics."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial

import aiohttp
from fastapi import FastAPI

from gateway.accounting.archiver import LedgerArchiver
from gateway.accounting.billing_metrics import BillingMetrics
from gateway.accounting.keys import KeyStore
from gateway.accounting.last_used import LastUse
from gateway.accounting.ledger_archive import LedgerArchive
from gateway.accounting.metering import Meter
from gateway.accounting.spool import SettlementSpool
from gateway.api import admin, errors, health, images, jobs, models, route_board, team, usage
from gateway.api.hot import GatewayApp
from gateway.api.shedding import AcceptQueue, LoadShedder
from gateway.api.state import AppState
from gateway.api.throttle import SecretThrottle
from gateway.catalog import load_catalog
from gateway.collector import PauseWatch, freeze_startup_objects
from gateway.heap import HeapTrimmer, keep_freed_memory
from gateway.images.copy import UpstreamImageCopier
from gateway.images.decoding import UploadDecoder
from gateway.images.store import ImageStorage, OnStoreError
from gateway.images.stores import open_archive_blobs, open_image_store
from gateway.jobs.setup import job_runner, job_service
from gateway.live_catalog import LiveCatalog
from gateway.metrics import Metrics
from gateway.periodic import start_repeating
from gateway.redis.client import RedisClient, connect
from gateway.redis.embedded import EmbeddedRedis
from gateway.redis.scripts import script_client_for
from gateway.routing.breaker import BreakerConfig, RouteHealth
from gateway.routing.dispatch import Dispatcher
from gateway.routing.health import HealthBoard
from gateway.routing.router import Router
from gateway.service import ImageService
from gateway.settings import Settings
from gateway.upstreams import ProviderFactory, default_registry
from gateway.web.pages import web_router
from providers.base import ImageProvider, PassesThrough

log = logging.getLogger("gateway")

SIGNING_KEY = "gw:config:url_signing_key"


def build_providers(
    settings: Settings, registry: Mapping[str, ProviderFactory], wanted: set[str]
) -> dict[str, ImageProvider]:
    providers: dict[str, ImageProvider] = {}
    for name in sorted(wanted):
        provider = registry[name](settings)
        if provider is None:
            log.info("provider %s is not configured; its routes are skipped", name)
        else:
            providers[name] = provider
    return providers


async def _signing_key(redis: RedisClient, settings: Settings) -> bytes:
    if settings.url_signing_key:
        return settings.url_signing_key.encode()
    # Made once and shared through Redis, so every replica signs and verifies alike.
    await redis.set(SIGNING_KEY, secrets.token_hex(32), nx=True)
    value = await redis.get(SIGNING_KEY)
    assert value is not None
    return value.encode() if isinstance(value, str) else bytes(value)


async def _sweep_images(store: ImageStorage) -> None:
    removed = await store.sweep_expired()
    if removed:
        log.info("removed %d expired images", removed)


def _store_errors(metrics: Metrics, store: str) -> OnStoreError:
    return lambda operation, kind: metrics.store_errors.labels(store, operation, kind).inc()


def create_app(
    settings: Settings | None = None,
    registry: Mapping[str, ProviderFactory] | None = None,
    *,
    reload_on_sighup: bool = False,
    freeze_startup: bool = False,
) -> FastAPI:
    """`reload_on_sighup`: SIGHUP makes this process look at pricing.yaml now; `freeze_startup`:
    the objects built at startup are set aside from the cycle collector (gateway/collector.py).
    Both for a process the app owns (`gateway serve`); off for apps that share a process with
    others, as tests do."""
    settings = settings or Settings()
    registry = registry or default_registry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog = load_catalog(settings.pricing_file, registry.keys())
        embedded: EmbeddedRedis | None = None
        url = settings.redis_url
        if url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            embedded.start()
            url = embedded.url
        redis = connect(url, settings.redis_max_connections)
        scripts = script_client_for(url)
        providers = build_providers(settings, registry, catalog.providers())
        # Upstream images that came as URLs are copied into the store through this client.
        downloads = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(sock_connect=settings.upstream_connect_timeout_s, sock_read=60.0),
            connector=aiohttp.TCPConnector(limit=64),
        )
        try:
            metrics = Metrics(settings.prometheus_multiproc_dir)
            store = open_image_store(settings, await _signing_key(redis, settings), _store_errors(metrics, "images"))
            copier = (
                None
                if settings.upstream_image_urls == "pass"
                else UpstreamImageCopier(downloads, store, max_bytes=settings.upstream_image_max_bytes)
            )
            archive = LedgerArchive(open_archive_blobs(settings, _store_errors(metrics, "ledger_archive")))
            spool = SettlementSpool(settings.data_dir / "spool")
            meter = Meter(
                redis, spool=spool, scripts=scripts,
                on_redis_error=lambda op: metrics.redis_errors.labels(op).inc(),
            )  # fmt: skip
            route_health = RouteHealth(redis, BreakerConfig(cooldown_s=settings.breaker_cooldown_s), scripts=scripts)
            board = HealthBoard(
                catalog, providers, metrics=metrics, route_health=route_health, interval_s=settings.probe_interval_s
            )
            dispatcher = Dispatcher(providers, Router(route_health), route_health, board, metrics)
            decoder = UploadDecoder(
                settings.upload_decode_budget_bytes, metrics.decodes_waiting, threads=settings.upload_decode_threads
            )
            service = ImageService(
                dispatcher, meter, store, metrics, decoder, deadline_s=settings.request_deadline_s, copier=copier
            )
            last_use = LastUse(redis, interval_s=settings.key_last_used_s)
            keys = KeyStore(redis, cache_ttl_s=settings.key_cache_ttl_s, last_use=last_use)
            accept_queue = AcceptQueue()
            shedder = LoadShedder(
                max_in_flight=settings.max_in_flight_per_process,
                max_lag_s=settings.shed_loop_lag_s,
                max_accept_queue=settings.shed_accept_queue,
                accept_queue=accept_queue,
                on_shed=lambda reason: metrics.shed.labels(reason).inc(),
            )
            catalogs = LiveCatalog(
                settings.pricing_file, catalog, known_providers=registry.keys(), metrics=metrics, on_change=board.use
            )
            job_parts = job_service(settings, redis, service, meter, store)
            app.state.gateway = AppState(
                settings=settings,
                catalogs=catalogs,
                redis=redis,
                keys=keys,
                store=store,
                metrics=metrics,
                service=service,
                health=board,
                shedder=shedder,
                secrets_throttle=SecretThrottle(
                    redis, max_failures=settings.auth_failure_limit, window_s=settings.auth_failure_window_s
                ),
                owned_params=frozenset().union(
                    *(p.owned_params for p in providers.values() if isinstance(p, PassesThrough))
                ),
                jobs=job_parts.service,
                archive=archive,
            )
            runner = job_runner(settings, job_parts, service, meter, lambda: catalogs.current, store)
            billing = BillingMetrics(redis, metrics, interval_s=settings.billing_metrics_interval_s)
            background = [
                start_repeating(partial(_sweep_images, store), 300.0, "image sweep"),
                asyncio.create_task(spool.drain_forever(meter.settle_spooled), name="settlement spool"),
                asyncio.create_task(board.run_forever(), name="route probes"),
                asyncio.create_task(billing.run_forever(), name="budget metrics"),
                asyncio.create_task(keys.follow_revocations(), name="key revocation feed"),
                asyncio.create_task(last_use.flush_forever(), name="keys' last use"),
                asyncio.create_task(route_health.flush_forever(), name="route health flush"),
                asyncio.create_task(shedder.watch_loop(), name="loop lag watch"),
                asyncio.create_task(runner.run_forever(), name="job runner"),
            ]
            if settings.ledger_archive_interval_s > 0:
                archiver = LedgerArchiver(redis, archive, metrics, grace_s=settings.ledger_archive_grace_s)
                every_s = settings.ledger_archive_interval_s
                background.append(start_repeating(archiver.run_once, every_s, "ledger archive"))
            trimmer = HeapTrimmer()
            if settings.heap_trim_s > 0 and trimmer.available:
                background.append(start_repeating(trimmer.trim, settings.heap_trim_s, "heap trim"))
            if settings.pricing_reload_s > 0:
                background.append(start_repeating(catalogs.check, settings.pricing_reload_s, "pricing file check"))
            loop = asyncio.get_running_loop()
            if reload_on_sighup:
                loop.add_signal_handler(signal.SIGHUP, partial(_reload_on_signal, catalogs, background))
            if freeze_startup:
                log.info("%d objects set aside from the cycle collector", freeze_startup_objects())
            pauses = PauseWatch(metrics.gc_pause)
            pauses.start()
            background.append(start_repeating(pauses.drain, 1.0, "collector pauses"))
            try:
                yield
            finally:
                pauses.stop()
                if reload_on_sighup:
                    loop.remove_signal_handler(signal.SIGHUP)
                for task in background:
                    task.cancel()
                # Let them finish (the last flush of route health, closing the revocation feed)
                # while Redis is still open, but never hold up shutdown for long. One still running
                # then is a bug (asyncio.run would wait for it for ever): named in the log.
                _, running = await asyncio.wait(background, timeout=5)
                for task in running:
                    log.error("background task %r did not stop within 5 s of shutdown", task.get_name())
                await job_parts.sender.aclose()
                accept_queue.close()
                decoder.close()
                await store.aclose()
        finally:
            await downloads.close()
            for provider in providers.values():
                await provider.aclose()
            await redis.aclose()
            if scripts is not None:
                await scripts.aclose()
            if embedded is not None:
                embedded.stop()

    # No trailing-slash redirects: Starlette builds their Location from the Host header the caller sent.
    app = GatewayApp(
        title="Image gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
        redirect_slashes=False,
    )  # fmt: skip
    routers = (
        images.router, jobs.router, models.router, usage.router, admin.router, jobs.admin_router, health.router,
        team.router, route_board.router, web_router(),
    )  # fmt: skip
    errors.install(app, [route for router in routers for route in router.routes])
    for router in routers:
        app.include_router(router)
    return app


def _reload_on_signal(catalogs: LiveCatalog, background: list[asyncio.Task[None]]) -> None:
    """SIGHUP: pricing.yaml is looked at now, as the periodic check does (and with it in turn)."""
    log.info("SIGHUP: checking the pricing file %s", catalogs.path)
    task: asyncio.Task[None] = asyncio.ensure_future(_check(catalogs))
    background.append(task)  # kept (a task only weakly held may vanish) and cancelled at shutdown


async def _check(catalogs: LiveCatalog) -> None:
    await catalogs.check()


def app_from_env() -> FastAPI:
    """The uvicorn factory for `gateway serve` (every worker process builds its own app)."""
    # Until the app's lifespan takes SIGHUP over (a pricing reload), one that comes while this
    # process starts is ignored: by default it would end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = Settings()
    # Before the app allocates anything large, and before it starts a thread.
    keep_freed_memory(settings.malloc_keep_free_bytes, settings.malloc_arena_max)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every upstream call (probes every few seconds) at INFO; keep that for debugging.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    return create_app(settings, reload_on_sighup=True, freeze_startup=settings.gc_freeze_startup)
