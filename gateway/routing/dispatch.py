"""Calling providers for one request: ask the router for the order, try each route within the
request's deadline, fall to the next on a retryable failure, and feed every outcome back into
the shared route health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from gateway.catalog import BASELINE_POLICIES, Route, RoutingPolicy
from gateway.errors import (
    InvalidRequestError,
    ServiceUnavailableError,
    UpstreamTimeoutError,
    from_provider_error,
)
from gateway.images.validation import MAX_SEED, ValidRequest
from gateway.metrics import Metrics
from gateway.routing.breaker import RouteHealth
from gateway.routing.fan_out import plan_calls
from gateway.routing.health import HealthBoard
from gateway.routing.router import Planned, Router
from providers.base import (
    ErrorKind,
    ImageProvider,
    ImageRequest,
    ImageResult,
    PassesThrough,
    ProgressEvent,
    ProviderBadResponseError,
    ProviderError,
    Reattachable,
    ReportsProgress,
)

# Failures that say a route is full, not broken: room comes back as its queue drains.
BUSY = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.NOT_READY})
DEFAULT_BUSY_WAIT_S = 1.0  # when a full route did not say how long


class _Exhausted(Exception):
    """Every route of a plan failed, each retryably; `busy_wait_s`: the soonest one that was only
    full said it may have room (None: none was full)."""

    def __init__(self, last: ProviderError, busy_wait_s: float | None) -> None:
        super().__init__(last.message)
        self.last = last
        self.busy_wait_s = busy_wait_s


# Told (route's provider, the upstream's handle) once a route's upstream has taken the request.
OnSubmitted = Callable[[str, str], Awaitable[None]]

log = logging.getLogger(__name__)

# Failures the request itself may have caused, although the upstream took it: an answer we could
# not parse may be one that echoes the caller's input (a prompt the upstream encodes but we cannot
# read back). The route's breaker counts them only once a second team sees them, so one team cannot
# shut a route for every team. Refusals, 5xx, timeouts and lost connections are the upstream's
# own, and count at once: a route broken for its only team must still open.
CALLER_MAY_CAUSE = frozenset({ErrorKind.BAD_RESPONSE})


@dataclass(frozen=True, slots=True)
class RoutingRequest:
    """How this request wants to be routed (the model's policy unless the caller asked otherwise)."""

    policy: RoutingPolicy
    pinned: str | None = None


@dataclass(frozen=True, slots=True)
class Attempted:
    provider: str  # the route that served it; several joined by "," for a fanned-out request
    result: ImageResult
    reason: str
    upstream_s: float
    cost_micros: int  # what the upstream calls cost the organisation
    ignored: tuple[str, ...] = ()  # passed parameters a route could not take


class Listener(Protocol):
    """A streamed request's ear on its upstream calls. `first`: the index, in the request's images,
    of the first image of the call it is about."""

    def progress(self, first: int, event: ProgressEvent) -> None:
        """What a route that reports progress said (ReportsProgress); must not block."""

    async def part_done(self, first: int, attempted: Attempted) -> None:
        """A call's images are in, before the request's other calls are."""


class Dispatcher:
    def __init__(
        self,
        providers: Mapping[str, ImageProvider],
        router: Router,
        route_health: RouteHealth,
        board: HealthBoard,
        metrics: Metrics,
    ) -> None:
        self._providers = providers
        # Each provider's optional capabilities, looked up once: isinstance against a runtime
        # Protocol walks its members on every call (about 1 % of a request's CPU in a profile).
        self._passes = {name: isinstance(p, PassesThrough) for name, p in providers.items()}
        self._reporting = {name: p if isinstance(p, ReportsProgress) else None for name, p in providers.items()}
        self._router = router
        self._health = route_health
        self._board = board
        self._metrics = metrics

    def candidates(self, valid: ValidRequest) -> list[Route]:
        """Routes that are configured and able to serve this request."""
        return [
            r
            for r in valid.model.routes
            if r.provider in self._providers and valid.n <= r.max_n and (not valid.images or r.edit_model is not None)
        ]

    def part_size(self, valid: ValidRequest, routing: RoutingRequest) -> int:
        """The most images one upstream call makes for this request (past it, a fan-out)."""
        usable = [r for r in valid.model.routes if r.provider in self._providers]
        return max((r.max_n for r in usable if routing.pinned in (None, r.provider)), default=valid.n)

    def check_pin(self, valid: ValidRequest, pinned: str) -> None:
        if pinned not in {r.provider for r in self.candidates(replace(valid, n=1))}:
            raise InvalidRequestError(
                f"Provider '{pinned}' cannot serve this request for {valid.model.id}.",
                param="model" if valid.pinned is not None else "x-gateway-provider",
            )

    async def plan(self, valid: ValidRequest, routing: RoutingRequest, *, claim: bool = True) -> list[Planned]:
        """The routes this request would try now, best first; ServiceUnavailableError with none.
        `claim=False` (a dry run) takes no breaker trial."""
        routes = self.candidates(valid)
        if not routes:
            raise ServiceUnavailableError(
                f"No provider is configured that can serve this request for {valid.model.id}.",
                headers={"retry-after": "30"},
            )
        plan = await self._router.plan(
            routes,
            self._board.current(),
            width=valid.gen_width,
            height=valid.gen_height,
            n=valid.n,
            policy=routing.policy,
            pinned=routing.pinned,
            claim=claim,
        )
        if not plan:
            raise ServiceUnavailableError(
                f"No healthy provider can serve {valid.model.id} right now.", headers={"retry-after": "5"}
            )
        return plan

    async def call(
        self,
        valid: ValidRequest,
        request_id: str,
        deadline: float,
        routing: RoutingRequest,
        *,
        team_id: str,
        on_submitted: OnSubmitted | None = None,
        listener: Listener | None = None,
    ) -> Attempted:
        """One upstream call with fallbacks, or a fan-out over several (see _fan_out): n > 1 is
        split over the routes where its images are done soonest within the latency target at the
        least cost (fan_out.py; a baseline policy or a pinned route fans out only past the routes'
        max_n). `on_submitted`: told the upstream's handle on a single call (an async job keeps it
        to re-attach; a fan-out's parts are not re-attached). With a `listener` (a stream), each
        image is a call of its own, so that each is sent to the caller as soon as it is made."""
        calls = await self.planned_calls(valid, routing, most_per_call=1 if listener is not None else None)
        if len(calls) == 1 and calls[0][1] is not None:
            return await self._attempt(
                calls[0][1], valid, request_id, deadline, team_id, routing, on_submitted, listener
            )
        return await self._fan_out(valid, request_id, deadline, routing, team_id, calls, listener)

    async def planned_calls(
        self, valid: ValidRequest, routing: RoutingRequest, *, claim: bool = True, most_per_call: int | None = None
    ) -> list[tuple[int, list[Planned] | None]]:
        """The upstream calls this request would make now: (images, routes to try in order) each.
        n > 1 is split at once over the routes (fan_out.py); under a baseline policy or a pinned
        route, only past the routes' max_n, in parts whose routes are None: each is planned as it
        starts, and so sees the queue the earlier parts made. `most_per_call`: a cap on a call's
        images (1 for a stream). `claim=False` (a dry run) claims no breaker trial."""
        if valid.n > 1 and routing.pinned is None and routing.policy.kind not in BASELINE_POLICIES:
            one = await self.plan(replace(valid, n=1), routing, claim=claim)
            return list(plan_calls(valid.n, one, routing.policy, most_per_call=most_per_call))
        part = most_per_call or self.part_size(valid, routing)
        if valid.n > part:
            counts = [part] * (valid.n // part) + ([valid.n % part] if valid.n % part else [])
            return [(k, None) for k in counts]
        return [(valid.n, await self.plan(valid, routing, claim=claim))]

    async def reattach(
        self, valid: ValidRequest, request_id: str, deadline: float, provider_name: str, handle: str
    ) -> Attempted | None:
        """Wait for a request an upstream already holds (submitted by a process that died); None
        when that cannot be done (the route is gone, or its upstream cannot re-attach)."""
        provider = self._providers.get(provider_name)
        route = next((r for r in self.candidates(valid) if r.provider == provider_name), None)
        if route is None or not isinstance(provider, Reattachable):
            return None
        passes = isinstance(provider, PassesThrough)
        request = _provider_request(valid, request_id, deadline - time.monotonic(), with_extra=passes)
        t0 = time.monotonic()
        result = await provider.reattach(route.target, request, handle)
        _check_result(route, valid, result)
        elapsed = time.monotonic() - t0
        cost = route.cost_micros(valid.gen_width, valid.gen_height, valid.n)
        return Attempted(
            route.provider, result, "reattached", elapsed, cost, () if passes else tuple(sorted(valid.extra))
        )

    async def _fan_out(
        self,
        valid: ValidRequest,
        request_id: str,
        deadline: float,
        routing: RoutingRequest,
        team_id: str,
        parts: Sequence[tuple[int, list[Planned] | None]],
        listener: Listener | None = None,
    ) -> Attempted:
        """The request as several upstream calls run in parallel, each with its own fallbacks:
        (images, routes) per call, as split at once (fan_out.py), or with routes None, each part
        planned as it starts (a baseline policy or a pinned route: the router then sees the queue
        the earlier parts made). All n or nothing: the first part that fails for good cancels the
        others, and what finished parts cost is counted as waste."""
        tasks: list[asyncio.Task[Attempted]] = []
        first = 0
        try:
            for i, (k, planned) in enumerate(parts):
                seed = None if valid.seed is None else (valid.seed + first) % (MAX_SEED + 1)
                part = replace(valid, n=k, seed=seed)
                plan = planned if planned is not None else await self.plan(part, routing)
                attempt = self._attempt(
                    plan, part, f"{request_id}-{i}", deadline, team_id, routing, listener=listener, first=first
                )
                tasks.append(asyncio.create_task(attempt))
                await asyncio.sleep(0)  # let the part reach its upstream before the next is planned
                first += k
            done = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            finished = await asyncio.gather(*tasks, return_exceptions=True)
            for got in finished:
                if isinstance(got, Attempted):
                    for provider in got.provider.split(","):
                        self._metrics.wasted_cost.labels(valid.model.id, provider).inc(got.cost_micros / 1e6)
            raise
        providers = ",".join(dict.fromkeys(p for a in done for p in a.provider.split(",")))
        images = tuple(img for a in done for img in a.result.images)
        return Attempted(
            providers,
            ImageResult(images, seed=valid.seed),
            "fan_out",
            max(a.upstream_s for a in done),
            sum(a.cost_micros for a in done),
            tuple(sorted({i for a in done for i in a.ignored})),
        )

    async def _attempt(
        self,
        plan: list[Planned],
        valid: ValidRequest,
        request_id: str,
        deadline: float,
        team_id: str,
        routing: RoutingRequest,
        on_submitted: OnSubmitted | None = None,
        listener: Listener | None = None,
        first: int = 0,
    ) -> Attempted:
        """The plan's routes in order until one answers, within the deadline. When every route
        failed and one of them was only full (an owned GPU's queue, a rate limit), wait as long as
        it said it needs and try a fresh plan, as long as the deadline leaves time: a request the
        team accepts to wait for is not failed because every route was busy at once (a full GPU
        queue while fal fails, say)."""
        while True:
            try:
                return await self._attempt_plan(
                    plan, valid, request_id, deadline, team_id, on_submitted, listener, first
                )
            except _Exhausted as exhausted:
                wait = exhausted.busy_wait_s
                if wait is None or wait >= deadline - time.monotonic():
                    raise from_provider_error(exhausted.last) from exhausted.last
            self._metrics.busy_waits.labels(valid.model.id).inc()
            log.info("every route for %s is full; trying again in %.1f s", valid.model.id, wait)
            await asyncio.sleep(wait)
            plan = await self.plan(valid, routing)

    async def _attempt_plan(
        self,
        plan: list[Planned],
        valid: ValidRequest,
        request_id: str,
        deadline: float,
        team_id: str,
        on_submitted: OnSubmitted | None,
        listener: Listener | None,
        first: int,
    ) -> Attempted:
        """One pass over the plan; _Exhausted when every route failed and could be tried again."""
        last: ProviderError | None = None
        busy_wait: float | None = None  # the soonest a full route said it may have room
        for i, planned in enumerate(plan):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            route = planned.route
            provider = self._providers[route.provider]
            passes = self._passes[route.provider]
            reporting = self._reporting[route.provider] if listener is not None else None
            previews = reporting is not None and reporting.makes_partial_images
            request = _provider_request(valid, request_id, remaining, with_extra=passes, previews=previews)
            if on_submitted is not None:
                request = replace(request, on_submitted=partial(on_submitted, route.provider))
            t0 = time.monotonic()
            try:
                with self._router.attempt(route):
                    if reporting is not None and listener is not None:
                        report = partial(listener.progress, first)
                        result = await reporting.generate_reporting(route.target, request, report)
                    else:
                        result = await provider.generate(route.target, request)
                _check_result(route, valid, result)
            except ProviderError as err:
                elapsed = time.monotonic() - t0
                await self._failed(route, err, elapsed, team_id)
                if not err.retryable:
                    raise from_provider_error(err) from err
                last = err
                if err.kind in BUSY:
                    said = err.retry_after_s if err.retry_after_s else DEFAULT_BUSY_WAIT_S
                    busy_wait = said if busy_wait is None else min(busy_wait, said)
                if i + 1 < len(plan):
                    self._metrics.fallbacks.labels(route.model, route.provider).inc()
                continue
            elapsed = time.monotonic() - t0
            await self._health.succeeded(route.provider, route.model, elapsed)
            self._metrics.upstream_duration.labels(route.provider, route.model, "ok").observe(elapsed)
            self._metrics.routed.labels(route.model, route.provider, planned.reason).inc()
            # partial_images asked of a route that makes none (fal): named, as any parameter ignored.
            unmade = ("partial_images",) if valid.partial_images and not previews else ()
            attempted = Attempted(
                route.provider,
                result,
                planned.reason,
                elapsed,
                route.cost_micros(valid.gen_width, valid.gen_height, valid.n),
                tuple(sorted({*(() if passes else valid.extra), *unmade})),
            )
            if listener is not None:
                await listener.part_done(first, attempted)
            return attempted
        if last is None:
            raise UpstreamTimeoutError("The request ran out of time before any provider answered.")
        raise _Exhausted(last, busy_wait)

    async def _failed(self, route: Route, err: ProviderError, elapsed: float, team_id: str) -> None:
        self._metrics.upstream_errors.labels(route.provider, route.model, err.kind.value).inc()
        self._metrics.upstream_duration.labels(route.provider, route.model, "error").observe(elapsed)
        # The message may quote the caller's input (a prompt), so it is logged only at debug level.
        log.info("route %s for %s failed: %s (upstream status %s)", route.provider, route.model, err.kind.value,
                 err.upstream_status)  # fmt: skip
        log.debug("route %s failure detail: %s", route.provider, err.message)
        if err.retryable:  # bad input is the caller's fault, not a sign of an unhealthy route
            suspect = team_id if err.kind in CALLER_MAY_CAUSE else None
            await self._health.record(route.provider, route.model, False, None, suspect_team=suspect)


def _provider_request(
    valid: ValidRequest, request_id: str, remaining_s: float, *, with_extra: bool, previews: bool = False
) -> ImageRequest:
    """The upstream makes the native size, in the asked format where it can (lossless when the
    gateway encodes it with the asked compression); when the gateway converts, it needs bytes."""
    lossless = valid.converted or valid.output_compression is not None
    return ImageRequest(
        request_id=request_id,
        model=valid.model.id,
        prompt=valid.prompt,
        n=valid.n,
        width=valid.gen_width,
        height=valid.gen_height,
        response_format="b64_json" if valid.needs_bytes else valid.response_format,
        num_inference_steps=valid.num_inference_steps,
        guidance_scale=valid.guidance_scale,
        negative_prompt=valid.negative_prompt,
        seed=valid.seed,
        images=valid.images,
        mask=valid.mask,
        strength=valid.strength,
        timeout_s=remaining_s,
        output_format="png" if lossless else valid.output_format,
        extra=valid.extra if with_extra else {},
        partial_images=valid.partial_images if previews else 0,
    )


def _check_result(route: Route, valid: ValidRequest, result: ImageResult) -> None:
    """A provider that answers with the wrong number or shape of images has failed."""
    if len(result.images) != valid.n:
        raise ProviderBadResponseError(f"asked for {valid.n} images, got {len(result.images)}", provider=route.provider)
    for img in result.images:
        if (img.width, img.height) != (valid.gen_width, valid.gen_height):
            raise ProviderBadResponseError(
                f"asked for {valid.generated_size}, got {img.width}x{img.height}", provider=route.provider
            )
        if img.data is None and (img.url is None or valid.response_format == "b64_json" or valid.needs_bytes):
            raise ProviderBadResponseError("an image came without bytes", provider=route.provider)
