"""Budgets and month-to-date spend per team, copied from Redis into gauges for the Billing
dashboard and the budget alerts. Redis holds the truth (the settlement script writes it); this
reads it in the background every few seconds, so a scrape never touches Redis.

Every replica exports the same values, so dashboards take `max by (team)`, never `sum`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis.exceptions
from prometheus_client import Gauge

from gateway.accounting.keys import TEAMS_SET, team_prefix
from gateway.accounting.usage import parse_month
from gateway.catalog import micros_to_usd
from gateway.metrics import Metrics
from gateway.periodic import repeat
from gateway.redis.client import RedisClient, as_str

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


class BillingMetrics:
    def __init__(
        self,
        redis: RedisClient,
        metrics: Metrics,
        *,
        interval_s: float = 15.0,
        current_month: Callable[[], str] = lambda: parse_month(None),  # YYYY-MM, UTC like the ledger
    ) -> None:
        self._r = redis
        self._current_month = current_month
        self._metrics = metrics
        self._interval_s = interval_s
        self._names: dict[str, str] = {}  # team id -> the name this process last exported
        self._models: set[tuple[str, str]] = set()  # (team, model) series this process exported
        r = metrics.registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("team",)) -> Gauge:
            # mostrecent: with several worker processes the latest refresh wins, not a sum.
            return Gauge(name, doc, labels, multiprocess_mode="mostrecent", registry=r)

        self.budget = gauge("gateway_team_budget_usd", "The team's monthly budget (USD)")
        self.spent = gauge("gateway_team_spend_month_usd", "Billed to the team this month, UTC (USD)")
        self.reserved = gauge(
            "gateway_team_reserved_usd", "Quoted price of the team's requests in flight, held against its budget (USD)"
        )
        self.cost = gauge(
            "gateway_team_provider_cost_month_usd", "What serving the team cost the organisation this month (USD)"
        )
        self.images = gauge("gateway_team_images_month", "Images served to the team this month")
        self.model_spent = gauge(
            "gateway_team_model_spend_month_usd", "Billed to the team this month for one model (USD)", ("team", "model")
        )
        self.info = gauge("gateway_team_info", "1 for the team's current name (0 for a former one)", ("team", "name"))
        self.redis_up = gauge("gateway_redis_up", "1 when this process's last read of Redis succeeded", ())

    async def refresh(self) -> None:
        """One read of every team's record and this month's aggregates, in one pipeline."""
        month = self._current_month()
        try:
            ids = sorted(as_str(m) for m in await self._r.smembers(TEAMS_SET))
            async with self._r.pipeline(transaction=False) as pipe:
                for team_id in ids:
                    p = team_prefix(team_id)
                    # Fields written by keys.KeyStore and by the settlement/admission scripts.
                    pipe.hmget(p + "team", ["name", "budget_micros"])
                    pipe.hgetall(p + "usage:" + month)
                replies = await pipe.execute() if ids else []
        except REDIS_ERRORS as exc:
            log.warning("budget metrics not refreshed: Redis unavailable (%s)", type(exc).__name__)
            self._metrics.redis_errors.labels("billing_metrics").inc()
            self.redis_up.set(0)
            return
        self.redis_up.set(1)
        models: set[tuple[str, str]] = set()
        for i, team_id in enumerate(ids):
            (name, budget), raw = replies[2 * i], replies[2 * i + 1]
            if name is None or budget is None:
                continue  # listed but its record is gone
            usage = {as_str(k): int(v) for k, v in raw.items()}
            self.budget.labels(team_id).set(micros_to_usd(int(budget)))
            self.spent.labels(team_id).set(micros_to_usd(usage.get("spent_micros", 0)))
            self.reserved.labels(team_id).set(micros_to_usd(max(0, usage.get("reserved_micros", 0))))
            self.cost.labels(team_id).set(micros_to_usd(usage.get("cost_micros", 0)))
            self.images.labels(team_id).set(usage.get("images", 0))
            for model, micros in _spend_by_model(usage).items():
                self.model_spent.labels(team_id, model).set(micros_to_usd(micros))
                models.add((team_id, model))
            self._export_name(team_id, as_str(name))
        for team_id, model in self._models - models:
            self.model_spent.labels(team_id, model).set(0)  # a new month: nothing billed for it yet
        self._models |= models

    def _export_name(self, team_id: str, name: str) -> None:
        former = self._names.get(team_id)
        if former is not None and former != name:
            # A renamed team's old series is zeroed, not removed: in multiprocess mode a removed
            # series would live on in this process's file with its last value.
            self.info.labels(team_id, former).set(0)
        self.info.labels(team_id, name).set(1)
        self._names[team_id] = name

    async def run_forever(self) -> None:
        await repeat(self.refresh, self._interval_s, "budget metrics refresh")


def _spend_by_model(usage: dict[str, int]) -> dict[str, int]:
    """Micro-USD per model from the month's per-day fields `d|<day>|<model>|spent_micros`
    (written by scripts/settle.lua; gateway.accounting.usage reads them back for the usage API)."""
    out: dict[str, int] = {}
    for field, value in usage.items():
        parts = field.split("|")
        if len(parts) == 4 and parts[0] == "d" and parts[3] == "spent_micros":
            out[parts[2]] = out.get(parts[2], 0) + value
    return out
