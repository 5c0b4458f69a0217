"""The adapter for fal.ai's hosted HiDream models, over fal's queue API."""

from __future__ import annotations

from providers.fal.adapter import FalProvider

__all__ = ["FalProvider"]
