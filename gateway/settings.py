"""The one settings class. Nothing else in the gateway or the provider adapters reads os.environ."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", populate_by_name=True)

    # Unset: the gateway starts its own redis-server under data_dir (the embedded default).
    redis_url: str | None = None
    admin_key: str | None = None
    # Bearer token for /metrics (every team's budget, spend and provider cost) and /ready's detail.
    # Unset: /metrics is closed (`gateway serve` makes one once, as it does the admin key).
    metrics_token: str | None = None
    # Failed attempts at the admin key or metrics token per client address (an IPv6 /64) and
    # window, past which the address gets 429 until the window ends (gateway/api/throttle.py).
    auth_failure_limit: int = Field(default=10, ge=1)
    auth_failure_window_s: int = Field(default=60, ge=1)
    # fal's own FAL_KEY is accepted as well as GATEWAY_FAL_KEY.
    fal_key: str | None = Field(default=None, validation_alias=AliasChoices("GATEWAY_FAL_KEY", "FAL_KEY"))
    fal_queue_url: str = "https://queue.fal.run"
    local_gpu_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    public_url: str = "http://127.0.0.1:8000"
    pricing_file: Path = Path("pricing.yaml")
    # How often each process looks for a changed pricing file (0: never; changes need a restart).
    pricing_reload_s: float = Field(default=5.0, ge=0)
    data_dir: Path = Path("data")

    # Signed image URLs: lifetime, and the HMAC key (unset: one is made once and kept in Redis,
    # so every replica signs alike).
    image_url_ttl_s: int = 3600
    # Answers by URL are refused with 503 storage_full (before admission: nothing charged) while the
    # disk holding the images has less than this free; b64_json answers are still served.
    image_store_min_free_bytes: int = Field(default=512 * 1024 * 1024, ge=0)
    url_signing_key: str | None = None
    # Where images are kept: unset or file://<dir> = a local directory (the embedded default,
    # <data_dir>/images); s3://<bucket>/<prefix> = an S3-compatible object store, reached at
    # s3_endpoint_url (MinIO, R2, a test server; unset: AWS) with credentials the standard AWS way.
    image_store: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # The ledger archive (gateway/accounting/archiver.py): closed UTC days of each team's ledger move
    # from Redis to a store, checked, then trimmed from the stream. Unset = where the images go
    # (under `ledger/` in image_store's directory or bucket prefix; <data_dir>/ledger when image_store
    # is unset); file://<dir> or s3://<bucket>/<prefix> to put it elsewhere. Each process looks for
    # closed days every ledger_archive_interval_s (0: never, the ledger stays in Redis); a day is
    # closed ledger_archive_grace_s after its end by Redis's clock.
    ledger_archive: str | None = None
    ledger_archive_interval_s: float = Field(default=3600.0, ge=0)
    ledger_archive_grace_s: float = Field(default=3600.0, ge=0)
    # The URL answered for an image: "gateway" = signed by the gateway and served by any replica
    # from the store; "presigned" = the object store's own presigned GET (downloads bypass the gateway).
    image_urls: Literal["gateway", "presigned"] = "gateway"
    # An upstream image that came as a URL (fal's CDN): "copy" = into the store, answered with the
    # gateway's own URL; "pass" = its URL handed to the caller as it came (no copy, but it names the
    # upstream and lives as long as the upstream keeps it, not image_url_ttl_s).
    upstream_image_urls: Literal["copy", "pass"] = "copy"
    # The largest upstream image the copy takes (a larger one fails the request, 502).
    upstream_image_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)

    # Uploads (edits): bytes per image and decoded pixels per image (decompression-bomb guard).
    max_upload_bytes: int = 20 * 1024 * 1024
    max_upload_pixels: int = 40_000_000
    # Memory the full decodes of admitted edits' uploads may hold at once in one process; past it
    # they wait their turn. Estimated from each header: 4 bytes a pixel (12 for WebP), so 256 MiB
    # is one 40 MP PNG or JPEG beside smaller ones; an image larger than all of it decodes alone.
    # The decodes run on this many threads of their own (each keeps the memory it freed for reuse).
    upload_decode_budget_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    upload_decode_threads: int = Field(default=2, ge=1)
    # Freed memory each worker process's heap keeps for reuse rather than handing back to the
    # kernel, which the next answer then faults in afresh (gateway/heap.py); 0: glibc's defaults.
    malloc_keep_free_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # glibc arenas per worker process while freed memory is kept (1: the threads allocate from the
    # main arena too, the only one whose kept top the periodic trim can hand back; 0: glibc's
    # default of 8 per core, each thread's arena keeping up to MALLOC_KEEP_FREE_BYTES for good).
    malloc_arena_max: int = Field(default=1, ge=0)

    # Time a request may take end to end, across fallbacks, and per-upstream connect timeout.
    request_deadline_s: float = 300.0
    upstream_connect_timeout_s: float = 5.0
    # A streamed answer (stream=true) sends an SSE comment this often while it waits for the
    # upstream, so that proxies do not close a connection that looks idle (nginx's proxy_read_timeout
    # and most load balancers' idle timeouts are 60 s). Its first byte is the first of these.
    stream_keepalive_s: float = Field(default=10.0, gt=0)
    # fal status polling: first interval, growth factor and cap (seconds).
    fal_poll_initial_s: float = 0.25
    fal_poll_factor: float = 1.5
    fal_poll_max_s: float = 2.0

    # Default per-team limits, used when a team is created without them.
    default_requests_per_minute: int = 60
    default_images_per_minute: int = 120
    default_max_in_flight: int = 8
    default_monthly_budget_usd: float = 100.0

    # How often each process probes every route (a worker's /ready, fal's reachability).
    probe_interval_s: float = 2.0
    # How long an open circuit breaker waits before it lets a trial request through.
    breaker_cooldown_s: float = 10.0
    # How often each process copies team budgets and month-to-date spend from Redis into gauges.
    billing_metrics_interval_s: float = 15.0

    # Redis connections per gateway process, and how long a cached API key is trusted before it is
    # read again (revocations reach every process at once through pub/sub; this bounds a missed one).
    redis_max_connections: int = Field(default=64, ge=2)
    key_cache_ttl_s: float = Field(default=30.0, ge=0)
    # A key's `last_used` is written at most this often per process (gateway/accounting/last_used.py):
    # the request path writes nothing, so it may be late by about this much.
    key_last_used_s: float = Field(default=60.0, ge=0)
    # How often each process hands the C heap's free pages back to the system (glibc malloc_trim,
    # gateway/heap.py; 0: never): without it RSS crept up under steady load, with no object leaking.
    heap_trim_s: float = Field(default=60.0, ge=0)
    # `gateway serve`'s workers set aside the objects built at startup from Python's cycle collector
    # (gateway/collector.py): without it a full collection stopped the event loop ~80 ms under load.
    gc_freeze_startup: bool = True

    # Load shedding per worker process (gateway/api/shedding.py): image requests in flight at most, and
    # the event-loop lag past which new image requests get 503 + retry-after (0 turns that off).
    # Generations take seconds, so a burst that delays admission by a second or two is absorbed:
    # at 0.2 s a burst of 5,000 was mostly shed; at 2 s one process took and held all of them.
    max_in_flight_per_process: int = Field(default=10_000, ge=1)
    shed_loop_lag_s: float = Field(default=2.0, ge=0)
    # ...and the connections waiting to be accepted past which new image requests are refused
    # (0 turns that off). A held burst of 5,000 peaked at 342; a sustained 2x overload at 3,700
    # (the kernel's cap, net.core.somaxconn, is 4,096 here). At 1,024, 19 % of a 1x load was shed.
    shed_accept_queue: int = Field(default=2048, ge=0)

    # What a caller may send before the app sees its request (enforced by the HTTP protocol,
    # gateway/api/server.py, for every route, before authentication):
    # - the request line and headers: at most `max_header_bytes` bytes and `max_header_fields`
    #   fields (431 past either), sent within `header_timeout_s` seconds of the connection's start
    #   or of the request's first byte (408; a connection that sends nothing is closed quietly);
    # - the body: no pause between reads longer than `body_timeout_s` seconds, and at any moment
    #   at least `body_min_rate_bytes_s` bytes a second since the headers, less `body_timeout_s`
    #   seconds' grace (408 otherwise; 0 turns the minimum rate off). A pause plus a floor on the
    #   rate, as Apache's mod_reqtimeout does: a body trickled a byte at a time never pauses for
    #   long, so a pause alone would not end it. At 1 KiB/s a 40 MiB upload may take 11 hours.
    # Waits that are the gateway's own (the app not yet reading the body, an earlier pipelined
    # request still being answered, a client waiting for "100 Continue") do not count.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_header_fields: int = Field(default=100, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    body_min_rate_bytes_s: float = Field(default=1024.0, ge=0)

    # Async jobs (Prefer: respond-async; gateway/jobs/). A job's reservation holds `job_hold_s` (it
    # counts as in flight, queued or running, and must be settled within it); each process runs up
    # to `job_concurrency` jobs, looks for new ones every `job_poll_s`, and holds a job by a lease of
    # `job_lease_s`, renewed while it runs: a process that dies loses its jobs to another that long
    # after. A finished job is kept `job_keep_s`.
    job_hold_s: float = Field(default=3600.0, gt=0)
    job_concurrency: int = Field(default=16, ge=0)
    job_poll_s: float = Field(default=0.5, gt=0)
    job_lease_s: float = Field(default=15.0, gt=0)
    job_keep_s: float = Field(default=86400.0, gt=0)
    # A job leased this many times without finishing (each process serving it died, or its runner
    # failed) is failed on the next lease, uncharged, instead of being taken over forever.
    job_max_attempts: int = Field(default=5, ge=1)
    # Webhooks: refused to any address that is not public (loopback, private, link-local, ...) unless
    # inside one of these comma-separated CIDR ranges; https only, unless plain http is allowed.
    # A failed delivery is tried again after webhook_backoff_s, then twice as long each time, up to
    # webhook_attempts attempts in all; each attempt may take webhook_timeout_s.
    webhook_allow_cidrs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_allow_http: bool = False
    webhook_attempts: int = Field(default=8, ge=1, le=30)
    webhook_backoff_s: float = Field(default=5.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    log_level: str = "info"
    # Set by `gateway serve` for several worker processes (prometheus-client's multiprocess mode).
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "GATEWAY_PROMETHEUS_MULTIPROC_DIR")
    )

    @field_validator("local_gpu_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        return value

    @field_validator("webhook_allow_cidrs", mode="before")
    @classmethod
    def _split_cidrs(cls, value: object) -> object:
        if isinstance(value, str):
            value = [c.strip() for c in value.split(",") if c.strip()]
        if isinstance(value, list):
            for cidr in value:
                ipaddress.ip_network(str(cidr), strict=False)  # a bad range stops the boot, naming it
        return value

    @field_validator("fal_queue_url", "public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")
