"""pricing.yaml reloaded while running: the whole catalog swaps at once, or nothing changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.catalog import Catalog, load_catalog, usd_to_micros
from gateway.live_catalog import LiveCatalog
from gateway.metrics import Metrics

KNOWN = ("fal", "local_gpu")


@pytest.fixture
def pricing(tmp_path: Path, pricing_file: Path) -> Path:
    path = tmp_path / "pricing.yaml"
    shutil.copy(pricing_file, path)
    return path


def _live(path: Path, seen: list[Catalog]) -> tuple[LiveCatalog, Metrics]:
    metrics = Metrics()
    live = LiveCatalog(path, load_catalog(path, KNOWN), known_providers=KNOWN, metrics=metrics, on_change=seen.append)
    return live, metrics


def _count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("gateway_pricing_reloads_total", {"result": result})
    return value or 0.0


def _full_price(catalog: Catalog) -> int:
    spec = catalog.get("hidream-i1-full")
    assert spec is not None
    return spec.price_per_image_micros


async def test_a_changed_price_is_in_use_after_the_next_check(pricing: Path) -> None:
    seen: list[Catalog] = []
    live, metrics = _live(pricing, seen)
    assert await live.check() is False  # nothing changed yet
    pricing.write_text(pricing.read_text().replace("price_per_image_usd: 0.05", "price_per_image_usd: 0.07"))
    assert await live.check() is True
    assert _full_price(live.current) == usd_to_micros(0.07)
    assert seen == [live.current]
    assert _count(metrics, "loaded") == 1
    assert await live.check() is False  # loaded once, not on every look


async def test_a_bad_file_keeps_the_old_catalog_and_is_counted(pricing: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Catalog] = []
    live, metrics = _live(pricing, seen)
    before = live.current
    text = pricing.read_text()
    pricing.write_text(text.replace("price_per_image_usd: 0.05", "price_per_image_usd: -1"))
    assert await live.check() is False
    assert live.current is before and seen == []
    assert _count(metrics, "rejected") == 1
    assert "price_per_image_usd" in caplog.text and str(pricing) in caplog.text
    # Fixed again: the next change is taken.
    pricing.write_text(text.replace("price_per_image_usd: 0.05", "price_per_image_usd: 0.06"))
    assert await live.check() is True and _full_price(live.current) == usd_to_micros(0.06)


async def test_yaml_that_does_not_parse_is_rejected(pricing: Path) -> None:
    live, metrics = _live(pricing, [])
    before = live.current
    pricing.write_text("models: [unclosed\n")
    assert await live.check() is False and live.current is before
    assert _count(metrics, "rejected") == 1


async def test_a_route_to_a_provider_the_process_did_not_start_with_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fal_only = tmp_path / "pricing.yaml"
    full = (Path(__file__).resolve().parents[2] / "pricing.yaml").read_text()
    catalog = load_catalog(Path(__file__).resolve().parents[2] / "pricing.yaml", KNOWN)
    assert catalog.providers() == {"fal", "local_gpu"}
    fal_only.write_text(full)
    seen: list[Catalog] = []
    live = LiveCatalog(
        fal_only,
        Catalog(models={}, default_model=None),  # started with no routes at all
        known_providers=KNOWN,
        on_change=seen.append,
    )
    fal_only.write_text(full + "\n")  # a change, so it is read
    assert await live.check() is False and seen == []
    assert "need a restart" in caplog.text


async def test_an_unreadable_file_keeps_serving_and_is_read_again(pricing: Path) -> None:
    live, _ = _live(pricing, [])
    before = live.current
    text = pricing.read_text()
    pricing.unlink()
    assert await live.check() is False and live.current is before
    pricing.write_text(text.replace("price_per_image_usd: 0.05", "price_per_image_usd: 0.08"))
    assert await live.check() is True and _full_price(live.current) == usd_to_micros(0.08)
