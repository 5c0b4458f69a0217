"""Splitting a request for n > 1 images over routes, a routing decision like the choice of one
route: each route's share of the images is expected to be done at its own time (an owned GPU's
queue works its images one after another; fal runs its calls side by side), the request when its
last share is, and the split is chosen by the policy's measure over that time and the cost. Balanced:
the cheapest split within the latency target; past it, cost plus the price of each late second, as
the router scores one route. Pure functions over the router's plan; no I/O."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from gateway.catalog import MICROS, RoutingPolicy
from gateway.routing.router import Planned

# Routes a split spreads over, best first (the plan rarely has more; 4 routes and 10 images are
# 286 splits to weigh).
MAX_LANES = 4


@dataclass(frozen=True, slots=True)
class Lane:
    """One route as the split sees it."""

    cost_micros: int  # per image
    max_n: int  # images per upstream call
    base_s: float  # a queued route: its queue wait; otherwise: its expected time for any call
    per_image_s: float  # a queued route: what each image of its share adds; otherwise 0

    def finish_s(self, images: int) -> float:
        return self.base_s + images * self.per_image_s


def lane_of(planned: Planned, max_n: int) -> Lane:
    if planned.queued:
        return Lane(planned.cost_micros, max_n, planned.wait_s, max(0.0, planned.expected_s - planned.wait_s))
    return Lane(planned.cost_micros, max_n, planned.expected_s, 0.0)


def split(n: int, lanes: Sequence[Lane], policy: RoutingPolicy) -> tuple[int, ...]:
    """Images per lane (summing to n) that the policy rates best; on a tie, more to earlier lanes
    (the router's order)."""
    best: tuple[tuple[float, float], tuple[int, ...]] | None = None
    for counts in _compositions(n, len(lanes)):
        measure = _measure(counts, lanes, policy)
        if best is None or measure < best[0]:
            best = (measure, counts)
    assert best is not None, "a split needs at least one lane"
    return best[1]


def calls(counts: Sequence[int], lanes: Sequence[Lane]) -> list[tuple[int, int]]:
    """(lane index, images) for each upstream call: a lane's share in calls of at most its max_n."""
    out: list[tuple[int, int]] = []
    for i, (count, lane) in enumerate(zip(counts, lanes, strict=True)):
        left = count
        while left > 0:
            k = min(left, lane.max_n)
            out.append((i, k))
            left -= k
    return out


def plan_calls(
    n: int, plan: Sequence[Planned], policy: RoutingPolicy, *, most_per_call: int | None = None
) -> list[tuple[int, list[Planned]]]:
    """The upstream calls for n images from the router's plan for one image: (images, routes to
    try in order) each, the route of its share first (its expected_s: when the call's images are
    expected done) and the plan's others that can make as many as fallbacks. `most_per_call`: a
    cap under every route's max_n (a stream makes each image a call of its own). A breaker's trial,
    first in the plan, is one call of its own (what it was claimed for); full routes share only
    when every route is full."""
    if not plan:
        return []

    def most(p: Planned) -> int:
        return min(p.route.max_n, most_per_call or p.route.max_n)

    def with_fallbacks(first: Planned, images: int, reason: str, expected_s: float) -> list[Planned]:
        rest = [replace(p, reason="fallback_after_error") for p in plan if p is not first and p.route.max_n >= images]
        return [replace(first, reason=reason, expected_s=expected_s), *rest]

    out: list[tuple[int, list[Planned]]] = []
    candidates = list(plan)
    if plan[0].reason == "half_open_trial":
        trial = plan[0]
        images = min(n, most(trial))
        out.append((images, with_fallbacks(trial, images, trial.reason, lane_of(trial, images).finish_s(images))))
        n -= images
        candidates = candidates[1:] or [trial]
    if n == 0:
        return out
    usable = ([p for p in candidates if not p.saturated] or candidates)[:MAX_LANES]
    lanes = [lane_of(p, most(p)) for p in usable]
    moved = "fastest_healthy" if policy.kind == "fastest" else "latency_over_target"
    done = [0] * len(lanes)  # images of each lane's share in the calls so far
    for i, images in calls(split(n, lanes, policy), lanes):
        first = usable[i]
        done[i] += images
        # A call's expected time is when its last image is: after the share's earlier calls' on a queue.
        expected = lanes[i].finish_s(done[i])
        out.append((images, with_fallbacks(first, images, first.reason if first is plan[0] else moved, expected)))
    return out


def _measure(counts: Sequence[int], lanes: Sequence[Lane], policy: RoutingPolicy) -> tuple[float, float]:
    cost = sum(c * lane.cost_micros for c, lane in zip(counts, lanes, strict=True)) / MICROS
    done = max(lane.finish_s(c) for c, lane in zip(counts, lanes, strict=True) if c)
    match policy.kind:
        case "cheapest":
            return cost, done
        case "fastest":
            return done, cost
        case _:
            late = max(0.0, done - policy.latency_target_s)
            return cost + late * policy.usd_per_late_second + done * 1e-6, 0.0


def _compositions(n: int, k: int) -> Iterator[tuple[int, ...]]:
    """Every way to put n images in k lanes, the first lane's largest share first."""
    if k == 1:
        yield (n,)
        return
    for first in range(n, -1, -1):
        for rest in _compositions(n - first, k - 1):
            yield (first, *rest)
