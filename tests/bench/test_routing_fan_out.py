"""The routing benchmark's fan_out scenario: seeded requests for 4-10 images at the same load in
images, and the cost and GPU share of requests split over routes, read from the ledger."""

from __future__ import annotations

from pathlib import Path

from bench.replay import Outcome
from bench.report import summarize
from bench.routing import FAN_OUT_N, make_plan
from bench.stack import LedgerEntry
from gateway.catalog import load_catalog

JOB_S = {"hidream-i1-full": 0.3, "hidream-i1-dev": 0.168}


def test_fan_out_requests_ask_4_to_10_images_at_the_same_load_in_images() -> None:
    plan = make_plan(JOB_S, quick=False, capacity_rps=None, seed=4)
    many = plan.fan_out.arrivals()
    assert {a.n for a in many} <= set(range(FAN_OUT_N[0], FAN_OUT_N[1] + 1))
    assert len({a.n for a in many}) > 3  # drawn, not fixed
    assert many == make_plan(JOB_S, quick=False, capacity_rps=None, seed=4).fan_out.arrivals()  # seeded
    images = sum(a.n for a in many) / plan.fan_out.duration_s
    ones = len(plan.workload.arrivals()) / plan.workload.duration_s
    assert 0.7 < images / ones < 1.4  # the same load in images, give or take the draw
    assert {a.n for a in plan.workload.arrivals()} == {1}  # the other scenarios are unchanged


def test_a_split_request_is_costed_from_the_ledger_and_its_gpu_share_from_its_cost(pricing_file: Path) -> None:
    catalog = load_catalog(pricing_file)
    gpu, fal = (r.cost_micros(1024, 1024, 1) for r in catalog.models["hidream-i1-full"].routes)
    outcomes = [
        Outcome(0, "hidream-i1-full", 0.0, 1.0, 200, "local_gpu,fal", "fan_out", None, n=6),
        Outcome(1, "hidream-i1-full", 0.1, 0.5, 200, "fal", "latency_over_target", None, n=4),
    ]
    ledger = [
        LedgerEntry("r0", "succeeded", "hidream-i1-full", "local_gpu,fal", 6, 2 * gpu + 4 * fal),
        LedgerEntry("r1", "succeeded", "hidream-i1-full", "fal", 4, 4 * fal),
    ]
    s = summarize("fan_out", "balanced@60s", outcomes, ledger, catalog, "1024x1024", 1.0)
    assert (s.images, s.local_images) == (10, 2)
    assert round(s.cost_usd * 1e6) == 2 * gpu + 8 * fal
