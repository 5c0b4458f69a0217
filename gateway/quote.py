"""A dry run (`?dryRun=true`): what a request would cost, where it would go and whether it would
be admitted now, with nothing generated, charged, counted against a limit or written to the ledger.

The body is Lumenfall's quote (`estimated`, `model`, `provider`, `total_cost_micros`, `currency`,
`components[]`), plus the route and why, the expected time to result, and the admission verdict.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.accounting.keys import Principal
from gateway.accounting.metering import Meter
from gateway.catalog import micros_to_usd
from gateway.errors import GatewayError
from gateway.images.validation import ValidRequest
from gateway.routing.dispatch import Dispatcher, RoutingRequest


async def dry_run(
    meter: Meter, dispatcher: Dispatcher, principal: Principal, valid: ValidRequest, routing: RoutingRequest
) -> dict[str, Any]:
    spec = valid.model
    total = spec.price_micros(valid.size, valid.n)
    preview = await meter.preview(principal.team_id, valid.n, total)
    try:
        calls = await dispatcher.planned_calls(valid, routing, claim=False)
        images, planned = calls[0]
        # parts planned as they start (a baseline policy): the first is planned like this one
        plan = planned if planned is not None else await dispatcher.plan(replace(valid, n=images), routing, claim=False)
        # Split at once: when the last call is done; parts planned as they start: the first part.
        at_once = all(p is not None for _, p in calls)
        expected = max(p[0].expected_s for _, p in calls if p is not None) if at_once else plan[0].expected_s
        route: dict[str, Any] = {
            "provider": plan[0].route.provider,
            "reason": plan[0].reason,
            "expected_seconds": round(expected, 3),
            "fallbacks": [p.route.provider for p in plan[1:]],
            "parts": len(calls),
        }
        if at_once:  # where each part would go
            route["split"] = [{"provider": p[0].route.provider, "images": k} for k, p in calls if p is not None]
    except GatewayError as exc:  # no route now: the quote still stands, the route says why
        route = {"provider": None, "reason": exc.message}
    admission = {
        "admitted": preview.admitted,
        "refused_by": None if preview.admitted else preview.verdict,
        "budget_usd": micros_to_usd(preview.budget_micros),
        "budget_left_usd": micros_to_usd(
            max(0, preview.budget_micros - preview.spent_micros - preview.reserved_micros)
        ),
        "requests_remaining": preview.limits.requests_remaining,
        "images_remaining": preview.limits.images_remaining,
        "in_flight": preview.in_flight,
        "max_in_flight": preview.max_in_flight,
    }
    return {
        "estimated": True,
        "model": spec.id,
        # Routing is evaluated again on the real request; the provider may differ then.
        "provider": route["provider"],
        "total_cost_micros": total,
        "currency": "USD",
        "components": [
            {
                "type": "output",
                "metric": "image",
                "quantity": valid.n,
                "billable_quantity": valid.n,
                "unit_price": micros_to_usd(total // valid.n),
                "total_cost": total,
            }
        ],
        "route": route,
        "admission": admission,
        "size": valid.size,
        "generated_size": valid.generated_size,
        "output_format": valid.output_format,
        "ignored_params": list(valid.ignored),
    }
