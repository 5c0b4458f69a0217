"""The provider registry builds each adapter from the gateway's settings, or none when its
upstream is not configured."""

from __future__ import annotations

from gateway.settings import Settings
from gateway.upstreams import default_registry
from providers.fal import FalProvider
from providers.local_gpu import LocalGpuProvider


async def test_local_gpu_needs_worker_urls() -> None:
    build = default_registry()["local_gpu"]
    assert build(Settings(local_gpu_urls=[])) is None
    provider = build(Settings(local_gpu_urls="http://gpu-1:8100/, http://gpu-2:8100"))  # type: ignore[arg-type]
    assert isinstance(provider, LocalGpuProvider)
    assert provider.name == "local_gpu"
    await provider.aclose()


async def test_fal_needs_a_key_and_takes_fals_own_variable(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    build = default_registry()["fal"]
    monkeypatch.delenv("FAL_KEY", raising=False)
    monkeypatch.delenv("GATEWAY_FAL_KEY", raising=False)
    assert build(Settings()) is None
    monkeypatch.setenv("FAL_KEY", "id:secret")
    provider = build(Settings())
    assert isinstance(provider, FalProvider)
    assert provider.name == "fal"
    await provider.aclose()
