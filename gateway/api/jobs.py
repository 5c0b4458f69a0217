"""Async jobs over HTTP: `Prefer: respond-async` on the image routes answers 202 with a job
(submitted here, served by gateway/jobs/runner.py), GET and DELETE /v1/images/jobs/{job_id}, and
the admin routes for a team's webhook secret and default webhook URL."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request

from gateway.accounting.keys import Principal, TeamNotFoundError
from gateway.api.deps import Admin, State, Team
from gateway.api.job_schemas import JobObject, WebhookSecret, WebhookSettings, WebhookSettingsIn
from gateway.api.state import AppState
from gateway.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from gateway.images.validation import ValidRequest
from gateway.jobs.service import JobService
from gateway.routing.dispatch import RoutingRequest

router = APIRouter()
admin_router = APIRouter(prefix="/admin", dependencies=[Admin])


def wants_async(request: Request) -> bool:
    """Whether the caller prefers an async answer (RFC 7240: `Prefer: respond-async`, among others)."""
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            if preference.split(";")[0].split("=")[0].strip().lower() == "respond-async":
                return True
    return False


def _jobs(state: AppState) -> JobService:
    if state.jobs is None:
        raise ServiceUnavailableError("Async jobs are not running in this gateway.")
    return state.jobs


async def submit(
    request: Request, state: AppState, principal: Principal, valid: ValidRequest, routing: RoutingRequest
) -> tuple[dict[str, Any], dict[str, str]]:
    """The 202 answer's body and headers."""
    if request.headers.get("idempotency-key") is not None:
        raise InvalidRequestError(
            "Idempotency-Key is not taken with Prefer: respond-async: the job's id is its handle.",
            param="Idempotency-Key",
        )
    submitted = await _jobs(state).submit(principal, valid, routing)
    return submitted.body, submitted.headers


def refuse_webhook_without_job(valid: ValidRequest) -> None:
    if valid.webhook_url is not None:
        raise InvalidRequestError(
            "webhook_url is for async jobs: send the request with the header Prefer: respond-async.",
            param="webhook_url",
        )


@router.get("/v1/images/jobs/{job_id}", response_model=None, responses={200: {"model": JobObject}})
async def get_job(job_id: str, state: State, principal: Team) -> dict[str, Any]:
    return await _jobs(state).get(principal.team_id, job_id)


@router.delete("/v1/images/jobs/{job_id}", response_model=None, responses={200: {"model": JobObject}})
async def cancel_job(job_id: str, state: State, principal: Team) -> dict[str, Any]:
    return await _jobs(state).cancel(principal.team_id, job_id)


async def _team(state: AppState, team_id: str) -> None:
    try:
        await state.keys.get_team(team_id)
    except TeamNotFoundError:
        raise NotFoundError(f"No team '{team_id}'.", param="team_id") from None


@admin_router.post(
    "/teams/{team_id}/webhook-secret", status_code=201, response_model=None, responses={201: {"model": WebhookSecret}}
)
async def rotate_secret(team_id: str, state: State) -> dict[str, Any]:
    """Make the team's webhook signing secret, or replace it (shown only in this answer)."""
    await _team(state, team_id)
    secret = await _jobs(state).webhooks.rotate_secret(team_id)
    return {"object": "webhook_secret", "team_id": team_id, "secret": secret}


@admin_router.get("/teams/{team_id}/webhook", response_model=None, responses={200: {"model": WebhookSettings}})
async def get_webhook(team_id: str, state: State) -> dict[str, Any]:
    await _team(state, team_id)
    url, has_secret = await _jobs(state).webhooks.settings(team_id)
    return {"object": "webhook_settings", "team_id": team_id, "url": url, "has_secret": has_secret}


@admin_router.put("/teams/{team_id}/webhook", response_model=None, responses={200: {"model": WebhookSettings}})
async def put_webhook(team_id: str, body: WebhookSettingsIn, state: State) -> dict[str, Any]:
    """The team's default webhook URL (checked as a job's webhook_url is)."""
    await _team(state, team_id)
    jobs = _jobs(state)
    if body.url is not None:
        await jobs.check_webhook_url(body.url, param="url")
    await jobs.webhooks.set_default_url(team_id, body.url)
    return await get_webhook(team_id, state)
