"""The provider registry: the key a provider has in pricing.yaml -> how the gateway builds it from
its settings. Providers take plain arguments and know nothing of the gateway; this is the one place
that names them, so a new upstream is one package under providers/ and one entry here.
A factory returns None when its upstream is not configured (no key, no URLs)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.settings import Settings
from providers.base import ImageProvider
from providers.fal import FalProvider
from providers.local_gpu import LocalGpuProvider

ProviderFactory = Callable[[Settings], ImageProvider | None]


def _fal(settings: Settings) -> FalProvider | None:
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


def _local_gpu(settings: Settings) -> LocalGpuProvider | None:
    """None when no worker URL is configured (GATEWAY_LOCAL_GPU_URLS)."""
    if not settings.local_gpu_urls:
        return None
    return LocalGpuProvider(settings.local_gpu_urls, connect_timeout_s=settings.upstream_connect_timeout_s)


def default_registry() -> Mapping[str, ProviderFactory]:
    return {"fal": _fal, "local_gpu": _local_gpu}
