"""The worker's one settings class (environment prefix WORKER_); the CLI overrides fields by name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.variants import VARIANTS, Variant, VariantName


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore")

    variant: VariantName = "full"
    # Tiny mode: a small random-weight HiDream pipeline built offline (no weights, CPU is fine).
    # It runs the real diffusers code path but its pictures are noise, resized to the requested size.
    tiny: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=1, le=65535)

    # Real mode: a local snapshot of HiDream-ai/HiDream-I1-<Variant>; see worker/loading.py for the layout.
    weights_dir: Path | None = None
    # The Llama-3.1-8B-Instruct encoder (not in the HiDream repos). Unset: looked up next to the weights.
    llama_dir: Path | None = None
    # "cpu", "cuda" or "cuda:N". Unset: cuda for real weights, cpu in tiny mode.
    device: str | None = Field(default=None, pattern=r"^(cpu|cuda(:\d+)?)$")

    # Waiting jobs beyond the one running; a full queue answers 429 with Retry-After.
    max_queue: int = Field(default=4, ge=0, le=1000)
    max_n: int = Field(default=4, ge=1, le=16)
    max_steps: int = Field(default=50, ge=1, le=1000)
    max_prompt_chars: int = Field(default=4000, ge=1)
    # Warm-up generation before /ready turns 200 (steps unset: the variant's default).
    warmup: bool = True
    warmup_steps: int | None = Field(default=None, ge=1)
    # Retry-After while loading/warming, in seconds (loading real weights takes minutes).
    not_ready_retry_after_s: int = Field(default=10, ge=1)
    # Tiny mode's latent side (HiDream's default_sample_size); 32 keeps a CPU generation near 1 s.
    tiny_sample_size: int = Field(default=32, ge=8, le=128)
    # zlib level for the PNGs: 1 encodes a 1 MP picture ~4x faster than PIL's default 6 for ~25 %
    # more bytes, a good trade on the LAN between worker and gateway.
    png_compress_level: int = Field(default=1, ge=0, le=9)
    # Seconds uvicorn waits for running requests on shutdown.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("weights_dir", "llama_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]

    @property
    def resolved_device(self) -> str:
        if self.device is not None:
            return self.device
        return "cpu" if self.tiny else "cuda"

    @property
    def steps_for_warmup(self) -> int:
        return self.warmup_steps or self.spec.default_steps
