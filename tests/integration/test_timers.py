"""eventline_shared.storage.timers on a real PostgreSQL: claims never overlap, a timer fires once, a moved
timer is not taken, a dead claimer's timers come back after the lease."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest

from eventline_shared.storage.timers import Due, TimerTable

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
async def pool(db_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    await db.execute(
        "CREATE TABLE job_timers (job_id text, step text, due_at timestamptz NOT NULL, "
        "claimed_until timestamptz, PRIMARY KEY (job_id, step))"
    )
    async with asyncpg.create_pool(db_url, min_size=2, max_size=4) as created:
        yield created


async def test_claims_of_two_replicas_never_overlap_and_each_timer_fires_once(pool: asyncpg.Pool) -> None:
    timers = TimerTable("job_timers", ["job_id", "step"])
    async with pool.acquire() as connection:
        for i in range(10):
            await timers.set(connection, (f"job{i:02}", "remind"), NOW - i * MINUTE)
        await timers.set_many(connection, [(f"job{i:02}", "remind") for i in range(10, 20)], NOW - MINUTE)
        await timers.set_many(connection, [("later", "remind")], NOW + MINUTE)
    first, second = await asyncio.gather(timers.claim(pool, NOW, 15), timers.claim(pool, NOW, 15))
    claimed = [d.key for d in first + second]
    assert len(claimed) == len(set(claimed)) == 20
    assert ("later", "remind") not in claimed
    assert [d.due_at for d in first] == sorted(d.due_at for d in first)
    # Claimed timers are not claimed again while their lease lasts.
    assert await timers.claim(pool, NOW, 100) == []

    fired = 0
    for due in first + second + first[:3]:  # three claimed twice (a replica retrying)
        async with pool.acquire() as connection, connection.transaction():
            fired += await timers.take(connection, due)
    assert fired == 20
    assert await timers.next_due(pool) == NOW + MINUTE


async def test_a_moved_timer_is_not_taken_and_a_lapsed_claim_is_claimed_again(pool: asyncpg.Pool) -> None:
    timers = TimerTable("job_timers", ["job_id", "step"], lease_s=0.0)
    async with pool.acquire() as connection:
        await timers.set(connection, ("a", "x"), NOW)
        await timers.set(connection, ("b", "x"), NOW)
    (a, b) = await timers.claim(pool, NOW, 10)
    async with pool.acquire() as connection:
        await timers.set(connection, a.key, NOW + MINUTE)  # other work moved it: the claim is stale
        assert not await timers.take(connection, a)
    # A lease of 0 s has run out already: the claimer of b is taken for dead.
    again = await timers.claim(pool, NOW, 10)
    assert [d.key for d in again] == [b.key]
    async with pool.acquire() as connection:
        assert await timers.take(connection, b)
        await timers.cancel(connection, a.key)
        assert not await timers.take(connection, Due(a.key, NOW + MINUTE))


def test_table_and_columns_must_be_plain_identifiers() -> None:
    with pytest.raises(ValueError):
        TimerTable("timers; DROP TABLE customers", ["id"])
    with pytest.raises(ValueError):
        TimerTable("timers", [])


async def test_timers_set_taken_and_cancelled_many_at_once(pool: asyncpg.Pool) -> None:
    """``set_each`` (each key its own instant), ``take_many`` (only the claims that still stand)
    and ``cancel_many``: what a runner firing a batch of timers in one transaction uses."""
    timers = TimerTable("job_timers", ["job_id", "step"])
    async with pool.acquire() as connection:
        await timers.set_each(connection, [((f"j{i}", "s"), NOW - i * MINUTE) for i in range(6)])
    claimed = await timers.claim(pool, NOW, 10)
    assert sorted(d.key for d in claimed) == [(f"j{i}", "s") for i in range(6)]
    async with pool.acquire() as connection, connection.transaction():
        await timers.set(connection, ("j0", "s"), NOW + MINUTE)  # moved meanwhile: not taken
        await timers.cancel_many(connection, [("j5", "s")])
        taken = await timers.take_many(connection, claimed)
        assert taken == {(f"j{i}", "s") for i in range(1, 5)}
        assert await timers.take_many(connection, claimed) == frozenset(), "a timer is taken once"
    assert await timers.next_due(pool) == NOW + MINUTE
    assert await timers.claim(pool, NOW, 10) == []
