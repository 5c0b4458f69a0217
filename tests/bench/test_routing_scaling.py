"""The routing benchmark's catalog: routing durations scaled like every other duration it runs."""

from __future__ import annotations

from pathlib import Path

from bench.scaling import TimeScale, write_scaled_pricing
from gateway.catalog import load_catalog


def test_scaled_catalog_divides_durations_and_multiplies_the_price_per_second(
    pricing_file: Path, tmp_path: Path
) -> None:
    real = load_catalog(pricing_file)
    scaled = load_catalog(write_scaled_pricing(pricing_file, tmp_path / "pricing.yaml", TimeScale(100.0)))
    for model_id, model in real.models.items():
        bench = scaled.models[model_id]
        assert bench.routes == model.routes  # routes and costs untouched
        assert bench.routing.default_latency_s == model.routing.default_latency_s / 100
        assert bench.routing.usd_per_late_second == model.routing.usd_per_late_second * 100
