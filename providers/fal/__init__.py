"""The adapter for fal.ai's hosted HiDream models, over fal's queue API."""

from __future__ import annotations

from gateway.settings import Settings
from providers.fal.adapter import FalProvider

__all__ = ["FalProvider", "build"]


def build(settings: Settings) -> FalProvider | None:
    """None when no fal key is configured (GATEWAY_FAL_KEY or FAL_KEY)."""
    if not settings.fal_key:
        return None
    return FalProvider(
        settings.fal_key,
        queue_url=settings.fal_queue_url,
        poll_initial_s=settings.fal_poll_initial_s,
        poll_factor=settings.fal_poll_factor,
        poll_max_s=settings.fal_poll_max_s,
        connect_timeout_s=settings.upstream_connect_timeout_s,
    )
