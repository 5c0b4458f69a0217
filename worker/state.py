"""The worker's lifecycle (loading -> warming -> ready, or failed; draining on shutdown) and the
load report that /ready serves to routers."""

from __future__ import annotations

import os
import sys
import time
from typing import Literal

from worker import __version__
from worker.errors import NotReadyError
from worker.jobs import JobQueue
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings
from worker.variants import SIZES, native_size

Phase = Literal["loading", "warming", "ready", "failed"]


class WorkerState:
    def __init__(self, settings: WorkerSettings, queue: JobQueue) -> None:
        self.settings = settings
        self.queue = queue
        self.metrics = WorkerMetrics(
            running=lambda: float(queue.in_flight),
            waiting=lambda: float(queue.waiting),
            loaded=lambda: 1.0 if self.ready else 0.0,
        )
        self.phase: Phase = "loading"
        self.loaded_at: float | None = None  # unix time
        self.load_seconds: float | None = None
        self.warm = False
        self.error: str | None = None
        # Set on shutdown: finish what is admitted, take nothing new, tell routers via /ready.
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and not self.draining

    def mark_loaded(self, load_seconds: float) -> None:
        self.loaded_at = time.time()
        self.load_seconds = load_seconds
        self.phase = "warming"

    def mark_ready(self) -> None:
        self.warm = self.settings.warmup
        self.phase = "ready"

    def mark_failed(self, reason: str) -> None:
        self.phase = "failed"
        self.error = reason

    def ensure_ready(self) -> None:
        if self.ready:
            return
        if self.phase == "failed":
            raise NotReadyError(
                f"The worker has failed ({self.error}) and waits for a restart.",
                retry_after_s=self.settings.not_ready_retry_after_s,
                code="worker_failed",
            )
        what = "shutting down" if self.draining else f"{self.phase} {self.settings.spec.model_id}"
        raise NotReadyError(f"The worker is {what}.", retry_after_s=self.settings.not_ready_retry_after_s)

    def report(self) -> dict[str, object]:
        s = self.settings
        variant = s.spec
        ewma = self.queue.ewma_latency_s
        body: dict[str, object] = {
            "model": variant.model_id,
            "variant": variant.name,
            "ready": self.ready,
            "warm": self.warm,
            "phase": "draining" if self.draining and self.phase == "ready" else self.phase,
            "loaded_at": self.loaded_at,
            "load_seconds": _round(self.load_seconds),
            "in_flight": self.queue.in_flight,
            "queue_depth": self.queue.waiting,
            "max_queue": self.queue.max_queue,
            "ewma_latency_s": _round(ewma),
            "expected_wait_s": _round(self.queue.expected_wait_s()),
            "seconds_per_step_image": _round(self.queue.seconds_per_unit, 5),
            "default_steps": variant.default_steps,
            "default_guidance_scale": variant.default_guidance,
            "max_steps": s.max_steps,
            "max_n": s.max_n,
            "sizes": [f"{w}x{h}" for w, h in SIZES],
            "sampler": variant.sampler,
            "shift": variant.shift,
            "device": s.resolved_device,
            "memory": memory_report(s.resolved_device),
            "version": __version__,
            "tiny": s.tiny,
            "error": self.error,
        }
        if s.tiny:
            # Steps are not capped in tiny mode (50 CFG steps take ~2 s on a CPU); only the size is
            # faked: the pipeline makes a tiny picture that is resized to the requested size.
            w, h = native_size(1360, 768, sample_px=s.tiny_sample_size, multiple=2)
            body["tiny_note"] = (
                f"random weights; pictures are generated at ~{s.tiny_sample_size}^2 pixels "
                f"(e.g. 1360x768 -> {w}x{h}) and resized to the requested size"
            )
        return body


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def memory_report(device: str) -> dict[str, object]:
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        return {
            "gpu_name": str(torch.cuda.get_device_name(device)),
            "mem_used_bytes": int(total - free),
            "mem_total_bytes": int(total),
            "torch_allocated_bytes": int(torch.cuda.memory_allocated(device)),
        }
    return {"rss_bytes": _rss_bytes()}


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
