"""The jobs machinery as the lifespan builds it from the settings (gateway/app.py)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from gateway.accounting.metering import Meter
from gateway.catalog import Catalog
from gateway.images.store import ImageStorage
from gateway.jobs.runner import JobRunner, RunnerConfig
from gateway.jobs.service import JobService
from gateway.jobs.ssrf import TargetPolicy
from gateway.jobs.store import JobStore
from gateway.jobs.webhooks import TeamWebhooks, WebhookSender
from gateway.redis.client import RedisClient
from gateway.service import ImageService
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class JobParts:
    store: JobStore
    webhooks: TeamWebhooks
    sender: WebhookSender
    service: JobService


def job_service(
    settings: Settings, redis: RedisClient, service: ImageService, meter: Meter, store: ImageStorage
) -> JobParts:
    policy = TargetPolicy.parse(settings.webhook_allow_cidrs, allow_http=settings.webhook_allow_http)
    jobs = JobStore(redis, keep_s=settings.job_keep_s)
    webhooks = TeamWebhooks(redis)
    sender = WebhookSender(policy, timeout_s=settings.webhook_timeout_s)
    front = JobService(
        jobs, service, meter, store, webhooks, policy, hold_s=settings.job_hold_s, public_url=settings.public_url
    )
    return JobParts(jobs, webhooks, sender, front)


def job_runner(
    settings: Settings,
    parts: JobParts,
    service: ImageService,
    meter: Meter,
    catalog: Callable[[], Catalog],
    store: ImageStorage,
) -> JobRunner:
    config = RunnerConfig(
        owner=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}",
        concurrency=settings.job_concurrency,
        lease_s=settings.job_lease_s,
        poll_s=settings.job_poll_s,
        hold_s=settings.job_hold_s,
        public_url=settings.public_url,
        webhook_attempts=settings.webhook_attempts,
        webhook_backoff_s=settings.webhook_backoff_s,
        max_attempts=settings.job_max_attempts,
    )
    return JobRunner(parts.store, service, meter, catalog, store, parts.webhooks, parts.sender, config)
