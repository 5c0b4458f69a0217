"""GET /admin/routes: every route's live health for the admin page, from the data the router and
/ready use (the last probe with its live queue wait, the shared breaker and latency figures).
Admin only: it shows the deployment's providers, queues and failures."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.api.deps import Admin, State
from gateway.routing.health import RouteView

router = APIRouter(prefix="/admin", dependencies=[Admin])

RouteStatus = Literal["healthy", "saturated", "unhealthy", "not_configured", "not_probed"]


class BreakerOut(BaseModel):
    state: Literal["closed", "open", "half_open"]
    opened_at: float | None  # unix seconds it opened; None while closed


class LatencyOut(BaseModel):
    ewma_s: float | None
    p95_s: float | None
    samples: int  # the recent outcomes p95 is taken over


class RouteHealthOut(BaseModel):
    model: str
    provider: str
    status: RouteStatus
    healthy: bool
    detail: str
    queue_depth: int | None
    expected_wait_s: float | None  # the queue wait a new request would have now
    service_s: float | None  # one job's time once it runs, as the upstream measures it
    breaker: BreakerOut | None
    latency: LatencyOut | None


class RouteBoard(BaseModel):
    object: Literal["list"]
    data: list[RouteHealthOut]


def _status(view: RouteView) -> RouteStatus:
    probe = view.probe
    if not view.provider_configured or (probe is not None and not probe.configured):
        return "not_configured"
    if probe is None:
        return "not_probed"
    if not probe.healthy:
        return "unhealthy"
    return "saturated" if probe.saturated else "healthy"


def route_json(view: RouteView) -> dict[str, Any]:
    probe, stats = view.probe, view.stats
    detail = probe.detail if probe is not None else ""
    if not view.provider_configured:
        detail = f"the provider {view.provider} is not configured on this gateway"
    return {
        "model": view.model,
        "provider": view.provider,
        "status": _status(view),
        "healthy": probe is not None and probe.healthy,
        "detail": detail,
        "queue_depth": probe.queue_depth if probe is not None else None,
        "expected_wait_s": probe.expected_wait_s if probe is not None else None,
        "service_s": probe.service_s if probe is not None else None,
        "breaker": None if stats is None else {
            "state": stats.state,
            "opened_at": stats.opened_ms / 1000 if stats.opened_ms is not None and stats.state != "closed" else None,
        },
        "latency": None if stats is None else {"ewma_s": stats.ewma_s, "p95_s": stats.p95_s, "samples": stats.samples},
    }  # fmt: skip


@router.get("/routes", response_model=None, responses={200: {"model": RouteBoard}})
async def routes(state: State) -> dict[str, Any]:
    return {"object": "list", "data": [route_json(v) for v in await state.health.views()]}
