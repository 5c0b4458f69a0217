"""The admin API (Bearer admin key): teams, their limits and budgets, and their API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.accounting.keys import ApiKey, Team, TeamLimits, TeamNotFoundError
from gateway.api.deps import Admin, State
from gateway.api.schemas import ApiKeyList, DeletedApiKey, NewApiKey, TeamList, TeamObject
from gateway.errors import NotFoundError

router = APIRouter(prefix="/admin", dependencies=[Admin])


# strict: a 0 is not a false and "5" is not a 5; an admin's typo is a 400 naming the field, not a
# guess. (JSON integers still count as numbers for the budget.)
class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    requests_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    images_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    max_in_flight: int | None = Field(default=None, ge=1, le=100_000)


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64)
    monthly_budget_usd: float | None = Field(default=None, ge=0, le=10_000_000)
    limits: LimitsIn | None = None
    allow_provider_pinning: bool = False


class TeamPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = Field(default=None, min_length=1, max_length=64)
    monthly_budget_usd: float | None = Field(default=None, ge=0, le=10_000_000)
    limits: LimitsIn | None = None
    allow_provider_pinning: bool | None = None
    # true: every request of the team's keys is refused (403 team_disabled) until set false again
    disabled: bool | None = None


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(default="", max_length=64)


def team_json(team: Team) -> dict[str, Any]:
    return {
        "id": team.id,
        "object": "team",
        "name": team.name,
        "monthly_budget_usd": team.monthly_budget_usd,
        "limits": {
            "requests_per_minute": team.limits.requests_per_minute,
            "images_per_minute": team.limits.images_per_minute,
            "max_in_flight": team.limits.max_in_flight,
        },
        "created": team.created,
        "allow_provider_pinning": team.allow_provider_pinning,
        "disabled": team.disabled,
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "object": "api_key",
        "team_id": key.team_id,
        "prefix": key.prefix,
        "name": key.name,
        "created": key.created,
        "last_used": key.last_used,
    }


def _merge(base: TeamLimits, patch: LimitsIn | None) -> TeamLimits:
    if patch is None:
        return base
    return TeamLimits(
        requests_per_minute=patch.requests_per_minute or base.requests_per_minute,
        images_per_minute=patch.images_per_minute or base.images_per_minute,
        max_in_flight=patch.max_in_flight or base.max_in_flight,
    )


async def _team(state: State, team_id: str) -> Team:
    try:
        return await state.keys.get_team(team_id)
    except TeamNotFoundError:
        raise NotFoundError(f"No team '{team_id}'.", param="team_id") from None


@router.post("/teams", status_code=201, response_model=None, responses={201: {"model": TeamObject}})
async def create_team(body: TeamIn, state: State) -> dict[str, Any]:
    s = state.settings
    defaults = TeamLimits(s.default_requests_per_minute, s.default_images_per_minute, s.default_max_in_flight)
    budget = s.default_monthly_budget_usd if body.monthly_budget_usd is None else body.monthly_budget_usd
    team = await state.keys.create_team(
        body.name, budget, _merge(defaults, body.limits), allow_provider_pinning=body.allow_provider_pinning
    )
    return team_json(team)


@router.get("/teams", response_model=None, responses={200: {"model": TeamList}})
async def list_teams(state: State) -> dict[str, Any]:
    return {"object": "list", "data": [team_json(t) for t in await state.keys.list_teams()]}


@router.get("/teams/{team_id}", response_model=None, responses={200: {"model": TeamObject}})
async def get_team(team_id: str, state: State) -> dict[str, Any]:
    return team_json(await _team(state, team_id))


@router.patch("/teams/{team_id}", response_model=None, responses={200: {"model": TeamObject}})
async def patch_team(team_id: str, body: TeamPatch, state: State) -> dict[str, Any]:
    team = await _team(state, team_id)
    updated = await state.keys.update_team(
        team_id,
        name=body.name,
        budget_usd=body.monthly_budget_usd,
        limits=_merge(team.limits, body.limits),
        allow_provider_pinning=body.allow_provider_pinning,
        disabled=body.disabled,
    )
    return team_json(updated)


@router.post("/teams/{team_id}/keys", status_code=201, response_model=None, responses={201: {"model": NewApiKey}})
async def create_key(team_id: str, state: State, body: KeyIn | None = None) -> dict[str, Any]:
    await _team(state, team_id)
    key, plain = await state.keys.create_key(team_id, (body or KeyIn()).name)
    return {**key_json(key), "key": plain}


@router.get("/teams/{team_id}/keys", response_model=None, responses={200: {"model": ApiKeyList}})
async def list_keys(team_id: str, state: State) -> dict[str, Any]:
    await _team(state, team_id)
    return {"object": "list", "data": [key_json(k) for k in await state.keys.list_keys(team_id)]}


@router.delete("/keys/{key_id}", response_model=None, responses={200: {"model": DeletedApiKey}})
async def revoke_key(key_id: str, state: State) -> dict[str, Any]:
    if not await state.keys.revoke_key(key_id):
        raise NotFoundError(f"No key '{key_id}'.", param="key_id")
    return {"id": key_id, "object": "api_key", "deleted": True}
