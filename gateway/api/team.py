"""GET /v1/team: the calling team's own settings, keys (never a secret) and this month's usage by
provider, read-only, for the team portal (gateway/web/) and for scripts alike."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from gateway.accounting.usage import ledger_lines, parse_month
from gateway.api.admin import key_json, team_json
from gateway.api.deps import State, Team
from gateway.api.schemas import ApiKeyObject, TeamObject
from gateway.api.usage import MonthParam
from gateway.catalog import micros_to_usd, usd_to_micros

router = APIRouter()


class TeamKeyOut(ApiKeyObject):
    current: bool  # the key this request came with


class ProviderUsage(BaseModel):
    provider: str
    requests: int
    images: int
    charged_usd: float


class TeamSelf(TeamObject):
    keys: list[TeamKeyOut]
    month: str
    by_provider: list[ProviderUsage]


def by_provider(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests that reached a provider, per provider: how many, their images, what they were charged."""
    rows: dict[str, dict[str, Any]] = {}
    for line in lines:
        if not line["provider"]:
            continue
        row = rows.setdefault(line["provider"], {"provider": line["provider"], "requests": 0, "images": 0, "micros": 0})
        row["requests"] += 1
        row["images"] += line["images"] if line["status"] == "succeeded" else 0
        row["micros"] += usd_to_micros(line["charged_usd"])
    return [
        {"provider": r["provider"], "requests": r["requests"], "images": r["images"],
         "charged_usd": micros_to_usd(r["micros"])}
        for r in sorted(rows.values(), key=lambda r: r["provider"])
    ]  # fmt: skip


@router.get("/v1/team", response_model=None, responses={200: {"model": TeamSelf}})
async def own_team(state: State, principal: Team, month: str | None = MonthParam) -> dict[str, Any]:
    m = parse_month(month)
    team = await state.keys.get_team(principal.team_id)
    keys = [key_json(k) | {"current": k.id == principal.key_id} for k in await state.keys.list_keys(team.id)]
    lines = await ledger_lines(state.redis, team.id, m, state.archive)
    return team_json(team) | {"keys": keys, "month": m, "by_provider": by_provider(lines)}
