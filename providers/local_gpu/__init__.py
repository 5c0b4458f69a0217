"""The adapter for the organisation's own HiDream workers (the service is in worker/)."""

from __future__ import annotations

from gateway.settings import Settings
from providers.local_gpu.adapter import LocalGpuProvider

__all__ = ["LocalGpuProvider", "build"]


def build(settings: Settings) -> LocalGpuProvider | None:
    """None when no worker URL is configured (GATEWAY_LOCAL_GPU_URLS)."""
    if not settings.local_gpu_urls:
        return None
    return LocalGpuProvider(settings.local_gpu_urls, connect_timeout_s=settings.upstream_connect_timeout_s)
