"""The worker's request validation: defaults, and a 400 naming the parameter for every bad value."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import InvalidRequestError
from worker.jobs import JobSpec
from worker.schemas import parse_request, to_job_spec
from worker.settings import WorkerSettings
from worker.variants import VariantName


def spec_for(payload: object, variant: VariantName = "full", **settings: Any) -> JobSpec:
    return to_job_spec(parse_request(payload), WorkerSettings(variant=variant, **settings))


def rejected(payload: object, variant: VariantName = "full", **settings: Any) -> InvalidRequestError:
    s = WorkerSettings(variant=variant, **settings)
    with pytest.raises(InvalidRequestError) as info:
        to_job_spec(parse_request(payload), s)
    assert info.value.status_code == 400
    return info.value


def test_defaults_follow_the_variant() -> None:
    full = spec_for({"prompt": "a fox"})
    assert (full.n, full.width, full.height, full.steps, full.guidance_scale) == (1, 1024, 1024, 50, 5.0)
    dev = spec_for({"prompt": "a fox"}, variant="dev")
    assert (dev.steps, dev.guidance_scale) == (28, 0.0)
    fast = spec_for({"prompt": "a fox"}, variant="fast")
    assert (fast.steps, fast.guidance_scale) == (16, 0.0)


def test_extension_fields_are_passed_through() -> None:
    spec = spec_for(
        {
            "prompt": "a fox",
            "model": "hidream-i1-full",
            "n": 3,
            "size": "832x1248",
            "negative_prompt": "blurry",
            "num_inference_steps": 12,
            "guidance_scale": 3.5,
            "seed": 2**63 - 1,
            "response_format": "b64_json",
        }
    )
    assert (spec.n, spec.width, spec.height, spec.steps) == (3, 832, 1248, 12)
    assert (spec.negative_prompt, spec.guidance_scale, spec.seed) == ("blurry", 3.5, 2**63 - 1)


def test_json_null_means_absent_as_the_openai_sdk_sends_it() -> None:
    spec = spec_for({"prompt": "a fox", "n": None, "size": None, "seed": None, "response_format": None})
    assert (spec.n, spec.width, spec.height) == (1, 1024, 1024)


def test_a_missing_seed_is_drawn_so_that_it_can_be_reported() -> None:
    seeds = {spec_for({"prompt": "a fox"}).seed for _ in range(5)}
    assert len(seeds) > 1
    assert all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"prompt": "x", "size": "1792x1024"}, "size"),  # a size HiDream would rescale
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 5}, "n"),
        ({"prompt": "x", "n": "2"}, "n"),  # no silent coercion
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "num_inference_steps": 51}, "num_inference_steps"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "guidance_scale": 20.5}, "guidance_scale"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": 2**63}, "seed"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "output_format": "jpeg"}, "output_format"),
        ({"prompt": "x", "model": "hidream-i1-dev"}, "model"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"prompt": "x", "negative_prompt": "y" * 4001}, "negative_prompt"),
        ({"prompt": "x", "quality": "hd"}, "quality"),  # unknown arguments are refused, as OpenAI does
        ({"n": 1}, "prompt"),
    ],
)
def test_bad_values_are_rejected_naming_the_parameter(payload: dict[str, object], param: str) -> None:
    err = rejected(payload)
    assert err.param == param
    assert err.body()["error"]["param"] == param
    assert err.body()["error"]["type"] == "invalid_request_error"


def test_distilled_variants_refuse_classifier_free_guidance() -> None:
    assert rejected({"prompt": "x", "guidance_scale": 5.0}, variant="dev").param == "guidance_scale"
    assert spec_for({"prompt": "x", "guidance_scale": 1.0}, variant="fast").guidance_scale == 1.0


def test_worker_limits_are_configurable() -> None:
    assert rejected({"prompt": "x", "n": 3}, max_n=2).param == "n"
    assert spec_for({"prompt": "x", "num_inference_steps": 80}, max_steps=100).steps == 80


def test_a_body_that_is_not_an_object_is_rejected() -> None:
    err = rejected(["prompt"])
    assert err.param is None and "JSON object" in err.message
