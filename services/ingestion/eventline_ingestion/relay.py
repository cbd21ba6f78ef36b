"""The outbox relay: publishes committed events to the Redis stream, at least once, in order.

It runs inside every ingestion replica. Storing an event wakes it; it also
polls, so rows left by another replica (or by a crash) are published too.
A row is published and deleted in one PostgreSQL transaction: if anything
fails before the commit, the row stays and is published again later, so an
entry can be duplicated (consumers dedupe on the event id) but never lost.

Each outbox row names its partition stream. One relay at a time publishes a
partition (a transaction-scoped advisory lock on the stream's name; the other
relays go on to other partitions), taking its rows in id order: one
customer's events reach their stream in the order their transactions
committed, however many replicas run (with ``FOR UPDATE SKIP LOCKED``, a
relay used to publish a later row while another still held an earlier one).
Rows of another deployment's stream (another EVENTLINE_STREAM on the same
database) are not this relay's to publish.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from prometheus_client import Gauge

from eventline_shared import faults
from eventline_shared.observability.dependencies import POSTGRESQL, REDIS, DependencyMonitor
from eventline_shared.streams import stream

log = logging.getLogger(__name__)

OUTBOX_BACKLOG = Gauge("eventline_outbox_backlog_rows", "Outbox rows not yet published to the stream.")

LOCK_NAMESPACE = "eventline.outbox "
"""Prefixed to a partition's stream key to name its advisory lock (apart from other locks)."""
LOCK_HASH_SEED = 0
"""The seed of ``hashtextextended``, which turns the lock's name into its 64-bit key: every
replica must use the same one."""
UNNAMED_STREAM = ""
"""The stream of outbox rows written before rows named their partition (migration 0003)."""

# The partition's oldest rows, if this relay may publish the partition now: the advisory
# lock named $5 (LOCK_NAMESPACE and the stream key), held until the transaction ends, is taken
# first (an InitPlan, evaluated once before any row is read; no rows when another relay holds
# it). One statement, not a lock and then a claim: a claim's round trips are most of the
# relay's CPU (docs/performance.md). Rows written before outbox rows named their stream ($4,
# UNNAMED_STREAM) go to the stream of a one-partition layout ($3). The deletion only commits
# after the publish.
_CLAIM = """
WITH partition_lock AS (SELECT pg_try_advisory_xact_lock(hashtextextended($5, $6)) AS held)
DELETE FROM event_outbox WHERE id IN (
    SELECT id FROM event_outbox
    WHERE (SELECT held FROM partition_lock) AND (stream = $2 OR (stream = $4 AND $3))
    ORDER BY id LIMIT $1 FOR UPDATE
)
RETURNING id, entries
"""


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: stream.Client,
        layout: stream.StreamLayout | str,
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
        self.layout = stream.StreamLayout(layout) if isinstance(layout, str) else layout
        self.batch = batch
        self.poll_s = poll_s
        self.retention_s = retention_s
        self.trim_interval_s = trim_interval_s
        # Under load, publishing at most every few milliseconds lets each
        # publish carry many transactions' entries; when idle, a wake-up is
        # served at once.
        self.min_interval_s = min_interval_s
        self._wake = asyncio.Event()
        self.appenders = {key: stream.Appender(client, key) for key in self.layout.keys}
        self._stopping = False
        self.published = 0
        self.dependencies = dependencies
        """Told of every publish that worked or failed, so health shows a relay that cannot publish."""

    def wake(self) -> None:
        """Tell the relay that new outbox rows were committed."""
        self._wake.set()

    async def _publish(self) -> tuple[int, int]:
        """Publish and delete up to ``batch`` outbox rows of each partition no other relay holds;
        returns (the most rows of one partition, events)."""
        most, events = 0, 0
        for key, appender in self.appenders.items():
            rows, count = await self._publish_partition(key, appender)
            most, events = max(most, rows), events + count
        return most, events

    async def _publish_partition(self, key: str, appender: stream.Appender) -> tuple[int, int]:
        async with self.pool.acquire() as connection, connection.transaction():
            claimed = await connection.fetch(
                _CLAIM,
                self.batch,
                key,
                self.layout.partitions == 1,
                UNNAMED_STREAM,
                LOCK_NAMESPACE + key,
                LOCK_HASH_SEED,
            )
            if not claimed:
                return 0, 0  # nothing to publish, or another relay is publishing this partition
            rows = sorted(claimed, key=lambda row: row["id"])
            count = await appender.append([row["entries"] for row in rows])
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
                    removed = 0
                    for key in self.layout.keys:
                        removed += await stream.trim(self.client, key, self.retention_s)
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

    async def refresh_gauges(self) -> None:
        """Set ``OUTBOX_BACKLOG``: the rows left to publish (a metrics gauge of the service)."""
        OUTBOX_BACKLOG.set(await self.pool.fetchval("SELECT count(*) FROM event_outbox"))
