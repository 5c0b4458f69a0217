from __future__ import annotations

from pathlib import Path

import pytest

from gateway.catalog import CatalogError, load_catalog, parse_size

KNOWN = ["fal", "local_gpu"]


def test_shipped_pricing_file_loads_with_hidream_full_at_five_cents(pricing_file: Path) -> None:
    catalog = load_catalog(pricing_file, KNOWN)
    assert list(catalog.models) == ["hidream-i1-full", "hidream-i1-dev", "hidream-i1-fast"]
    full = catalog.models["hidream-i1-full"]
    assert full.price_micros("1024x1024", 1) == 50_000
    assert full.price_micros("1360x768", 3) == 150_000
    assert full.edits is not None and full.edits.max_images == 1
    assert [r.provider for r in full.routes] == ["local_gpu", "fal"]
    assert catalog.models["hidream-i1-dev"].guidance_scale is None


def test_fal_route_costs_by_megapixel_and_gpu_route_per_image(pricing_file: Path) -> None:
    full = load_catalog(pricing_file, KNOWN).models["hidream-i1-full"]
    gpu, fal = full.routes
    assert gpu.cost_micros(1024, 1024, 2) == 28_000
    # 1024*1024 = 1.048576 MP at $0.05/MP = $0.0524288 -> 52_429 micro-USD per image
    assert fal.cost_micros(1024, 1024, 1) == 52_429
    assert fal.cost_micros(1360, 768, 2) == 2 * round(50_000 * 1360 * 768 / 1_000_000)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pricing.yaml"
    p.write_text(text)
    return p


def _mutated(pricing_file: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = pricing_file.read_text()
    assert old in text
    return _write(tmp_path, text.replace(old, new, 1))


def test_unknown_provider_names_file_line_and_field(pricing_file: Path, tmp_path: Path) -> None:
    bad = _mutated(pricing_file, tmp_path, "provider: fal\n", "provider: fall\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(bad, KNOWN)
    msg = str(info.value)
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "provider: fall" in t)
    assert msg.startswith(f"{bad}:{line}: models.hidream-i1-full.routes.1.provider: unknown provider 'fall'")


def test_route_without_a_cost_is_refused(pricing_file: Path, tmp_path: Path) -> None:
    bad = _mutated(pricing_file, tmp_path, "        cost_per_image_usd: 0.014\n", "")
    with pytest.raises(CatalogError, match=r"routes\.0: Value error, a route needs exactly one of"):
        load_catalog(bad, KNOWN)


def test_default_outside_range_is_refused(pricing_file: Path, tmp_path: Path) -> None:
    bad = _mutated(pricing_file, tmp_path, "n: {min: 1, max: 10, default: 1}", "n: {min: 1, max: 10, default: 11}")
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "default: 11}" in t)
    with pytest.raises(CatalogError, match=rf":{line}: models\.hidream-i1-full\.n: Value error, need min <= default"):
        load_catalog(bad, KNOWN)


def test_misspelt_key_is_refused_not_ignored(pricing_file: Path, tmp_path: Path) -> None:
    bad = _mutated(pricing_file, tmp_path, "price_per_image_usd: 0.05", "price_per_imag_usd: 0.05")
    with pytest.raises(CatalogError, match=r"price_per_imag_usd: Extra inputs are not permitted"):
        load_catalog(bad, KNOWN)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    bad = _write(tmp_path, "version: 1\nmodels:\n  a: [1, 2\n  b: 3\n")
    with pytest.raises(CatalogError, match=r"pricing\.yaml:\d+: not valid YAML"):
        load_catalog(bad)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the pricing file"):
        load_catalog(tmp_path / "nope.yaml")


def test_bad_size_in_catalog_is_refused(pricing_file: Path, tmp_path: Path) -> None:
    bad = _mutated(pricing_file, tmp_path, '"1024x1024", "768x1360"', '"1024x1024", "768by1360"')
    with pytest.raises(CatalogError, match="not of the form WIDTHxHEIGHT"):
        load_catalog(bad, KNOWN)


@pytest.mark.parametrize("size", ["1024", "x1024", "1024x", "0x10", "10x-1", "axb", "1024X1024", " 1x1"])
def test_parse_size_rejects_malformed(size: str) -> None:
    with pytest.raises(ValueError):
        parse_size(size)


def test_parse_size_reads_width_then_height() -> None:
    assert parse_size("1360x768") == (1360, 768)


def test_routing_policy_comes_from_the_file_with_the_latency_of_an_unobserved_route(
    pricing_file: Path, tmp_path: Path
) -> None:
    full = load_catalog(pricing_file, KNOWN).models["hidream-i1-full"]
    policy = full.routing
    assert (policy.kind, policy.latency_target_s, policy.default_latency_s) == ("balanced", 30.0, 15.0)
    custom = _mutated(pricing_file, tmp_path, "default_latency_s: 15\n", "default_latency_s: 4.5\n")
    assert load_catalog(custom, KNOWN).models["hidream-i1-full"].routing.default_latency_s == 4.5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "Input should be greater than 0"),
        ("-5", "Input should be greater than 0"),
        (".inf", "Input should be a finite number"),
        ("soon", "Input should be a valid number"),
    ],
)
def test_bad_default_latency_is_refused_with_its_line(
    pricing_file: Path, tmp_path: Path, value: str, message: str
) -> None:
    bad = _mutated(pricing_file, tmp_path, "default_latency_s: 15\n", f"default_latency_s: {value}\n")
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if f"default_latency_s: {value}" in t)
    with pytest.raises(CatalogError) as info:
        load_catalog(bad, KNOWN)
    assert str(info.value).startswith(f"{bad}:{line}: models.hidream-i1-full.routing.default_latency_s: {message}")


def test_names_resolve_through_aliases_and_provider_prefixes(pricing_file: Path) -> None:
    catalog = load_catalog(pricing_file, KNOWN)
    assert catalog.default_model == "hidream-i1-full"
    alias = catalog.resolve("dall-e-3")
    assert alias is not None and alias.spec.id == "hidream-i1-full" and alias.pinned is None
    pinned = catalog.resolve("fal/hidream-i1-dev")
    assert pinned is not None and pinned.spec.id == "hidream-i1-dev" and pinned.pinned == "fal"
    through_alias = catalog.resolve("local_gpu/dall-e-2")
    assert through_alias is not None and through_alias.spec.id == "hidream-i1-fast"
    for unknown in ("nope/hidream-i1-full", "fal/nope", "fal/fal/hidream-i1-full", "dall-e-9", "/hidream-i1-full"):
        assert catalog.resolve(unknown) is None


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("default_model: hidream-i1-full", "default_model: hidream-i1-huge", "default_model"),
        ("  dall-e-3: hidream-i1-full", "  dall-e-3: hidream-i1-huge", "dall-e-3"),
        ("  dall-e-3: hidream-i1-full", "  hidream-i1-dev: hidream-i1-full", "hidream-i1-dev"),
        ("  dall-e-3: hidream-i1-full", "  fal/x: hidream-i1-full", "fal/x"),
    ],
)
def test_bad_names_stop_the_boot(pricing_file: Path, tmp_path: Path, old: str, new: str, field: str) -> None:
    bad = _mutated(pricing_file, tmp_path, old, new)
    with pytest.raises(CatalogError, match=field):
        load_catalog(bad, KNOWN)


def test_size_range_must_hold_the_native_sizes(pricing_file: Path, tmp_path: Path) -> None:
    bad = _mutated(pricing_file, tmp_path, "max_side: 2048", "max_side: 1200")
    with pytest.raises(CatalogError, match="outside size_range"):
        load_catalog(bad, KNOWN)
