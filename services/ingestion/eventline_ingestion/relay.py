"""The outbox relay: publishes committed events to the Redis stream, at least once.

It runs inside every ingestion replica. Storing an event wakes it; it also
polls, so rows left by another replica (or by a crash) are published too.
A row is published and deleted in one PostgreSQL transaction: if anything
fails before the commit, the row stays and is published again later, so an
entry can be duplicated (consumers dedupe on the event id) but never lost.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import redis.asyncio as redis

from eventline_shared import faults, stream
from eventline_shared.dependencies import POSTGRESQL, REDIS, DependencyMonitor

log = logging.getLogger(__name__)

# Rows locked by another relay are skipped; the deletion only commits after the publish.
_CLAIM = """
DELETE FROM event_outbox WHERE id IN (
    SELECT id FROM event_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING id, entries
"""


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: redis.Redis,
        stream_key: str,
        *,
        batch: int = 200,
        poll_s: float = 1.0,
        retention_s: float = 7 * 24 * 3600.0,
        trim_interval_s: float = 60.0,
        min_interval_s: float = 0.002,
        dependencies: DependencyMonitor | None = None,
    ) -> None:
        self.pool = pool
        self.client = client
        self.stream_key = stream_key
        self.batch = batch
        self.poll_s = poll_s
        self.retention_s = retention_s
        self.trim_interval_s = trim_interval_s
        # Under load, publishing at most every few milliseconds lets each
        # publish carry many transactions' entries; when idle, a wake-up is
        # served at once.
        self.min_interval_s = min_interval_s
        self._wake = asyncio.Event()
        self.appender = stream.Appender(client, stream_key)
        self._stopping = False
        self.published = 0
        self.dependencies = dependencies
        """Told of every publish that worked or failed, so health shows a relay that cannot publish."""

    def wake(self) -> None:
        """Tell the relay that new outbox rows were committed."""
        self._wake.set()

    async def _publish(self) -> tuple[int, int]:
        """Publish and delete up to ``batch`` outbox rows; returns (rows, events)."""
        async with self.pool.acquire() as connection, connection.transaction():
            rows = sorted(await connection.fetch(_CLAIM, self.batch), key=lambda row: row["id"])
            if not rows:
                return 0, 0
            count = await self.appender.append([row["entries"] for row in rows])
            await faults.point("relay.after_append")
        self.published += count
        return len(rows), count

    async def publish_once(self) -> int:
        """Publish and delete up to ``batch`` outbox rows; returns the events published."""
        return (await self._publish())[1]

    async def drain(self) -> int:
        """Burst mode: publish until the outbox is empty; returns the events published."""
        total = 0
        while count := await self.publish_once():
            total += count
        return total

    async def run(self) -> None:
        """Publish until ``shutdown``; survives PostgreSQL and Redis outages with backoff."""
        backoff = 0.05
        next_trim = time.monotonic() + self.trim_interval_s
        last_publish = 0.0
        while not self._stopping:
            pause = last_publish + self.min_interval_s - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            last_publish = time.monotonic()
            self._wake.clear()
            try:
                rows, _ = await self._publish()
                if self.dependencies is not None:
                    self.dependencies.report_ok(POSTGRESQL)
                    if rows:
                        self.dependencies.report_ok(REDIS)
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + self.trim_interval_s
                    removed = await stream.trim(self.client, self.stream_key, self.retention_s)
                    if removed:
                        log.info("trimmed stream", extra={"entries": removed})
                backoff = 0.05
            except Exception as exc:
                log.warning("outbox relay cannot publish yet", extra={"error": repr(exc)})
                if self.dependencies is not None:
                    self.dependencies.report_error(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if rows == self.batch:
                continue  # there may be more right away
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
