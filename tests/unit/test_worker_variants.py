"""The variant table and the size rule the worker relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from worker.variants import DEFAULT_SIZE, SIZES, VARIANTS, native_size


def test_official_defaults() -> None:
    table = {name: (v.default_steps, v.default_guidance, v.sampler, v.shift) for name, v in VARIANTS.items()}
    assert table == {
        "full": (50, 5.0, "flow_unipc", 3.0),
        "dev": (28, 0.0, "flow_lcm", 6.0),
        "fast": (16, 0.0, "flow_lcm", 3.0),
    }


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_every_accepted_size_comes_out_of_hidream_unchanged(width: int, height: int) -> None:
    assert native_size(width, height) == (width, height)


def test_other_sizes_would_be_rescaled_which_is_why_they_are_refused() -> None:
    assert native_size(1792, 1024) == (1344, 768)
    assert native_size(512, 512) == (1024, 1024)


def test_tiny_mode_makes_small_pictures_of_the_same_shape() -> None:
    assert native_size(1360, 768, sample_px=32, multiple=2) == (42, 24)
    assert DEFAULT_SIZE in SIZES


def test_worker_model_ids_and_sizes_match_the_catalog(pricing_file: Path) -> None:
    catalog = yaml.safe_load(pricing_file.read_text())
    local_routes = {
        route["upstream_model"]: spec
        for spec in catalog["models"].values()
        for route in spec["routes"]
        if route["provider"] == "local_gpu"
    }
    assert set(local_routes) == {v.model_id for v in VARIANTS.values()}
    for variant in VARIANTS.values():
        spec = local_routes[variant.model_id]
        assert set(spec["sizes"]) <= {f"{w}x{h}" for w, h in SIZES}
        assert spec["num_inference_steps"]["default"] == variant.default_steps
