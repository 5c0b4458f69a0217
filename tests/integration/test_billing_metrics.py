"""Team budgets and month-to-date spend exported from a real Redis: the gauges say what the
settlement script wrote, a renamed team keeps one current name, and Redis going away shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.accounting.billing_metrics import BillingMetrics
from gateway.accounting.keys import KeyStore, TeamLimits
from gateway.accounting.metering import Admission, Meter, Settlement
from gateway.accounting.usage import month_usage, parse_month
from gateway.metrics import Metrics
from gateway.redis.client import connect
from tests.redis_server import RedisServer

LIMITS = TeamLimits(requests_per_minute=100, images_per_minute=100, max_in_flight=10)


def _value(metrics: Metrics, metric: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


async def test_gauges_equal_the_months_aggregates_in_redis(redis_url: str) -> None:
    redis = connect(redis_url)
    try:
        keys, meter, metrics = KeyStore(redis), Meter(redis), Metrics()
        billing = BillingMetrics(redis, metrics)
        design = await keys.create_team("design", 1.0, LIMITS)
        idle = await keys.create_team("idle", 250.0, LIMITS)
        for i, (status, images) in enumerate([("succeeded", 2), ("succeeded", 1), ("failed", 0)]):
            admitted = await meter.admit(design.id, f"req_{i}", max(images, 1), 50_000 * max(images, 1), hold_s=60)
            assert isinstance(admitted, Admission)
            charge = 50_000 * images
            await meter.settle(admitted, Settlement(status, images, charge, 14_000 * images, "hidream-i1-full"))
        held = await meter.admit(design.id, "req_held", 1, 50_000, hold_s=60)  # still in flight
        assert isinstance(held, Admission)

        await billing.refresh()

        usage = await month_usage(redis, design.id, parse_month(None))
        assert usage.spent_micros == 150_000 and usage.reserved_micros == 50_000
        assert _value(metrics, "gateway_team_spend_month_usd", team=design.id) == pytest.approx(0.15)
        assert _value(metrics, "gateway_team_reserved_usd", team=design.id) == pytest.approx(0.05)
        assert _value(metrics, "gateway_team_provider_cost_month_usd", team=design.id) == pytest.approx(0.042)
        assert _value(metrics, "gateway_team_images_month", team=design.id) == 3
        assert _value(metrics, "gateway_team_budget_usd", team=design.id) == 1.0
        assert _value(metrics, "gateway_team_info", team=design.id, name="design") == 1
        assert _value(metrics, "gateway_team_model_spend_month_usd", team=design.id, model="hidream-i1-full") == (
            pytest.approx(0.15)
        )
        assert _value(metrics, "gateway_team_budget_usd", team=idle.id) == 250.0
        assert _value(metrics, "gateway_team_spend_month_usd", team=idle.id) == 0
        assert _value(metrics, "gateway_redis_up") == 1
    finally:
        await redis.aclose()


async def test_a_renamed_team_has_one_current_name_and_a_new_budget(redis_url: str) -> None:
    redis = connect(redis_url)
    try:
        keys, metrics = KeyStore(redis), Metrics()
        billing = BillingMetrics(redis, metrics)
        team = await keys.create_team("design", 10.0, LIMITS)
        await billing.refresh()
        await keys.update_team(team.id, name="brand", budget_usd=20.0, limits=None)
        await billing.refresh()
        assert _value(metrics, "gateway_team_info", team=team.id, name="brand") == 1
        assert _value(metrics, "gateway_team_info", team=team.id, name="design") == 0
        assert _value(metrics, "gateway_team_budget_usd", team=team.id) == 20.0
    finally:
        await redis.aclose()


async def test_a_new_month_starts_from_nothing_billed(redis_url: str) -> None:
    redis = connect(redis_url)
    try:
        keys, meter, metrics = KeyStore(redis), Meter(redis), Metrics()
        month = [parse_month(None)]
        billing = BillingMetrics(redis, metrics, current_month=lambda: month[0])
        team = await keys.create_team("design", 10.0, LIMITS)
        admitted = await meter.admit(team.id, "req_1", 1, 50_000, hold_s=60)
        assert isinstance(admitted, Admission)
        await meter.settle(admitted, Settlement("succeeded", 1, 50_000, 14_000, "hidream-i1-fast"))
        await billing.refresh()
        assert _value(metrics, "gateway_team_model_spend_month_usd", team=team.id, model="hidream-i1-fast") == 0.05

        month[0] = "2999-01"
        await billing.refresh()
        assert _value(metrics, "gateway_team_spend_month_usd", team=team.id) == 0
        assert _value(metrics, "gateway_team_model_spend_month_usd", team=team.id, model="hidream-i1-fast") == 0
        assert _value(metrics, "gateway_team_budget_usd", team=team.id) == 10.0
    finally:
        await redis.aclose()


@pytest.mark.slow
async def test_redis_going_away_shows_as_down_and_as_errors_then_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    redis = connect(server.url)
    try:
        metrics = Metrics()
        billing = BillingMetrics(redis, metrics)
        team = await KeyStore(redis).create_team("design", 10.0, LIMITS)
        await billing.refresh()
        assert _value(metrics, "gateway_redis_up") == 1

        server.kill()
        await billing.refresh()
        assert _value(metrics, "gateway_redis_up") == 0
        assert _value(metrics, "gateway_redis_errors_total", operation="billing_metrics") == 1
        # The last values read stay exported (a budget does not become 0 while Redis is away).
        assert _value(metrics, "gateway_team_budget_usd", team=team.id) == 10.0

        server.start()  # same port, same append-only file
        await billing.refresh()
        assert _value(metrics, "gateway_redis_up") == 1
    finally:
        await redis.aclose()
        server.stop()
