"""One job on the pipeline, in the inference thread: seeding, per-step cancellation through
diffusers' `callback_on_step_end` + `pipe._interrupt`, progress and partial images reported from
the same callback, the size check (or tiny mode's resize) and PNG encoding."""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from worker.errors import FatalDeviceError, InferenceError, JobCancelledError
from worker.jobs import JobOutput, JobSpec, Preview, Report, StepDone
from worker.previews import Previewer, preview_steps

log = logging.getLogger("worker.inference")


class PipelineOutput(Protocol):
    @property
    def images(self) -> Sequence[Image.Image]: ...


class Pipeline(Protocol):
    """What the worker needs of HiDreamImagePipeline (tests pass a stand-in with this shape).

    Called with prompt, negative_prompt, height, width, num_inference_steps, guidance_scale,
    num_images_per_prompt, generator, callback_on_step_end and output_type="pil". Between steps
    it calls `callback_on_step_end(pipe, step, timestep, tensors)` and skips the remaining steps
    once `pipe._interrupt` is true (diffusers' HiDream loop: `if self.interrupt: continue`).
    """

    def __call__(self, **kwargs: object) -> PipelineOutput: ...


def seeded_generator(seed: int) -> object:
    """A CPU torch.Generator for the initial noise (the same seed gives the same noise on any
    device), and the global RNG seeded too: FlowMatchLCMScheduler (Dev, Fast) draws its per-step
    noise without the pipeline's generator. One job runs at a time, so seeding it is safe."""
    import torch

    torch.manual_seed(seed)
    return torch.Generator(device="cpu").manual_seed(seed)


def run_job(
    pipeline: Pipeline,
    spec: JobSpec,
    cancel: threading.Event,
    report: Report | None = None,
    *,
    resize_to_request: bool,
    png_compress_level: int = 1,
    previewer: Previewer | None = None,
) -> JobOutput:
    """Generate spec.n images. `resize_to_request` is tiny mode only: its small native output is
    resized to the requested size; with real weights a size mismatch is an error. With `report`,
    every finished step is reported, and spec.partial_images previews (needs `previewer`)."""
    if cancel.is_set():
        raise JobCancelledError("cancelled before it started")
    steps_done = 0
    at_steps = preview_steps(spec.steps, spec.partial_images) if report is not None and previewer else ()
    sent = 0

    def on_step_end(pipe: object, step: int, timestep: object, tensors: dict[str, object]) -> dict[str, object]:
        nonlocal steps_done, sent
        steps_done = step + 1
        if cancel.is_set():
            # diffusers then skips the remaining steps (it still decodes once; we discard that).
            pipe._interrupt = True  # type: ignore[attr-defined]
            return {}
        if report is not None:
            if steps_done in at_steps and previewer is not None:
                try:
                    preview = _preview(previewer, tensors["latents"], sent, steps_done, spec.steps)
                except Exception:  # a preview is a courtesy: the job goes on without it
                    log.exception("job preview after step %d failed", steps_done)
                else:
                    report(preview)
                    sent += 1
            report(StepDone(steps_done, spec.steps))
        return {}

    try:
        result = pipeline(
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            height=spec.height,
            width=spec.width,
            num_inference_steps=spec.steps,
            guidance_scale=spec.guidance_scale,
            num_images_per_prompt=spec.n,
            generator=seeded_generator(spec.seed),
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="pil",
        )
    except Exception as exc:
        if is_fatal_device_error(exc):
            raise FatalDeviceError(f"The device failed: {type(exc).__name__}.") from exc
        release_cached_memory(exc)
        raise InferenceError(f"The pipeline failed: {type(exc).__name__}.") from exc
    if cancel.is_set():
        raise JobCancelledError(f"interrupted after step {steps_done} of {spec.steps}")
    images = list(result.images)
    if len(images) != spec.n:
        raise InferenceError(f"The pipeline returned {len(images)} images for n={spec.n}.")
    pngs = tuple(_png(img, spec, resize_to_request, png_compress_level) for img in images)
    return JobOutput(pngs, spec.width, spec.height)


def _preview(previewer: Previewer, latents: object, index: int, step: int, steps: int) -> Preview:
    images = previewer.images(latents)
    pngs = []
    for image in images:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        pngs.append(buf.getvalue())
    return Preview(index, step, steps, tuple(pngs), images[0].width, images[0].height)


def _png(image: Image.Image, spec: JobSpec, resize: bool, compress_level: int) -> bytes:
    want = (spec.width, spec.height)
    if image.size != want:
        if not resize:
            got = f"{image.size[0]}x{image.size[1]}"
            raise InferenceError(f"The pipeline returned {got} for {spec.width}x{spec.height}.")
        image = image.resize(want, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def is_fatal_device_error(exc: BaseException) -> bool:
    """A CUDA error that poisons the context (illegal address, device-side assert): torch raises
    AcceleratorError for those. Out-of-memory is recoverable and not fatal."""
    torch = sys.modules.get("torch")  # if torch was never imported, this cannot be a torch error
    if torch is None:
        return False
    fatal = getattr(torch, "AcceleratorError", None)
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return False
    return fatal is not None and isinstance(exc, fatal)


def release_cached_memory(exc: BaseException) -> None:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if torch is not None and oom is not None and isinstance(exc, oom) and torch.cuda.is_available():
        torch.cuda.empty_cache()
