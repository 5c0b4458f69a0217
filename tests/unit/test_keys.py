from __future__ import annotations

import fakeredis
import pytest

from gateway.accounting.keys import KeyStore, TeamLimits, TeamNotFoundError, hash_key


@pytest.fixture
def store() -> KeyStore:
    return KeyStore(fakeredis.FakeAsyncRedis())


async def test_key_is_stored_only_as_a_hash_and_authenticates(store: KeyStore) -> None:
    team = await store.create_team("design", 10.0, TeamLimits(1, 2, 3))
    key, plain = await store.create_key(team.id, "ci")
    assert plain.startswith("sk-gw-") and plain.startswith(key.prefix) and len(plain) > 40
    r = store._r
    dump = b"".join(
        [k + b"".join((await r.hgetall(k)).values()) async for k in r.scan_iter() if await r.type(k) == b"hash"]
    )
    assert plain.encode() not in dump and hash_key(plain).encode() in dump
    principal = await store.authenticate(plain)
    assert principal is not None and (principal.team_id, principal.key_id) == (team.id, key.id)
    assert await store.authenticate(plain + "x") is None
    assert await store.authenticate("not-a-key") is None


async def test_revoked_key_stops_working_at_once(store: KeyStore) -> None:
    team = await store.create_team("design", 10.0, TeamLimits(1, 2, 3))
    key, plain = await store.create_key(team.id)
    other, other_plain = await store.create_key(team.id)
    assert [k.id for k in await store.list_keys(team.id)] == sorted([key.id, other.id])
    assert await store.revoke_key(key.id)
    assert await store.authenticate(plain) is None
    assert await store.authenticate(other_plain) is not None
    assert not await store.revoke_key(key.id)
    assert [k.id for k in await store.list_keys(team.id)] == [other.id]


async def test_team_update_keeps_unset_fields(store: KeyStore) -> None:
    team = await store.create_team("design", 10.0, TeamLimits(1, 2, 3))
    updated = await store.update_team(team.id, name=None, budget_usd=25.5, limits=None)
    assert (updated.name, updated.monthly_budget_usd, updated.limits) == ("design", 25.5, TeamLimits(1, 2, 3))
    assert (await store.get_team(team.id)).monthly_budget_usd == 25.5
    with pytest.raises(TeamNotFoundError):
        await store.get_team("team_missing")
