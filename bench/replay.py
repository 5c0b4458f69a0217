"""Replaying a workload against the gateway: every arrival sent at its moment through one shared
HTTP client, the answer timed and its routing headers kept; meanwhile the scenario's events (a
worker killed, fal failing for a stretch) happen on cue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from bench.workload import Arrival

# fal answers a submit with nginx's 503 before it ever sees the request (fal-api.md §5): a fault
# whose every use shows up in /_fake/stats as a submit refusal, so the stretch can end exactly.
FAL_FAULT = "ingress_503"
FAL_ARMED_AHEAD = 2  # faults kept armed during the stretch, so a burst of submits all fail


@dataclass(frozen=True, slots=True)
class Outcome:
    index: int
    model: str
    sent_at_s: float  # since the start of the run, as actually sent
    latency_s: float  # time to result (or to the error)
    status: int  # HTTP status; 0 when no answer came at all
    provider: str | None  # several joined by "," for a request split over routes
    reason: str | None
    error: str | None
    n: int = 1  # images asked


@dataclass(frozen=True, slots=True)
class Events:
    kill_worker_at_s: float | None = None
    fal_errors_s: tuple[float, float] | None = None  # [from, until) since the start of the run


@dataclass(frozen=True, slots=True)
class Replayed:
    outcomes: list[Outcome]
    fal_faults_used: int  # submits fal refused during the stretch
    wall_s: float


async def replay(
    gateway_url: str,
    key: str,
    arrivals: Sequence[Arrival],
    headers: Mapping[str, str],
    *,
    size: str,
    events: Events,
    kill_worker: Callable[[], None],
    fal_url: str,
    fal_key: str,
) -> Replayed:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    auth = {"Authorization": f"Bearer {key}", **headers}
    async with httpx.AsyncClient(base_url=gateway_url, headers=auth, timeout=120, limits=limits) as client:
        t0 = time.monotonic()
        side: list[asyncio.Task[int]] = []
        if events.kill_worker_at_s is not None:
            side.append(asyncio.create_task(_kill_at(t0 + events.kill_worker_at_s, kill_worker)))
        if events.fal_errors_s is not None:
            start, until = events.fal_errors_s
            side.append(asyncio.create_task(_fal_errors(fal_url, fal_key, t0 + start, t0 + until)))
        sends: list[asyncio.Task[Outcome]] = []
        for arrival in arrivals:
            await _sleep_until(t0 + arrival.at_s)
            sends.append(asyncio.create_task(_send(client, arrival, size, t0)))
        outcomes = list(await asyncio.gather(*sends))
        used = sum(await asyncio.gather(*side))
        return Replayed(outcomes, used, time.monotonic() - t0)


async def _send(client: httpx.AsyncClient, arrival: Arrival, size: str, t0: float) -> Outcome:
    body = {"model": arrival.model, "prompt": f"bench request {arrival.index}", "size": size, "n": arrival.n}
    started = time.monotonic()
    try:
        resp = await client.post("/v1/images/generations", json=body)
    except httpx.HTTPError as exc:
        return Outcome(
            arrival.index, arrival.model, started - t0, time.monotonic() - started, 0, None, None, repr(exc), arrival.n
        )
    latency = time.monotonic() - started
    error = None
    if resp.status_code != 200:
        try:
            error = str(resp.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            error = resp.text[:200]
    return Outcome(
        arrival.index,
        arrival.model,
        started - t0,
        latency,
        resp.status_code,
        resp.headers.get("x-gateway-provider"),
        resp.headers.get("x-gateway-route-reason"),
        error,
        arrival.n,
    )


async def _sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _kill_at(at: float, kill: Callable[[], None]) -> int:
    await _sleep_until(at)
    kill()
    return 0


async def _fal_errors(fal_url: str, fal_key: str, start: float, until: float) -> int:
    """Every fal submit fails between start and until: faults are armed a few ahead and topped up
    as they are used; at the end, any left over are used up by submits of our own."""
    async with httpx.AsyncClient(base_url=fal_url, timeout=10) as fal:

        async def refused() -> int:
            stats = (await fal.get("/_fake/stats")).json()
            return int(stats["submit_refusals"])

        await _sleep_until(start)
        base = await refused()
        armed = 0
        while time.monotonic() < until:
            outstanding = armed - (await refused() - base)
            if outstanding < FAL_ARMED_AHEAD:
                more = FAL_ARMED_AHEAD - outstanding
                (await fal.post("/_fake/faults", json={"fault": FAL_FAULT, "count": more})).raise_for_status()
                armed += more
            await asyncio.sleep(0.005)
        ours = 0
        while armed - (await refused() - base) > 0:
            ours += await _absorb_one(fal, fal_key)
        return armed - ours


async def _absorb_one(fal: httpx.AsyncClient, fal_key: str) -> int:
    """1 when our submit used up a fault; 0 when none was left (its job is cancelled)."""
    headers = {"Authorization": f"Key {fal_key}"}
    resp = await fal.post("/fal-ai/hidream-i1-fast", json={"prompt": "absorb"}, headers=headers)
    if resp.status_code == 200:
        await fal.put(resp.json()["cancel_url"], headers=headers)
        return 0
    return 1
