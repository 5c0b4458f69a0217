"""Previews on the tiny HiDream pipeline (real diffusers modules, random weights): which steps are
previewed, the latent-to-RGB map fitted against the pipeline's own VAE, and run_job reporting
previews and steps from the real denoising loop."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from worker.inference import run_job
from worker.jobs import JobEvent, JobSpec, Preview, StepDone
from worker.previews import LatentRgb, Previewer, preview_steps, vae_preview
from worker.settings import WorkerSettings
from worker.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def tiny() -> Any:
    return build_tiny_pipeline(WorkerSettings(tiny=True, weights_dir=None).spec, 16)


@pytest.mark.parametrize(
    ("steps", "k", "expected"),
    [
        (50, 1, (25,)),
        (50, 2, (17, 33)),
        (50, 3, (12, 25, 38)),
        (8, 3, (2, 4, 6)),
        (2, 3, (1,)),
        (1, 2, ()),
        (50, 0, ()),
    ],  # fmt: skip
)
def test_previews_are_evenly_spaced_before_the_last_step(steps: int, k: int, expected: tuple[int, ...]) -> None:
    assert preview_steps(steps, k) == expected


def _error(a: Any, b: Any) -> float:
    return float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))


def test_the_fitted_map_is_closer_to_the_vae_than_the_raw_channels(tiny: Any) -> None:
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(5))  # not the fit's own
    decoded = vae_preview(tiny.vae, latents, shrink=1)[0]
    fitted = LatentRgb.fit(tiny.vae, 4).images(latents)[0]
    raw = LatentRgb(torch.eye(4)[:, :3], torch.zeros(3)).images(latents)[0]  # channels 0-2 as RGB
    assert fitted.size == decoded.size == (16, 16)
    assert _error(fitted, decoded) < 0.5 * _error(raw, decoded)


def test_run_job_reports_each_step_and_the_previews_of_the_real_loop(tiny: Any) -> None:
    events: list[JobEvent] = []
    spec = JobSpec("a fox", None, 2, 1024, 1024, 4, 5.0, 1, partial_images=2)
    out = run_job(tiny, spec, threading.Event(), events.append, resize_to_request=True, previewer=Previewer(tiny))
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4]
    previews = [e for e in events if isinstance(e, Preview)]
    assert [(p.index, p.step, p.steps) for p in previews] == [(0, 1, 4), (1, 3, 4)]
    assert all(len(p.pngs) == 2 and (p.width, p.height) == (16, 16) for p in previews)
    assert len(out.images) == 2


def test_a_preview_that_cannot_be_made_leaves_the_job_to_finish() -> None:
    from tests.fakes.stand_in_pipeline import StandInPipeline

    class NoVae(StandInPipeline):
        vae = None  # type: ignore[assignment]

    pipe = NoVae()
    events: list[JobEvent] = []
    spec = JobSpec("a fox", None, 1, 1024, 1024, 4, 5.0, 1, partial_images=2)
    out = run_job(pipe, spec, threading.Event(), events.append, resize_to_request=False, previewer=Previewer(pipe))
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4]
    assert not [e for e in events if isinstance(e, Preview)]
    assert len(out.images) == 1
