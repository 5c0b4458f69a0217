"""Sending a job's result to its webhook: one POST per attempt, signed per Standard Webhooks with
the team's secret, never following a redirect, with the address connected to checked against the
SSRF policy (ssrf.GuardedResolver). And each team's webhook settings: its signing secret (shown
once, when made) and its default URL."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from gateway.accounting.keys import team_prefix
from gateway.jobs import signing
from gateway.jobs.ssrf import ForbiddenTargetError, GuardedResolver, TargetPolicy, literal_address, parse_target
from gateway.redis.client import RedisClient, as_str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt as the job shows it."""

    at: float  # unix seconds
    status_code: int | None  # the target's answer; None when there was none
    error: str | None  # why it failed, when it did
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def as_json(self) -> dict[str, object]:
        return {"at": round(self.at, 3), "status_code": self.status_code, "error": self.error,
                "duration_ms": self.duration_ms}  # fmt: skip


class TeamWebhooks:
    """Per team: the signing secret (its key is what signing needs, so that is what is kept) and
    the default URL for jobs that name none."""

    def __init__(self, redis: RedisClient) -> None:
        self._r = redis

    @staticmethod
    def _key(team_id: str) -> str:
        return team_prefix(team_id) + "webhook"

    async def rotate_secret(self, team_id: str) -> str:
        secret = signing.new_secret()
        await self._r.hset(self._key(team_id), "secret", secret.removeprefix(signing.PREFIX))
        return secret

    async def key(self, team_id: str) -> bytes | None:
        value = await self._r.hget(self._key(team_id), "secret")
        return None if value is None else signing.key_of(as_str(value))

    async def default_url(self, team_id: str) -> str | None:
        value = await self._r.hget(self._key(team_id), "url")
        return as_str(value) if value else None

    async def set_default_url(self, team_id: str, url: str | None) -> None:
        if url is None:
            await self._r.hdel(self._key(team_id), "url")
        else:
            await self._r.hset(self._key(team_id), "url", url)

    async def settings(self, team_id: str) -> tuple[str | None, bool]:
        """(default URL, whether a secret is set)."""
        url, secret = await self._r.hmget(self._key(team_id), ["url", "secret"])
        return (as_str(url) if url else None), secret is not None


class WebhookSender:
    """One aiohttp session for every delivery: its resolver refuses addresses the policy does not
    permit, so the check is on the address connected to, not one looked up earlier."""

    def __init__(self, policy: TargetPolicy, *, timeout_s: float) -> None:
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._policy), use_dns_cache=False, limit=100)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, trust_env=False)
        return self._session

    async def send(self, url: str, key: bytes, msg_id: str, body: bytes) -> Attempt:
        started = time.time()
        t0 = time.monotonic()

        def done(status: int | None, error: str | None) -> Attempt:
            return Attempt(started, status, error, round((time.monotonic() - t0) * 1000))

        try:
            target = parse_target(url, self._policy)
            literal = literal_address(target.host)
            if literal is not None:  # aiohttp connects to a literal address without resolving it
                self._policy.check_address(literal)
        except ForbiddenTargetError as exc:
            return done(None, f"refused: {exc}")
        headers = {
            **signing.headers(key, msg_id, int(started), body),
            "content-type": "application/json",
            "user-agent": "image-gateway-webhooks/1",
        }
        try:
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as answer:
                await answer.read()
                status = answer.status
        except ForbiddenTargetError as exc:
            return done(None, f"refused: {exc}")
        except TimeoutError:
            return done(None, "timeout")
        except aiohttp.ClientConnectorError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, ForbiddenTargetError) else None
            return done(None, f"refused: {cause}" if cause else f"connection failed: {exc.os_error.strerror or exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return done(None, f"{type(exc).__name__}")
        except asyncio.CancelledError:
            raise
        return done(status, None if 200 <= status < 300 else f"answered {status}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
