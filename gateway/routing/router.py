"""The router: orders the routes able to serve a request by one score and says why.

Routes whose breaker is open, whose free probe says they are down, or whose queue is full or
slower than the latency target are dropped; the rest are ordered by the policy's score. Balanced
(the default): a route expected within the latency target beats any route expected past it, the
cheapest first; only when none is within it are they ordered by cost plus a price per expected
second late. Saturated routes come back only when nothing else is left. A request may take the
trial of at most one open route, which then goes first: a trial is claimed only for a route that
will be tried, since one claimed and unused shuts the route for everyone until it expires.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from gateway.catalog import BASELINE_POLICIES, MICROS, Route, RoutingPolicy
from gateway.routing.breaker import RouteHealth, RouteStats
from providers.base import ProviderHealth

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Planned:
    route: Route
    reason: str
    cost_micros: int
    expected_s: float
    score: float
    # What the split of n > 1 images over routes needs (gateway/routing/fan_out.py): the route's
    # expected queue wait, whether it has a queue of its own (its calls run one after another,
    # each image adding about expected_s - wait_s), and whether it is only a last resort (full).
    wait_s: float = 0.0
    queued: bool = False
    saturated: bool = False


class _Attempt:
    """One call to a route, counted while it runs (a class, not a generator: every request makes
    one, and a generator's context manager costs about four times as much)."""

    __slots__ = ("_counts", "_key")

    def __init__(self, counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
        self._counts = counts
        self._key = key

    def __enter__(self) -> None:
        self._counts[self._key] = self._counts.get(self._key, 0) + 1

    def __exit__(self, *exc: object) -> None:
        self._counts[self._key] -= 1


@dataclass(frozen=True, slots=True)
class _Scored:
    route: Route
    cost_micros: int
    expected_s: float
    score: float
    excluded: str | None  # why it was dropped, None when kept
    trial: bool = False
    claimable: bool = False  # dropped only for its open breaker: it may take this request's trial
    late: bool = False  # expected past the latency target (balanced): after every route within it
    wait_s: float = 0.0
    queued: bool = False  # its probe measures a queue of its own (service_s)

    def order(self) -> tuple[bool, bool, float]:
        return (not self.trial, self.late, self.score)


class Router:
    def __init__(self, health: RouteHealth) -> None:
        self._health = health
        self._in_flight: dict[tuple[str, str], int] = {}  # this process's attempts, for least_busy
        self._turn = 0  # for round_robin

    def attempt(self, route: Route) -> _Attempt:
        """`with router.attempt(route):` counts the call to it as in flight (least_busy)."""
        return _Attempt(self._in_flight, (route.provider, route.model))

    async def plan(
        self,
        routes: Sequence[Route],
        probes: Mapping[tuple[str, str], ProviderHealth],
        *,
        width: int,
        height: int,
        n: int,
        policy: RoutingPolicy,
        pinned: str | None = None,
        claim: bool = True,
    ) -> list[Planned]:
        """The routes to try, best first, each with the reason it is where it is. `claim=False`
        (a dry run) claims no breaker trial: an open route is left out."""
        if pinned is not None:
            return [
                Planned(r, "pinned", r.cost_micros(width, height, n), 0.0, 0.0) for r in routes if r.provider == pinned
            ]
        stats = await self._health.stats([(r.provider, r.model) for r in routes])
        if policy.kind in BASELINE_POLICIES:
            return await self._baseline(routes, stats, policy, width, height, n, claim)
        scored = [
            _score(r, stats[(r.provider, r.model)], probes.get((r.model, r.provider)), width, height, n, policy)
            for r in routes
        ]
        if claim:
            scored = await self._claim_trial(scored)
        kept = sorted((s for s in scored if s.excluded is None), key=_Scored.order)
        saturated = sorted((s for s in scored if s.excluded == "saturated"), key=_Scored.order)
        plan = kept + saturated
        cheapest = min(scored, key=lambda s: s.cost_micros) if scored else None
        out: list[Planned] = []
        for i, s in enumerate(plan):
            reason = _reason(i, s, cheapest, policy, kept_count=len(kept))
            out.append(
                Planned(
                    s.route, reason, s.cost_micros, s.expected_s, s.score,
                    wait_s=s.wait_s, queued=s.queued, saturated=s.excluded == "saturated",
                )
            )  # fmt: skip
        if log.isEnabledFor(logging.DEBUG):  # the candidate list is built only when it is logged
            log.debug(
                "routing %s: %s",
                routes[0].model if routes else "?",
                [(s.route.provider, s.excluded or "ok", round(s.score, 6), round(s.expected_s, 2)) for s in scored],
            )
        return out

    async def _claim_trial(self, scored: list[_Scored]) -> list[_Scored]:
        """Give this request the trial of the best open route that nothing else excludes, if its
        cool-down is over and no other request holds it; that route goes first. A route whose
        breaker has closed since this process read it is kept as scored."""
        out = list(scored)
        for i in sorted((i for i, s in enumerate(out) if s.claimable), key=lambda i: out[i].order()):
            s = out[i]
            answer = await self._health.try_trial(s.route.provider, s.route.model)
            if answer == "closed":
                out[i] = replace(s, excluded=None, claimable=False)
            elif answer == "trial":
                # The one trial request goes first, so it is sure to be tried and the route can recover.
                out[i] = replace(s, excluded=None, claimable=False, trial=True, score=float("-inf"))
                break
        return out

    async def _baseline(
        self,
        routes: Sequence[Route],
        stats: Mapping[tuple[str, str], RouteStats],
        policy: RoutingPolicy,
        width: int,
        height: int,
        n: int,
        claim: bool,
    ) -> list[Planned]:
        """The simple strategies peers offer: they skip a route in cooldown (until its trial, as
        peers' cooldowns expire) and look at nothing else. As above, at most one trial, first."""
        usable: list[Route] = []
        trial: Route | None = None
        for r in routes:
            if stats[(r.provider, r.model)].state == "closed":
                usable.append(r)
            elif trial is None and claim:
                answer = await self._health.try_trial(r.provider, r.model)
                if answer == "closed":
                    usable.append(r)
                elif answer == "trial":
                    trial = r
        if not usable and trial is None:
            usable = list(routes)
        if policy.kind == "round_robin" and usable:
            self._turn += 1
            shift = self._turn % len(usable)
            usable = usable[shift:] + usable[:shift]
        elif policy.kind == "least_busy":
            usable.sort(key=lambda r: self._in_flight.get((r.provider, r.model), 0))
        ordered = usable if trial is None else [trial, *usable]
        return [
            Planned(r, policy.kind if i == 0 else "fallback_after_error", r.cost_micros(width, height, n), 0.0, 0.0)
            for i, r in enumerate(ordered)
        ]


def _score(
    route: Route,
    stats: RouteStats,
    probe: ProviderHealth | None,
    width: int,
    height: int,
    n: int,
    policy: RoutingPolicy,
) -> _Scored:
    cost = route.cost_micros(width, height, n)
    observed = stats.ewma_s if stats.ewma_s is not None else policy.default_latency_s
    if stats.p95_s is not None:
        observed = max(observed, 0.5 * (observed + stats.p95_s))  # lean toward the tail
    if probe is not None and probe.service_s is not None:
        # A queue-fronted route: its own current measure of one job, plus the current wait.
        # Observed end-to-end latencies hold past queue waits (counted twice with `wait`), and
        # a route that looked slow stops being chosen, so they would never be refreshed.
        observed = probe.service_s
    wait = probe.expected_wait_s if probe is not None and probe.expected_wait_s is not None else 0.0
    expected = observed + wait
    excluded: str | None = None
    if probe is not None:
        if not probe.healthy:
            excluded = "unhealthy"
        elif probe.saturated:
            excluded = "saturated"
    if excluded is None and policy.kind != "cheapest" and wait > policy.latency_target_s:
        excluded = "saturated"
    claimable = False
    if stats.state in ("open", "half_open"):
        claimable = excluded is None  # a trial is no use on a route that is down or full anyway
        excluded = "breaker_open"
    late = max(0.0, expected - policy.latency_target_s)
    match policy.kind:
        case "cheapest":
            score = cost / MICROS
        case "fastest":
            score = expected
        case _:
            # Waiting within the target is free; past it a route is chosen only when no route
            # is within it, and then a late second costs usd_per_late_second. The microsecond
            # term breaks ties in cost toward the shorter expected time.
            score = cost / MICROS + late * policy.usd_per_late_second + expected * 1e-6
    balanced = policy.kind not in ("cheapest", "fastest")
    queued = probe is not None and probe.service_s is not None
    late_here = balanced and late > 0
    return _Scored(
        route, cost, expected, score, excluded, claimable=claimable, late=late_here, wait_s=wait, queued=queued
    )


def _reason(index: int, s: _Scored, cheapest: _Scored | None, policy: RoutingPolicy, kept_count: int) -> str:
    if index > 0:
        return "fallback_after_error"
    if s.trial:
        return "half_open_trial"
    if index >= kept_count:
        return "all_saturated"
    if cheapest is not None and cheapest.route is not s.route:
        if cheapest.excluded == "saturated":
            return "spillover_queue_full"
        if cheapest.excluded in ("breaker_open", "unhealthy"):
            return "failover_unhealthy"
        if policy.kind == "fastest":
            return "fastest_healthy"
        return "latency_over_target"
    return {"cheapest": "cheapest_healthy", "fastest": "fastest_healthy"}.get(policy.kind, "cheapest_healthy")
