"""Usage and billing: a team sees only its own (GET /v1/usage); the admin sees any team or all of
them, and exports a month's invoice lines from the ledger as JSON or CSV."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from gateway.accounting.keys import TeamNotFoundError
from gateway.accounting.usage import MONTH, ledger_lines, month_usage, parse_month, to_csv
from gateway.api.deps import Admin, State, Team
from gateway.api.schemas import Usage, UsageReport
from gateway.errors import NotFoundError

router = APIRouter()


# Documented, not enforced by FastAPI: parse_month refuses a bad month with its own message.
MonthParam = Query(
    default=None,
    description="YYYY-MM, 1970-01 or later; the current month by default.",
    json_schema_extra={"pattern": MONTH.pattern},
)


@router.get("/v1/usage", response_model=None, responses={200: {"model": Usage}})
async def team_usage(state: State, principal: Team, month: str | None = MonthParam) -> dict[str, Any]:
    m = parse_month(month)
    team = await state.keys.get_team(principal.team_id)
    usage = await month_usage(state.redis, principal.team_id, m)
    return usage.as_json(team.monthly_budget_usd)


@router.get(
    "/admin/usage",
    dependencies=[Admin],
    response_model=None,
    responses={200: {"model": UsageReport, "content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def admin_usage(
    state: State,
    team_id: str | None = Query(default=None),
    month: str | None = MonthParam,
    format: Literal["json", "csv"] = Query(default="json"),
) -> dict[str, Any] | PlainTextResponse:
    m = parse_month(month)
    if team_id:
        try:
            teams = [await state.keys.get_team(team_id)]
        except TeamNotFoundError:
            raise NotFoundError(f"No team '{team_id}'.", param="team_id") from None
    else:
        teams = await state.keys.list_teams()
    lines = [line for t in teams for line in await ledger_lines(state.redis, t.id, m, state.archive)]
    if format == "csv":
        return PlainTextResponse(
            to_csv(lines),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="usage-{m}.csv"'},
        )
    usages = [
        (await month_usage(state.redis, t.id, m)).as_json(t.monthly_budget_usd) | {"team_name": t.name} for t in teams
    ]
    return {"object": "usage_report", "month": m, "teams": usages, "lines": lines}
