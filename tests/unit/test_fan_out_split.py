"""Where the images of a request for n > 1 go (gateway/routing/fan_out.py): pure planning over the
router's plan for one image, with the owned GPU ($0.014 an image, its queue working one image after
another) and fal (~$0.052 a 1024x1024 image, its calls side by side)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.catalog import Route, RoutingPolicy, load_catalog
from gateway.routing.fan_out import Lane, calls, plan_calls, split
from gateway.routing.router import Planned

ROUTES = {r.provider: r for r in load_catalog(Path(__file__).resolve().parents[2] / "pricing.yaml").models[
    "hidream-i1-full"
].routes}  # fmt: skip
TARGET_60 = RoutingPolicy(latency_target_s=60.0)


def gpu(wait_s: float, job_s: float = 30.0, *, reason: str = "cheapest_healthy", saturated: bool = False) -> Planned:
    route = ROUTES["local_gpu"]
    return Planned(
        route, reason, route.cost_micros(1024, 1024, 1), wait_s + job_s, 0.0,
        wait_s=wait_s, queued=True, saturated=saturated,
    )  # fmt: skip


def fal(expected_s: float = 15.0, *, reason: str = "fallback_after_error", saturated: bool = False) -> Planned:
    route = ROUTES["fal"]
    return Planned(route, reason, route.cost_micros(1024, 1024, 1), expected_s, 0.0, saturated=saturated)


def shares(got: list[tuple[int, list[Planned]]]) -> list[tuple[str, int]]:
    """(route of each call, its images)."""
    return [(routes[0].route.provider, images) for images, routes in got]


def test_the_gpu_takes_every_image_it_can_finish_within_the_target() -> None:
    assert shares(plan_calls(2, [gpu(0.0, 20.0), fal()], TARGET_60)) == [("local_gpu", 2)]


def test_images_the_gpu_would_finish_late_go_to_fal_and_no_more() -> None:
    # Idle GPU, 30 s an image: two are done at 60 s, a third at 90 s; fal does any number in 15 s.
    assert shares(plan_calls(4, [gpu(0.0), fal()], TARGET_60)) == [("local_gpu", 2), ("fal", 2)]
    # 20 s of queue ahead: one image fits (50 s).
    assert shares(plan_calls(4, [gpu(20.0), fal()], TARGET_60)) == [("local_gpu", 1), ("fal", 3)]


def test_a_gpu_whose_queue_alone_passes_the_target_gets_nothing_and_fal_calls_are_of_its_max_n() -> None:
    got = plan_calls(10, [fal(reason="latency_over_target"), gpu(50.0, reason="fallback_after_error")], TARGET_60)
    assert shares(got) == [("fal", 4), ("fal", 4), ("fal", 2)]


def test_when_nothing_is_within_the_target_cost_and_the_price_of_lateness_decide() -> None:
    # Every image on the GPU: done at 120 s, 60 s late; any on a fal that takes 200 s: 140 s late.
    assert shares(plan_calls(4, [gpu(0.0), fal(200.0)], TARGET_60)) == [("local_gpu", 4)]
    # A GPU 150 s behind (done at 180 s at best) against fal at 100 s: fal, 40 s late, at $0.01 a
    # late second is cheaper than the GPU's 120 s; at no price for lateness the GPU is.
    assert shares(plan_calls(4, [gpu(150.0), fal(100.0)], TARGET_60)) == [("fal", 4)]
    free_lateness = RoutingPolicy(latency_target_s=60.0, usd_per_late_second=0.0)
    assert shares(plan_calls(4, [gpu(150.0), fal(100.0)], free_lateness)) == [("local_gpu", 4)]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("cheapest", [("local_gpu", 4), ("local_gpu", 2)]), ("fastest", [("local_gpu", 1), ("fal", 4), ("fal", 1)])],
)
def test_the_cheapest_and_fastest_policies_measure_cost_and_time_first(
    kind: str, expected: list[tuple[str, int]]
) -> None:
    policy = RoutingPolicy(kind=kind, latency_target_s=60.0)  # type: ignore[arg-type]
    assert shares(plan_calls(6, [gpu(0.0, 10.0), fal(15.0)], policy)) == expected


def test_a_breaker_trial_is_one_call_of_its_own_and_the_rest_is_split() -> None:
    trial = gpu(0.0, reason="half_open_trial")
    got = plan_calls(6, [trial, fal()], TARGET_60)
    assert shares(got) == [("local_gpu", 4), ("fal", 2)]
    assert got[0][1][0].reason == "half_open_trial"


def test_full_routes_share_only_when_every_route_is_full() -> None:
    full_gpu = gpu(0.0, saturated=True, reason="fallback_after_error")
    assert shares(plan_calls(3, [fal(reason="spillover_queue_full"), full_gpu], TARGET_60)) == [("fal", 3)]
    all_full = [gpu(0.0, reason="all_saturated", saturated=True), fal(saturated=True)]
    assert shares(plan_calls(4, all_full, TARGET_60)) == [("local_gpu", 2), ("fal", 2)]


def test_each_call_falls_back_to_the_plans_other_routes_and_says_why_it_went_where_it_did() -> None:
    got = plan_calls(4, [gpu(0.0), fal()], TARGET_60)
    assert [[(p.route.provider, p.reason) for p in routes] for _, routes in got] == [
        [("local_gpu", "cheapest_healthy"), ("fal", "fallback_after_error")],
        [("fal", "latency_over_target"), ("local_gpu", "fallback_after_error")],
    ]


def test_a_fallback_must_make_as_many_images_as_the_call() -> None:
    small = Route("small", "hidream-i1-full", "small", None, 1, None, max_n=2)
    tiny = Planned(small, "fallback_after_error", 1, 1000.0, 0.0)
    got = plan_calls(4, [fal(reason="cheapest_healthy"), tiny], TARGET_60)
    assert [[p.route.provider for p in routes] for _, routes in got] == [["fal"]]


def test_a_stream_makes_each_image_a_call_of_its_own() -> None:
    got = plan_calls(3, [gpu(0.0, 10.0), fal()], TARGET_60, most_per_call=1)
    assert shares(got) == [("local_gpu", 1), ("local_gpu", 1), ("local_gpu", 1)]


def test_split_weighs_every_share_and_calls_cut_shares_at_max_n() -> None:
    lanes = [Lane(10, 4, 0.0, 30.0), Lane(50, 4, 15.0, 0.0), Lane(40, 2, 20.0, 0.0)]
    assert split(7, lanes, TARGET_60) == (2, 0, 5)  # the cheaper of the side-by-side routes
    assert calls((2, 0, 5), lanes) == [(0, 2), (2, 2), (2, 2), (2, 1)]
    assert sum(split(10, lanes, RoutingPolicy(kind="fastest", latency_target_s=60.0))) == 10


def test_each_call_expects_its_last_image_after_the_shares_earlier_calls_on_a_queue() -> None:
    # Idle GPU, 30 s an image: its two images are done at 60 s; fal's two, side by side, at 15 s.
    got = plan_calls(4, [gpu(0.0), fal()], TARGET_60)
    assert [(routes[0].route.provider, images, routes[0].expected_s) for images, routes in got] == [
        ("local_gpu", 2, 60.0), ("fal", 2, 15.0),
    ]  # fmt: skip
    # A share past the route's max_n is several calls: each later one waits for the one before.
    many = plan_calls(10, [gpu(0.0, 5.0), fal()], TARGET_60)
    gpu_calls = [(images, routes[0].expected_s) for images, routes in many if routes[0].route.provider == "local_gpu"]
    most = ROUTES["local_gpu"].max_n
    assert len(gpu_calls) > 1 and gpu_calls[0] == (most, most * 5.0)
    assert gpu_calls[-1][1] == sum(images for images, _ in gpu_calls) * 5.0
