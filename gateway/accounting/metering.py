"""Admission and settlement: the two atomic Redis scripts every request goes through.

Admission checks the team's limits and reserves the quoted price; settlement charges what was
served (or nothing), releases the reservation and appends the usage event to the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.accounting.keys import team_prefix
from gateway.accounting.spool import SettlementSpool, to_record
from gateway.errors import (
    InvalidRequestError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServiceUnavailableError,
)
from gateway.redis.client import REDIS_ERRORS, RedisClient
from gateway.redis.scripts import ScriptClient, register

log = logging.getLogger(__name__)

TEAM_DISABLED = "This key's team is disabled; ask your gateway admin to enable it. Nothing was charged."


def _script(name: str) -> str:
    """A script with the shared date helper (civil.lua) in front of it."""
    scripts = resources.files("gateway.accounting").joinpath("scripts")
    return scripts.joinpath("civil.lua").read_text(encoding="utf-8") + scripts.joinpath(name).read_text(
        encoding="utf-8"
    )


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """What x-ratelimit-* headers report after a decision."""

    requests_limit: int
    requests_remaining: int
    requests_reset_ms: int
    images_limit: int
    images_remaining: int
    images_reset_ms: int

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.requests_limit),
            "x-ratelimit-remaining-requests": str(self.requests_remaining),
            "x-ratelimit-reset-requests": _duration(self.requests_reset_ms),
            "x-ratelimit-limit-images": str(self.images_limit),
            "x-ratelimit-remaining-images": str(self.images_remaining),
            "x-ratelimit-reset-images": _duration(self.images_reset_ms),
        }


def _duration(ms: int) -> str:
    """OpenAI's Go-style durations: 12ms, 1s, 17.28s, 1m0s."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:g}s"
    return f"{int(seconds // 60)}m{seconds % 60:g}s"


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A caller's Idempotency-Key and the fingerprint of what it asked for."""

    key: str
    fingerprint: str  # hex

    def redis_key(self, team_id: str) -> str:
        return team_prefix(team_id) + "idem:" + hashlib.sha256(self.key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Admission:
    request_id: str
    team_id: str
    quote_micros: int
    limits: RateLimitState
    idempotency: Idempotency | None = None


@dataclass(frozen=True, slots=True)
class AdmissionPreview:
    """Whether a request would be admitted now, and the figures behind it (a dry run)."""

    # "ok", or what would refuse it: team_disabled, rpm, ipm, images_over_limit, in_flight, budget
    verdict: str
    limits: RateLimitState
    spent_micros: int
    budget_micros: int
    reserved_micros: int
    in_flight: int
    max_in_flight: int

    @property
    def admitted(self) -> bool:
        return self.verdict == "ok"


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored response of an earlier, successful request with the same Idempotency-Key."""

    response: str


@dataclass(frozen=True, slots=True)
class StillRunning:
    """An earlier request with the same Idempotency-Key is still being served."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Settlement:
    status: str  # succeeded | failed | cancelled | timeout
    images: int
    charge_micros: int
    provider_cost_micros: int
    model: str
    fields: tuple[tuple[str, str], ...] = ()
    replay: str = ""  # the response to keep for Idempotency-Key retries (successes only)


class Meter:
    def __init__(
        self,
        redis: RedisClient,
        *,
        spool: SettlementSpool | None = None,
        on_redis_error: Callable[[str], None] | None = None,
        settle_attempts: int = 4,
        idempotency_ttl_s: int = 86400,
        scripts: ScriptClient | None = None,
    ) -> None:
        self._r = redis
        self._spool = spool
        self._on_redis_error = on_redis_error or (lambda operation: None)
        self._idem_ttl_ms = idempotency_ttl_s * 1000
        # The lean pipelined client where the URL allows it (see redis_scripts.py), else redis-py.
        self._admit = register(redis, scripts, _script("admit.lua"))
        self._settle = register(redis, scripts, _script("settle.lua"))
        self._settle_attempts = settle_attempts

    async def preview(self, team_id: str, images: int, quote_micros: int) -> AdmissionPreview:
        """The admission script's checks for a request, with nothing written: no window entry, no
        reservation, no housekeeping."""
        p = team_prefix(team_id)
        try:
            out = await self._admit(
                keys=[p + "team", p + "win:req", p + "win:img", p + "res", p + "idem:-", p + "holds"],
                args=[p, "dry-run", images, quote_micros, 0, "", "1"],
            )
        except REDIS_ERRORS as exc:
            self._on_redis_error("admit")
            raise ServiceUnavailableError(
                "The gateway cannot reach its accounting store.", headers={"retry-after": "2"}
            ) from exc
        code = out[0].decode()
        if code == "no_team":
            raise ServiceUnavailableError("The team for this key no longer exists.")
        limits = RateLimitState(*map(int, out[1:7]))
        return AdmissionPreview(code, limits, *(int(v) for v in out[8:13]))

    async def admit(
        self,
        team_id: str,
        request_id: str,
        images: int,
        quote_micros: int,
        hold_s: float,
        idempotency: Idempotency | None = None,
    ) -> Admission | Replay | StillRunning:
        p = team_prefix(team_id)
        idem_key = idempotency.redis_key(team_id) if idempotency else p + "idem:-"
        try:
            out = await self._admit(
                keys=[p + "team", p + "win:req", p + "win:img", p + "res", idem_key, p + "holds"],
                args=[
                    p,
                    request_id,
                    images,
                    quote_micros,
                    int(hold_s * 1000),
                    idempotency.fingerprint if idempotency else "",
                ],
            )
        except REDIS_ERRORS as exc:
            self._on_redis_error("admit")
            raise ServiceUnavailableError(
                "The gateway cannot reach its accounting store; no request is admitted unmetered.",
                headers={"retry-after": "2"},
            ) from exc
        code = out[0].decode()
        if code == "no_team":
            raise ServiceUnavailableError("The team for this key no longer exists.")
        if code == "team_disabled":
            raise PermissionDeniedError(TEAM_DISABLED, code="team_disabled")
        if code == "idem_replay":
            return Replay(out[1].decode())
        if code == "idem_running":
            return StillRunning(out[1].decode())
        if code == "idem_mismatch":
            raise InvalidRequestError(
                "This Idempotency-Key was already used with different parameters.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        if code == "duplicate":
            raise InvalidRequestError("A request with this id is already in flight.", param="request_id")
        state = RateLimitState(*map(int, out[1:7]))
        if code == "ok":
            return Admission(request_id, team_id, quote_micros, state, idempotency)
        headers = state.headers()  # a refusal's (an admitted request's answer makes its own)
        if code == "images_over_limit":
            raise InvalidRequestError(
                f"n={images} is more than this team's images-per-minute limit ({state.images_limit}).",
                param="n",
            )
        if code == "budget":
            raise QuotaExceededError(
                "You exceeded your team's monthly budget; ask your gateway admin to raise it.",
                headers=headers,
            )
        reset_ms = state.requests_reset_ms if code == "rpm" else state.images_reset_ms
        if code == "in_flight":
            reset_ms = 1000
        headers["retry-after"] = str(max(1, -(-reset_ms // 1000)))
        what = {"rpm": "requests per minute", "ipm": "images per minute", "in_flight": "images in flight"}[code]
        raise RateLimitError(f"Rate limit exceeded for {what}.", headers=headers)

    async def is_reserved(self, team_id: str, request_id: str) -> bool:
        """Whether the request's reservation is still held (admitted, not settled nor expired)."""
        return bool(await self._r.hexists(team_prefix(team_id) + "res", request_id))

    def admission_of(self, record: dict[str, Any]) -> Admission:
        """An Admission back from its to_record form (as the spool and async jobs keep it)."""
        idem = record.get("idempotency")
        return Admission(
            record["request_id"], record["team_id"], record["quote_micros"], RateLimitState(**record["limits"]),
            Idempotency(**idem) if idem else None,
        )  # fmt: skip

    async def settle(self, admission: Admission, outcome: Settlement) -> int | None:
        """Charge (or refund) exactly once; returns the amount charged in micro-USD, or None when
        the request was already settled or Redis could not be reached.

        Redis faults are retried briefly; then the settlement goes to the spool, which replays it
        when Redis is back (the script is idempotent, so a replay never charges twice).
        """
        delay = 0.1
        for attempt in range(self._settle_attempts):
            try:
                return await self._settle_once(admission, outcome)
            except REDIS_ERRORS:
                self._on_redis_error("settle")
                if attempt < self._settle_attempts - 1:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        log.error("settlement of %s deferred: Redis unreachable", admission.request_id)
        if self._spool is not None:
            await asyncio.to_thread(
                self._spool.put, admission.request_id, to_record(admission=admission, outcome=outcome)
            )
        return None

    async def settle_spooled(self, record: dict[str, Any]) -> bool:
        """Replay one spooled settlement; False while Redis is still unreachable."""
        a, o = record["admission"], record["outcome"]
        idem = a.get("idempotency")
        admission = Admission(
            a["request_id"], a["team_id"], a["quote_micros"], RateLimitState(**a["limits"]),
            Idempotency(**idem) if idem else None,
        )  # fmt: skip
        outcome = Settlement(
            o["status"], o["images"], o["charge_micros"], o["provider_cost_micros"], o["model"],
            tuple((str(k), str(v)) for k, v in o["fields"]), o["replay"],
        )  # fmt: skip
        try:
            await self._settle_once(admission, outcome)
        except REDIS_ERRORS:
            return False
        return True

    async def _settle_once(self, admission: Admission, outcome: Settlement) -> int | None:
        p = team_prefix(admission.team_id)
        idem = admission.idempotency
        args: list[str | int] = [
            p,
            admission.request_id,
            outcome.status,
            outcome.images,
            outcome.charge_micros,
            outcome.provider_cost_micros,
            outcome.model,
            idem.fingerprint if idem else "",
            outcome.replay,
            self._idem_ttl_ms,
        ]
        for name, value in outcome.fields:
            args += [name, value]
        idem_key = idem.redis_key(admission.team_id) if idem else p + "idem:-"
        out = await self._settle(keys=[p + "res", p + "ledger", idem_key, p + "holds"], args=args)
        if out[0] == b"ok":
            return int(out[1])
        log.warning("settlement of %s found no reservation (already settled or expired)", admission.request_id)
        return None
