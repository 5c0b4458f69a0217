"""One job on a pipeline: the call it makes, seeding, per-step interruption, the size rule and
how pipeline failures are classified."""

from __future__ import annotations

import io
import threading

import pytest
import torch
from PIL import Image

from tests.fakes.stand_in_pipeline import StandInPipeline
from worker.errors import FatalDeviceError, InferenceError, JobCancelledError
from worker.inference import is_fatal_device_error, run_job
from worker.jobs import JobOutput, JobSpec

SPEC = JobSpec("a red barn", "fog", 2, 1360, 768, 7, 5.0, 42)


def run(
    pipe: StandInPipeline, spec: JobSpec = SPEC, *, resize: bool = False, cancel: threading.Event | None = None
) -> JobOutput:
    return run_job(pipe, spec, cancel or threading.Event(), resize_to_request=resize)


def test_the_pipeline_gets_the_spec_and_pngs_come_back_at_the_requested_size() -> None:
    pipe = StandInPipeline()
    out = run(pipe)
    call = pipe.calls[-1]
    assert (call.prompt, call.negative_prompt, call.n) == ("a red barn", "fog", 2)
    assert (call.width, call.height, call.steps, call.guidance_scale) == (1360, 768, 7, 5.0)
    assert call.steps_run == 7 and not call.interrupted
    assert len(out.images) == 2 and (out.width, out.height) == (1360, 768)
    for png in out.images:
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert Image.open(io.BytesIO(png)).size == (1360, 768)


def test_the_seed_decides_the_noise() -> None:
    pipe = StandInPipeline()
    a, b = run(pipe), run(pipe)
    c = run(pipe, JobSpec("a red barn", "fog", 2, 1360, 768, 7, 5.0, 43))
    assert a.images == b.images
    assert a.images != c.images


def test_a_job_cancelled_before_it_starts_never_reaches_the_pipeline() -> None:
    pipe = StandInPipeline()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(JobCancelledError):
        run(pipe, cancel=cancel)
    assert pipe.calls == []


def test_cancelling_interrupts_between_steps() -> None:
    pipe = StandInPipeline()
    pipe.plan("hang")
    cancel = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(pipe, cancel=cancel)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    assert pipe.holding.wait(10)
    cancel.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], JobCancelledError)
    assert "interrupted after step" in str(errors[0])
    assert pipe.calls[-1].interrupted


def test_real_weights_must_give_the_requested_size_and_tiny_mode_resizes() -> None:
    pipe = StandInPipeline()
    pipe.output_size = (42, 24)
    with pytest.raises(InferenceError, match="42x24"):
        run(pipe)
    out = run(pipe, resize=True)
    assert Image.open(io.BytesIO(out.images[0])).size == (1360, 768)


def test_a_pipeline_error_fails_the_job_and_a_poisoned_device_fails_the_worker() -> None:
    pipe = StandInPipeline()
    pipe.plan("fail")
    with pytest.raises(InferenceError):
        run(pipe)
    pipe.plan("fatal")
    with pytest.raises(FatalDeviceError):
        run(pipe)


def test_out_of_memory_is_not_fatal() -> None:
    assert is_fatal_device_error(torch.AcceleratorError("CUDA error: device-side assert triggered"))
    assert not is_fatal_device_error(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_fatal_device_error(RuntimeError("anything else"))
