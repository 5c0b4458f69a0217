"""Jobs in Redis: one hash per job, a queue of the ones waiting (oldest first) and a set of leases
(job id -> when its lease runs out). A gateway process runs a job only while it holds its lease and
renews it; once the lease runs out (the process died), the next process to look takes the job over.
Every change of a job's status is one script, so a job cancelled while it runs cannot also be
marked succeeded, and a process that lost its lease can change nothing.

All keys share the hash tag {jobs}, so each script touches one slot on Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from gateway.redis.client import RedisClient, as_str

PREFIX = "gw:{jobs}:"
QUEUE = PREFIX + "queue"
LEASES = PREFIX + "leases"
JOB = PREFIX + "job:"
INPUTS = PREFIX + "input:"

# Statuses a caller sees. `settling` (the images made and kept, the charge being written) shows as
# running; `queued` and `running` are the ones a DELETE cancels.
ACTIVE = ("queued", "running", "settling")
FINAL = ("succeeded", "failed", "cancelled")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: queue, job   ARGV: id, ttl_ms, field/value pairs...
_CREATE = (
    _NOW
    + """
redis.call('HSET', KEYS[2], 'created_ms', tostring(now), unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
return now
"""
)

# KEYS: queue, leases   ARGV: owner, lease_ms, job key prefix, ids the owner is running now...
# A job whose lease ran out first (its process died), else the oldest queued one. Returns its id,
# '' when the id led to no job (expired meanwhile; look again), nil when there is nothing to do.
# A lapsed lease of a job its owner is still running (its renewal came late: a stalled process) is
# renewed, not leased again: it is the same attempt, and `runs` counts attempts.
_LEASE = (
    _NOW
    + """
local running = {}
for i = 4, #ARGV do running[ARGV[i]] = true end
local id
local late = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, #ARGV - 2)
for _, l in ipairs(late) do
  if running[l] and redis.call('HGET', ARGV[3] .. l, 'owner') == ARGV[1] then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), l)
  elseif not id then
    id = l
  end
end
if not id then
  local q = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #q == 0 then return false end
  id = q[1]
  redis.call('ZREM', KEYS[1], id)
end
local key = ARGV[3] .. id
local status = redis.call('HGET', key, 'status')
if not status then
  redis.call('ZREM', KEYS[2], id)
  return ''
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
if status == 'queued' then
  redis.call('HSET', key, 'status', 'running', 'started_ms', tostring(now))
end
redis.call('HSET', key, 'owner', ARGV[1])
redis.call('HINCRBY', key, 'runs', 1)
return id
"""
)

# KEYS: leases, job   ARGV: owner, lease_ms, id   -> {verdict, status}
_RENEW = (
    _NOW
    + """
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return {'gone', ''} end
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return {'lost', status} end
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
end
return {'ok', status}
"""
)

# KEYS: leases, job   ARGV: owner, id, allowed statuses (",a,b,"), release ('1': drop the lease and
# keep the job ttl_ms more), ttl_ms, field/value pairs...   -> 'ok', or the status that refused it
_MOVE = (
    _NOW
    + """
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return 'gone' end
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then return 'lost' end
if not string.find(ARGV[3], ',' .. status .. ',', 1, true) then return status end
if #ARGV > 5 then redis.call('HSET', KEYS[2], unpack(ARGV, 6)) end
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
end
return 'ok'
"""
)

# KEYS: queue, leases, job   ARGV: id, team, ttl_ms   -> the status it had ('not_found': no such job
# of this team); queued and running jobs become cancelled.
_CANCEL = (
    _NOW
    + """
if redis.call('HGET', KEYS[3], 'team_id') ~= ARGV[2] then return 'not_found' end
local status = redis.call('HGET', KEYS[3], 'status')
if status == 'queued' or status == 'running' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], 'status', 'cancelled', 'finished_ms', tostring(now))
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
end
return status
"""
)

# KEYS: leases, job   ARGV: owner, id: the owner's lease ends now (another process may take the
# job), and the upstream request it had (cancelled) is forgotten
_EXPIRE = """
if redis.call('HGET', KEYS[2], 'owner') == ARGV[1] and redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], 0, ARGV[2])
  redis.call('HDEL', KEYS[2], 'upstream')
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Job:
    """A job as stored; JSON fields already parsed."""

    id: str
    team_id: str
    key_id: str
    model: str
    kind: str  # generation | edit
    status: str
    created_ms: int
    started_ms: int | None
    finished_ms: int | None
    runs: int
    request: dict[str, Any]
    admission: dict[str, Any]
    settlement: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    webhook_url: str | None
    webhook: dict[str, Any] | None
    upstream: tuple[str, str] | None = None  # (provider, handle) of the upstream request, to re-attach to

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[Any, Any]) -> Job:
        f = {as_str(k): as_str(v) for k, v in raw.items()}

        def number(name: str) -> int | None:
            return int(f[name]) if f.get(name) else None

        def parsed(name: str) -> Any:
            return json.loads(f[name]) if f.get(name) else None

        return cls(
            id=job_id,
            team_id=f.get("team_id", ""),
            key_id=f.get("key_id", ""),
            model=f.get("model", ""),
            kind=f.get("kind", "generation"),
            status=f.get("status", "failed"),
            created_ms=number("created_ms") or 0,
            started_ms=number("started_ms"),
            finished_ms=number("finished_ms"),
            runs=number("runs") or 0,
            request=parsed("request") or {},
            admission=parsed("admission") or {},
            settlement=parsed("settlement"),
            result=parsed("result"),
            error=parsed("error"),
            webhook_url=f.get("webhook_url") or None,
            webhook=parsed("webhook"),
            upstream=tuple(parsed("upstream")) if f.get("upstream") else None,
        )


class JobStore:
    def __init__(self, redis: RedisClient, *, keep_s: float) -> None:
        self._r = redis
        self._keep_ms = int(keep_s * 1000)
        self._create = redis.register_script(_CREATE)
        self._lease = redis.register_script(_LEASE)
        self._renew = redis.register_script(_RENEW)
        self._move = redis.register_script(_MOVE)
        self._cancel = redis.register_script(_CANCEL)
        self._expire = redis.register_script(_EXPIRE)

    async def create(self, job_id: str, fields: dict[str, str], *, live_s: float, inputs: dict[str, bytes]) -> int:
        """Store a queued job (kept `live_s`, until it ends); its uploads first. Returns created_ms."""
        ttl_ms = int(live_s * 1000) + self._keep_ms
        if inputs:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hset(INPUTS + job_id, mapping=inputs)  # type: ignore[arg-type]
                pipe.pexpire(INPUTS + job_id, ttl_ms)
                await pipe.execute()
        pairs = [v for kv in {**fields, "status": "queued"}.items() for v in kv]
        return int(await self._create(keys=[QUEUE, JOB + job_id], args=[job_id, ttl_ms, *pairs]))

    async def get(self, job_id: str) -> Job | None:
        raw = await self._r.hgetall(JOB + job_id)
        return Job.from_hash(job_id, raw) if raw else None

    async def inputs(self, job_id: str) -> dict[str, bytes]:
        raw = await self._r.hgetall(INPUTS + job_id)
        return {as_str(k): v.encode() if isinstance(v, str) else bytes(v) for k, v in raw.items()}

    async def drop_inputs(self, job_id: str) -> None:
        await self._r.delete(INPUTS + job_id)

    async def position(self, job_id: str) -> int | None:
        """How many queued jobs run before this one (None: not queued)."""
        rank = await self._r.zrank(QUEUE, job_id)
        return None if rank is None else int(rank)  # type: ignore[arg-type]  # no WITHSCORE: an int

    async def lease(self, owner: str, lease_s: float, running: Collection[str] = ()) -> str | None:
        """The id of a job now leased to `owner`; '' to look again at once; None: nothing to do.
        `running`: the jobs `owner` is running now, whose lapsed leases are renewed, not taken."""
        got = await self._lease(keys=[QUEUE, LEASES], args=[owner, int(lease_s * 1000), JOB, *running])
        return None if got is None else as_str(got)

    async def renew(self, job_id: str, owner: str, lease_s: float) -> tuple[str, str]:
        """(ok | lost | gone, the job's status)."""
        verdict, status = await self._renew(keys=[LEASES, JOB + job_id], args=[owner, int(lease_s * 1000), job_id])
        return as_str(verdict), as_str(status)

    async def move(
        self, job_id: str, owner: str, allowed: tuple[str, ...], fields: dict[str, str], *, release: bool = False
    ) -> str:
        """Set `fields` if the owner still holds the job and its status is one of `allowed`;
        'ok', or what refused it (lost, gone, or the status). `release` ends the lease."""
        pairs = [v for kv in fields.items() for v in kv]
        args = [owner, job_id, "," + ",".join(allowed) + ",", "1" if release else "0", self._keep_ms, *pairs]
        return as_str(await self._move(keys=[LEASES, JOB + job_id], args=args))

    async def cancel(self, job_id: str, team_id: str) -> str | None:
        """The status the team's job had when asked to cancel (None: no such job of the team)."""
        got = as_str(await self._cancel(keys=[QUEUE, LEASES, JOB + job_id], args=[job_id, team_id, self._keep_ms]))
        return None if got == "not_found" else got

    async def expire_lease(self, job_id: str, owner: str) -> None:
        await self._expire(keys=[LEASES, JOB + job_id], args=[owner, job_id])
