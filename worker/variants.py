"""The three HiDream-I1 variants a worker can serve, with the official defaults (steps, guidance,
sampler and shift from HiDream-ai/HiDream-I1 inference.py) and the sizes a worker returns exactly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

VariantName = Literal["full", "dev", "fast"]
SamplerName = Literal["flow_unipc", "flow_lcm"]

# HiDream's native ~1 MP buckets (the official demo's list). The pipeline rescales any W x H to
# ~1024^2 area, floored to multiples of 16; these seven map to themselves, so a worker accepting
# only them always returns exactly the requested size.
SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (768, 1360),
    (1360, 768),
    (880, 1168),
    (1168, 880),
    (1248, 832),
    (832, 1248),
)
DEFAULT_SIZE = (1024, 1024)


@dataclass(frozen=True, slots=True)
class Variant:
    name: VariantName
    model_id: str  # the public id the gateway routes by (pricing.yaml upstream_model)
    hub_repo: str  # where the weights come from, for messages and /v1/models
    default_steps: int
    default_guidance: float
    # Full runs real classifier-free guidance; Dev and Fast are guidance-distilled, so anything
    # above 1.0 (where diffusers switches CFG on) would run a mode the model was not trained for.
    max_guidance: float
    # HiDream's FlowUniPCMultistep is diffusers' UniPCMultistepScheduler with flow sigmas; its
    # FlashFlowMatchEuler is diffusers' FlowMatchLCMScheduler (the HF repos' scheduler update).
    sampler: SamplerName
    shift: float

    @property
    def uses_cfg_by_default(self) -> bool:
        return self.default_guidance > 1.0


VARIANTS: Mapping[VariantName, Variant] = MappingProxyType(
    {
        "full": Variant("full", "hidream-i1-full", "HiDream-ai/HiDream-I1-Full", 50, 5.0, 20.0, "flow_unipc", 3.0),
        "dev": Variant("dev", "hidream-i1-dev", "HiDream-ai/HiDream-I1-Dev", 28, 0.0, 1.0, "flow_lcm", 6.0),
        "fast": Variant("fast", "hidream-i1-fast", "HiDream-ai/HiDream-I1-Fast", 16, 0.0, 1.0, "flow_lcm", 3.0),
    }
)


def native_size(width: int, height: int, sample_px: int = 1024, multiple: int = 16) -> tuple[int, int]:
    """The size HiDreamImagePipeline really produces for a requested W x H (its ~1 MP rescale)."""
    scale = (sample_px * sample_px / (width * height)) ** 0.5
    return int(width * scale // multiple * multiple), int(height * scale // multiple * multiple)
