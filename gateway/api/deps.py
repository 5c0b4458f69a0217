"""Dependencies every router uses: the app state, and who is calling (a team key or the admin key)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer
from fastapi.security.base import SecurityBase

from gateway.accounting.keys import Principal
from gateway.api.state import AppState
from gateway.api.throttle import client_bucket
from gateway.errors import AuthenticationError, PermissionDeniedError


async def app_state(request: Request) -> AppState:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request
    state: AppState = request.app.state.gateway
    return state


State = Annotated[AppState, Depends(app_state)]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code=None)
    return token.strip()


async def team_principal(request: Request, state: State) -> Principal:
    token = _bearer(request)
    principal = await state.keys.authenticate(token)
    if principal is None:
        shown = token[:8] + "***" if len(token) > 12 else "***"
        raise AuthenticationError(f"Incorrect API key provided: {shown}.")
    return principal


async def _holds(request: Request, state: AppState, accepted: dict[str, str | None]) -> None:
    """The bearer token is one of the `accepted` secrets (setting name -> value, None when unset);
    wrong guesses are throttled per client address (gateway/api/throttle.py)."""
    token = _bearer(request)
    configured = [value for value in accepted.values() if value]
    names = " or ".join(accepted)
    if not configured:
        raise PermissionDeniedError(f"This endpoint is disabled: set {names}.")
    # Each compared in constant time; which one matched is no secret.
    ok = any(hmac.compare_digest(token.encode(), value.encode()) for value in configured)
    client = client_bucket(request.client.host if request.client else None)
    await state.secrets_throttle.attempt(client, ok=ok)  # 429 past the address's failures, right or wrong
    if not ok:
        raise AuthenticationError(f"The bearer token is not the {names}.")


async def admin_principal(request: Request, state: State) -> None:
    await _holds(request, state, {"GATEWAY_ADMIN_KEY": state.settings.admin_key})


async def metrics_reader(request: Request, state: State) -> None:
    """/metrics: the metrics token only (Prometheus holds it; the admin key never goes there)."""
    await _holds(request, state, {"GATEWAY_METRICS_TOKEN": state.settings.metrics_token})


async def observer(request: Request, state: AppState) -> None:
    """/ready's detail: the metrics token or the admin key."""
    s = state.settings
    await _holds(request, state, {"GATEWAY_METRICS_TOKEN": s.metrics_token, "GATEWAY_ADMIN_KEY": s.admin_key})


T = TypeVar("T")


class BearerScheme(SecurityBase, Generic[T]):
    """A dependency that runs `check`, and that FastAPI documents in /openapi.json as the bearer
    scheme `name` each route using it requires (FastAPI's own HTTPBearer would answer its own
    errors, not OpenAI's)."""

    def __init__(self, name: str, description: str, check: Callable[[Request, AppState], Awaitable[T]]) -> None:
        self.model = HTTPBearer(description=description)
        self.scheme_name = name
        self._check = check

    async def __call__(self, request: Request, state: State) -> T:
        return await self._check(request, state)


Team = Annotated[
    Principal, Depends(BearerScheme("teamKey", "A team's API key (POST /admin/teams/{id}/keys).", team_principal))
]
Admin = Depends(BearerScheme("adminKey", "GATEWAY_ADMIN_KEY.", admin_principal))
MetricsReader = Depends(BearerScheme("metricsToken", "GATEWAY_METRICS_TOKEN.", metrics_reader))
