"""The routing bar as the benchmark's --check applies it (issue 17)."""

from __future__ import annotations

from bench.report import Comparison, default_target_misses, frontier


def _c(ours: str, baseline: str, cost: float, p95: float, failed: int = 0, scenario: str = "normal") -> Comparison:
    return Comparison(scenario, ours, baseline, cost, p95, failed, 0)


def test_the_cheapest_target_within_the_bar_is_chosen() -> None:
    rows = frontier([
        _c("balanced@30s", "priority", 1.01, 0.90),  # within: cost <= 1.02x, p95 <= 1x
        _c("balanced@60s", "priority", 0.99, 1.00),  # within and cheaper: the one shown
        _c("balanced@120s", "priority", 0.90, 1.10),  # cheaper still, but slower: outside
    ])  # fmt: skip
    assert len(rows) == 1 and rows[0].met
    assert rows[0].best is not None and rows[0].best.ours == "balanced@60s"


def test_no_target_within_the_bar_shows_the_nearest_miss() -> None:
    rows = frontier([
        _c("balanced@30s", "least_busy", 1.10, 0.95),
        _c("balanced@60s", "least_busy", 1.03, 1.00),  # nearest: 0.01 over on cost
        _c("balanced@120s", "least_busy", 0.95, 1.0, failed=1),  # failures never meet the bar
    ])  # fmt: skip
    assert not rows[0].met and rows[0].best is not None and rows[0].best.ours == "balanced@60s"


def test_each_scenario_and_baseline_is_judged_on_its_own() -> None:
    rows = frontier([
        _c("balanced@60s", "priority", 1.0, 1.0),
        _c("balanced@60s", "priority", 1.5, 1.0, scenario="worker_killed"),
        _c("balanced@60s", "cheapest", 1.0, 0.9, scenario="worker_killed"),
    ])  # fmt: skip
    assert [(r.scenario, r.baseline, r.met) for r in rows] == [
        ("normal", "priority", True), ("worker_killed", "priority", False), ("worker_killed", "cheapest", True),
    ]  # fmt: skip


def test_the_default_target_may_not_be_dearer_or_slower_than_round_robin_or_least_busy() -> None:
    comparisons = [
        _c("balanced@60s", "round_robin", 0.9, 0.8),
        _c("balanced@60s", "least_busy", 0.96, 1.2),  # slower at p95: a miss
        _c("balanced@60s", "priority", 1.5, 1.5),  # not a default-target baseline
        _c("balanced@30s", "least_busy", 1.5, 1.5),  # not the default target
    ]
    misses = default_target_misses(comparisons, "balanced@60s")
    assert [(c.ours, c.baseline) for c in misses] == [("balanced@60s", "least_busy")]
