"""All SQL of the segmentation service: evaluating compiled filters and saved segments.

Every query runs with the caller's remaining deadline as its asyncpg timeout:
when it runs out, asyncpg cancels the statement in PostgreSQL and the caller
gets DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from prometheus_client import Counter

from eventline_segmentation.compiler import Compiled, MatchQuery
from eventline_shared.errors import AlreadyExists, DeadlineExceeded, NotFound, quote
from eventline_shared.storage.database import Connection

T = TypeVar("T")


async def _bounded(run: Callable[[], Awaitable[T]], timeout: float | None) -> T:
    if timeout is not None and timeout <= 0:
        raise DeadlineExceeded("the deadline passed before the query could start")
    try:
        return await run()
    except TimeoutError:
        raise DeadlineExceeded("the query did not finish within the deadline and was cancelled") from None


@dataclass(frozen=True)
class StoredSegment:
    segment_id: str
    display_name: str
    description: str
    filter: bytes
    created_at: dt.datetime
    updated_at: dt.datetime
    realtime: bool = False
    time_zone: str = ""


_SEGMENT_COLUMNS = (
    "segment_id, display_name, description, filter, created_at, updated_at, realtime, time_zone"
)

SegmentChanged = Callable[[Connection, "StoredSegment | None", "StoredSegment"], Awaitable[None]]
"""Called in the transaction that created (old None) or changed a segment."""


def _segment(row: asyncpg.Record) -> StoredSegment:
    return StoredSegment(
        row["segment_id"],
        row["display_name"],
        row["description"],
        bytes(row["filter"]),
        row["created_at"],
        row["updated_at"],
        row["realtime"],
        row["time_zone"],
    )


MATCHES_ON_PRIMARY = Counter(
    "eventline_segmentation_matches_on_primary",  # exported as eventline_segmentation_matches_on_primary_total
    "MatchCustomer calls evaluated on the primary because the read replica had not replayed "
    "the events they required yet.",
)

_HOLDS_EVENTS = """
SELECT count(*) = $3 FROM customer_events WHERE customer_id = $1 AND event_id = ANY($2::text[])
"""


class SegmentationRepository:
    """Filters are evaluated on ``read_pool`` (a streaming replica, or the primary); saved segments
    are read and written on the primary, ``pool``, so a segment is found right after it is saved."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        match_pool: asyncpg.Pool | None = None,
        stream_connections: int = 1,
        read_pool: asyncpg.Pool | None = None,
    ) -> None:
        self.pool = pool
        self.read_pool = read_pool or pool
        self.match_pool = match_pool or self.read_pool
        """MatchCustomer's connections, which keep the plan cache (see service.session_dsn)."""
        self.replica = read_pool is not None
        """Whether filters are evaluated on a replica, which may lag behind ``pool``."""
        self._stream_connections = asyncio.Semaphore(stream_connections)

    async def count(self, query: Compiled, timeout: float | None) -> int:
        async def run() -> int:
            return int(await self.read_pool.fetchval(query.sql, *query.params, timeout=timeout))

        return await _bounded(run, timeout)

    async def ids(self, query: Compiled, timeout: float | None) -> list[str]:
        async def run() -> list[str]:
            rows = await self.read_pool.fetch(query.sql, *query.params, timeout=timeout)
            return [r[0] for r in rows]

        return await _bounded(run, timeout)

    async def stream_page(self, query: Compiled, timeout: Callable[[], float | None]) -> list[str]:
        """One page of a stream's ids (``timeout`` gives the time left once a connection is free).

        A stream holds no connection or transaction between its pages, so a client
        that stops reading holds nothing of the database; and streams share at most
        ``stream_connections`` connections, so they never take the whole pool from
        the other RPCs.
        """
        async with self._stream_connections:
            return await self.ids(query, timeout())

    async def match(
        self, query: MatchQuery, customer_id: str, required_event_ids: Sequence[str], timeout: float | None
    ) -> asyncpg.Record | None:
        """The customer's row of ``query``, evaluated where every required event is visible.

        A replica replays the primary's transactions in commit order, so once it holds the
        required events it also holds everything committed before them (the customer's
        profile and earlier events): the match runs there, on the same connection. Otherwise
        (it lags) the match runs on the primary, which holds whatever was acknowledged.
        """
        required = sorted(set(required_event_ids))

        async def run() -> asyncpg.Record | None:
            async with self.match_pool.acquire() as connection:
                if not (self.replica and required) or await connection.fetchval(
                    _HOLDS_EVENTS, customer_id, required, len(required), timeout=timeout
                ):
                    return await connection.fetchrow(query.sql, *query.params, timeout=timeout)
            MATCHES_ON_PRIMARY.inc()
            return await self.pool.fetchrow(query.sql, *query.params, timeout=timeout)

        return await _bounded(run, timeout)

    # Saved segments ------------------------------------------------------------------

    async def create_segment(
        self,
        segment_id: str,
        display_name: str,
        description: str,
        filter_bytes: bytes,
        realtime: bool = False,
        time_zone: str = "",
        changed: SegmentChanged | None = None,
    ) -> StoredSegment:
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"""
                INSERT INTO segments (segment_id, display_name, description, filter, realtime, time_zone)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (segment_id) DO NOTHING
                RETURNING {_SEGMENT_COLUMNS}
                """,
                segment_id,
                display_name,
                description,
                filter_bytes,
                realtime,
                time_zone,
            )
            if row is not None:
                created = _segment(row)
                if changed is not None:
                    await changed(connection, None, created)
                return created
        existing = await self.get_segment(segment_id)
        if (
            existing.display_name,
            existing.description,
            existing.filter,
            existing.realtime,
            existing.time_zone,
        ) != (
            display_name,
            description,
            filter_bytes,
            realtime,
            time_zone,
        ):
            raise AlreadyExists(f"segment {quote(segment_id)} already exists with other content")
        return existing

    async def get_segment(self, segment_id: str) -> StoredSegment:
        if "\x00" in segment_id:  # PostgreSQL text cannot hold NUL: no stored id can match it
            raise NotFound(f"segment {quote(segment_id)} does not exist")
        row = await self.pool.fetchrow(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE segment_id = $1", segment_id
        )
        if row is None:
            raise NotFound(f"segment {quote(segment_id)} does not exist")
        return _segment(row)

    async def list_segments(self, after: str, limit: int, max_bytes: int) -> list[StoredSegment]:
        """Up to ``limit`` segments after ``after``, stopping after the first that starts past ``max_bytes``.

        The byte bound (of the filter and texts, counted without reading them) keeps a page of
        large segments from loading a thousand of them.
        """
        rows = await self.pool.fetch(
            f"""
            SELECT {_SEGMENT_COLUMNS} FROM (
                SELECT {_SEGMENT_COLUMNS}, sum(size) OVER (ORDER BY segment_id COLLATE "C") - size AS before
                FROM (
                    SELECT {_SEGMENT_COLUMNS},
                           octet_length(filter) + octet_length(display_name) + octet_length(description) AS size
                    FROM segments
                    WHERE segment_id COLLATE "C" > $1 COLLATE "C"
                    ORDER BY segment_id COLLATE "C" LIMIT $2
                ) AS sized
            ) AS counted
            WHERE before <= $3
            ORDER BY segment_id COLLATE "C"
            """,
            after,
            limit,
            max_bytes,
        )
        return [_segment(r) for r in rows]

    async def update_segment(
        self, segment_id: str, changes: dict[str, Any], changed: SegmentChanged | None = None
    ) -> StoredSegment:
        if "\x00" in segment_id:
            raise NotFound(f"segment {quote(segment_id)} does not exist")
        # Column names come from a fixed whitelist, never from the request.
        allowed = {"display_name", "description", "filter", "realtime", "time_zone"}
        assert set(changes) <= allowed
        sets = [f"{column} = ${i}" for i, column in enumerate(sorted(changes), start=2)]
        async with self.pool.acquire() as connection, connection.transaction():
            before = await connection.fetchrow(
                f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE segment_id = $1 FOR UPDATE", segment_id
            )
            row = await connection.fetchrow(
                f"""
                UPDATE segments SET {", ".join([*sets, "updated_at = now()"])}
                WHERE segment_id = $1 RETURNING {_SEGMENT_COLUMNS}
                """,
                segment_id,
                *[changes[c] for c in sorted(changes)],
            )
            if row is None or before is None:
                raise NotFound(f"segment {quote(segment_id)} does not exist")
            after = _segment(row)
            if changed is not None:
                await changed(connection, _segment(before), after)
            return after

    async def delete_segment(self, segment_id: str) -> None:
        if "\x00" in segment_id:
            raise NotFound(f"segment {quote(segment_id)} does not exist")
        deleted = await self.pool.fetchval(
            "DELETE FROM segments WHERE segment_id = $1 RETURNING segment_id", segment_id
        )
        if deleted is None:
            raise NotFound(f"segment {quote(segment_id)} does not exist")
