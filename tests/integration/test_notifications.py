"""PostgreSQL notifications (``eventline_shared.storage.notifications``) against a real server:
a commit wakes the listener, and a listener whose connection is killed listens again."""

from __future__ import annotations

import asyncio

import asyncpg

from eventline_shared.storage import notifications
from tests.support import eventually

CHANNEL = "eventline_test_wakeups"


async def listening_pid(db: asyncpg.Connection) -> int | None:
    pid: int | None = await db.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE query = $1 AND pid <> pg_backend_pid()", f'LISTEN "{CHANNEL}"'
    )
    return pid


async def test_a_commit_wakes_the_listener_and_a_lost_connection_is_replaced(
    db_url: str, db: asyncpg.Connection
) -> None:
    wakes: list[None] = []
    listener = notifications.Listener(db_url, CHANNEL, lambda: wakes.append(None), retry_s=0.05)

    async def woken_since(before: int) -> bool:
        return len(wakes) > before

    running = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.listening.wait(), 30)
        first = await listening_pid(db)
        assert first is not None
        # listening is set right after the connection's own wake-up: what follows is the commit's.
        before = len(wakes)
        async with db.transaction():
            await notifications.notify(db, CHANNEL)
        await eventually(lambda: woken_since(before), 30, "the commit woke no listener")

        await db.execute("SELECT pg_terminate_backend($1)", first)

        async def replaced() -> bool:
            pid = await listening_pid(db)
            return pid is not None and pid != first and listener.listening.is_set()

        await eventually(replaced, 30, "the listener did not listen again")
        before = len(wakes)
        async with db.transaction():
            await notifications.notify(db, CHANNEL)
        await eventually(lambda: woken_since(before), 30, "the new connection was not woken")
    finally:
        listener.shutdown()
        await asyncio.wait_for(running, 30)
