"""Teams and their API keys in Redis. Keys are stored only as SHA-256 hashes (they are 240-bit
random tokens, so a fast hash is enough); the plain key is returned once, at creation.

Every key of one team carries the hash tag {t:<team id>} so that admission and settlement
scripts touch one cluster slot. The key-hash index is the one global lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from redis.typing import EncodableT, FieldT

from gateway.accounting.last_used import LastUse, key_record
from gateway.catalog import micros_to_usd, usd_to_micros
from gateway.periodic import raise_if_cancelling
from gateway.redis.client import REDIS_ERRORS, RedisClient, as_str

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-gw-"
TEAMS_SET = "gw:teams"
# A revoked key's hash is published here so every process drops it from its cache at once.
REVOKED_CHANNEL = "gw:keys:revoked"


def team_prefix(team_id: str) -> str:
    return f"gw:{{t:{team_id}}}:"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TeamLimits:
    requests_per_minute: int
    images_per_minute: int
    max_in_flight: int


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str
    monthly_budget_usd: float
    limits: TeamLimits
    created: int
    allow_provider_pinning: bool = False
    # Refused at admission (403 team_disabled) until enabled again; its keys still authenticate,
    # so the team can read its own usage and settings.
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    team_id: str
    prefix: str
    name: str
    created: int
    last_used: int | None = None  # unix seconds, late by up to a minute (see last_used.py); None: never


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from a bearer key."""

    team_id: str
    key_id: str


class TeamNotFoundError(Exception):
    pass


class KeyStore:
    """Teams and keys. Authentication is served from a per-process cache of key hash -> principal:
    a revoked key is dropped from every process's cache through a Redis pub/sub message, and each
    entry also lives at most `cache_ttl_s`, so a missed message (Redis restarted, subscription
    down) cannot keep a revoked key alive longer than that."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        cache_ttl_s: float = 30.0,
        cache_max: int = 100_000,
        last_use: LastUse | None = None,
    ) -> None:
        self._r = redis
        self._cache_ttl_s = cache_ttl_s
        self._cache_max = cache_max
        self._cache: dict[str, tuple[float, Principal]] = {}
        self.last_use = last_use or LastUse(redis)  # noted here, written by its background flush

    # --- teams ------------------------------------------------------------------------------

    async def create_team(
        self, name: str, budget_usd: float, limits: TeamLimits, *, allow_provider_pinning: bool = False
    ) -> Team:
        team = Team(
            id="team_" + secrets.token_hex(8),
            name=name,
            monthly_budget_usd=budget_usd,
            limits=limits,
            created=int(time.time()),
            allow_provider_pinning=allow_provider_pinning,
        )
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(team_prefix(team.id) + "team", mapping=_team_fields(team))
            pipe.sadd(TEAMS_SET, team.id)
            await pipe.execute()
        return team

    async def get_team(self, team_id: str) -> Team:
        raw = await self._r.hgetall(team_prefix(team_id) + "team")
        if not raw:
            raise TeamNotFoundError(team_id)
        return _team_from(team_id, raw)

    async def list_teams(self) -> list[Team]:
        ids = sorted(as_str(m) for m in await self._r.smembers(TEAMS_SET))
        teams = []
        for team_id in ids:
            try:
                teams.append(await self.get_team(team_id))
            except TeamNotFoundError:
                continue
        return teams

    async def update_team(
        self,
        team_id: str,
        *,
        name: str | None,
        budget_usd: float | None,
        limits: TeamLimits | None,
        allow_provider_pinning: bool | None = None,
        disabled: bool | None = None,
    ) -> Team:
        team = await self.get_team(team_id)
        updated = Team(
            id=team.id,
            name=name if name is not None else team.name,
            monthly_budget_usd=budget_usd if budget_usd is not None else team.monthly_budget_usd,
            limits=limits or team.limits,
            created=team.created,
            allow_provider_pinning=(
                team.allow_provider_pinning if allow_provider_pinning is None else allow_provider_pinning
            ),
            disabled=team.disabled if disabled is None else disabled,
        )
        await self._r.hset(team_prefix(team_id) + "team", mapping=_team_fields(updated))
        return updated

    # --- keys -------------------------------------------------------------------------------

    async def create_key(self, team_id: str, name: str = "") -> tuple[ApiKey, str]:
        await self.get_team(team_id)
        plain = KEY_PREFIX + secrets.token_urlsafe(30)
        key = ApiKey(
            id="key_" + secrets.token_hex(8),
            team_id=team_id,
            prefix=plain[: len(KEY_PREFIX) + 6],
            name=name,
            created=int(time.time()),
        )
        digest = hash_key(plain)
        fields: dict[FieldT, EncodableT] = {
            "id": key.id, "team_id": team_id, "prefix": key.prefix, "name": name, "created": key.created,
        }  # fmt: skip
        # Not a MULTI: the keys live in different cluster slots. Ordered so that a key is listed
        # before it can authenticate, and stops authenticating before it is unlisted.
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hset(key_record(key.id), mapping={**fields, "hash": digest})
            pipe.sadd(team_prefix(team_id) + "keys", key.id)
            pipe.hset(f"gw:key:{digest}", mapping=fields)
            await pipe.execute()
        return key, plain

    async def list_keys(self, team_id: str) -> list[ApiKey]:
        await self.get_team(team_id)
        ids = sorted(as_str(m) for m in await self._r.smembers(team_prefix(team_id) + "keys"))
        keys = []
        for key_id in ids:
            raw = await self._r.hgetall(key_record(key_id))
            if raw:
                keys.append(_key_from(raw))
        return keys

    async def revoke_key(self, key_id: str) -> bool:
        raw = await self._r.hgetall(key_record(key_id))
        if not raw:
            return False
        key = _key_from(raw)
        digest = as_str(raw[b"hash"])
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.delete(f"gw:key:{digest}")
            pipe.delete(key_record(key_id))
            pipe.srem(team_prefix(key.team_id) + "keys", key_id)
            await pipe.execute()
        self._cache.pop(digest, None)
        await self._r.publish(REVOKED_CHANNEL, digest)
        return True

    async def authenticate(self, plain: str) -> Principal | None:
        """From the cache when this process has seen the key lately, else one Redis read. Unknown
        keys are not cached, so a key works the moment it is created."""
        if not plain.startswith(KEY_PREFIX):
            return None
        digest = hash_key(plain)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            self.last_use.saw(cached[1].key_id)
            return cached[1]
        team_id, key_id = await self._r.hmget(f"gw:key:{digest}", ["team_id", "id"])
        if team_id is None or key_id is None:
            self._cache.pop(digest, None)
            return None
        principal = Principal(team_id=as_str(team_id), key_id=as_str(key_id))
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        self._cache[digest] = (now + self._cache_ttl_s, principal)
        self.last_use.saw(principal.key_id)
        return principal

    async def follow_revocations(self, *, retry_s: float = 1.0, wake_s: float = 1.0) -> None:
        """Run for the life of the process: drop revoked keys from this process's cache as other
        processes announce them. Whenever the subscription is (re)established the whole cache is
        dropped, since messages sent while it was down are lost.

        It waits for messages `wake_s` at a time, and ends once its task is cancelled even if the
        cancel was lost inside redis-py (gateway/periodic.py): listening without end, a feed whose
        subscribe had swallowed the cancel kept the app's shutdown waiting for ever."""
        while True:
            pubsub = self._r.pubsub()
            try:
                await pubsub.subscribe(REVOKED_CHANNEL)
                self._cache.clear()
                while True:
                    raise_if_cancelling()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wake_s)
                    if message is not None and message.get("type") == "message":
                        self._cache.pop(as_str(message["data"]), None)
            except REDIS_ERRORS:
                raise_if_cancelling()
                log.warning("key revocation feed lost; retrying (cached keys expire within %ss)", self._cache_ttl_s)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
            self._cache.clear()
            await asyncio.sleep(retry_s)


def _team_fields(team: Team) -> dict[FieldT, EncodableT]:
    return {
        "name": team.name,
        "budget_micros": usd_to_micros(team.monthly_budget_usd),
        "rpm": team.limits.requests_per_minute,
        "ipm": team.limits.images_per_minute,
        "max_in_flight": team.limits.max_in_flight,
        "created": team.created,
        "allow_provider_pinning": int(team.allow_provider_pinning),
        "disabled": int(team.disabled),  # read by admit.lua: '1' refuses every request
    }


def _team_from(team_id: str, raw: Mapping[bytes | str, bytes | str]) -> Team:
    return Team(
        id=team_id,
        name=as_str(raw[b"name"]),
        monthly_budget_usd=micros_to_usd(int(raw[b"budget_micros"])),
        limits=TeamLimits(int(raw[b"rpm"]), int(raw[b"ipm"]), int(raw[b"max_in_flight"])),
        created=int(raw[b"created"]),
        allow_provider_pinning=raw.get(b"allow_provider_pinning", b"0") in (b"1", "1"),
        disabled=raw.get(b"disabled", b"0") in (b"1", "1"),
    )


def _key_from(raw: Mapping[bytes | str, bytes | str]) -> ApiKey:
    return ApiKey(
        id=as_str(raw[b"id"]),
        team_id=as_str(raw[b"team_id"]),
        prefix=as_str(raw[b"prefix"]),
        name=as_str(raw.get(b"name", b"")),
        created=int(raw[b"created"]),
        last_used=int(raw[b"last_used"]) if b"last_used" in raw else None,
    )
