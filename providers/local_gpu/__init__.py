"""The adapter for the organisation's own HiDream workers (the service is in worker/)."""

from __future__ import annotations

from providers.local_gpu.adapter import LocalGpuProvider

__all__ = ["LocalGpuProvider"]
