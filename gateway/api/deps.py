"""Dependencies every router uses: the app state, and who is calling (a team key or the admin key)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from gateway.accounting.keys import Principal
from gateway.api.state import AppState
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


async def admin_principal(request: Request, state: State) -> None:
    token = _bearer(request)
    admin = state.settings.admin_key
    if not admin:
        raise PermissionDeniedError("The admin API is disabled: set GATEWAY_ADMIN_KEY.")
    if not hmac.compare_digest(token.encode(), admin.encode()):
        raise AuthenticationError("Incorrect admin key provided.")


Team = Annotated[Principal, Depends(team_principal)]
Admin = Depends(admin_principal)
