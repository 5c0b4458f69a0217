"""The provider registry: registry key (as used in pricing.yaml) -> factory.

Adding an upstream is one package under providers/ and one line here; no core module names a
provider. A factory returns None when its upstream is not configured (no key, no URLs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.settings import Settings
from providers.base import ImageProvider

ProviderFactory = Callable[[Settings], ImageProvider | None]


def default_registry() -> Mapping[str, ProviderFactory]:
    from providers import fal, local_gpu

    return {"fal": fal.build, "local_gpu": local_gpu.build}
