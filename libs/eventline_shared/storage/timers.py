"""Durable timers in PostgreSQL: set by key, claimed when due by any replica, fired once.

A timer table has the caller's key columns (text), ``due_at timestamptz`` and
``claimed_until timestamptz`` (NULL when unclaimed), a primary key on the key
columns and an index on ``due_at`` (see migration 0110's ``segment_timers``).
One key has at most one timer: setting it again moves it.

Firing is two steps, so that a timer's work runs under the caller's own locks:

1. ``claim`` takes up to ``limit`` timers due at the business ``now`` (the
   caller's clock) that no live claim holds, with ``FOR UPDATE SKIP LOCKED``
   (replicas claiming at once get different timers), and leases them for
   ``lease_s`` of database time. A replica that dies holding a claim only
   delays its timers until the lease ends; then any replica claims them.
2. the caller's handler, in its own transaction and after its own locks,
   calls ``take``: it deletes the timer if it is still the one claimed (same
   key, same ``due_at``) and says whether it did. Only the transaction that
   took it does the timer's work, so a timer fires once even if two replicas
   claimed it (one after the other's lease ran out) or a handler crashed after
   its work committed. A timer moved in between (``set`` by other work) is not
   taken: its new instant stands.

The table name and key columns are identifiers chosen by the caller's code,
never by a request; they are checked and quoted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from eventline_shared.storage.database import Connection

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Due:
    """One claimed timer: its key values (in key column order) and the instant it was set for."""

    key: tuple[str, ...]
    due_at: dt.datetime


def _quoted(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


class TimerTable:
    """The timers of one table, keyed by ``key_columns``."""

    def __init__(self, table: str, key_columns: Sequence[str], lease_s: float = 30.0) -> None:
        if not key_columns:
            raise ValueError("a timer table has at least one key column")
        self.table = _quoted(table)
        self.keys = [_quoted(c) for c in key_columns]
        self.lease = dt.timedelta(seconds=lease_s)
        columns = ", ".join(self.keys)
        placeholders = ", ".join(f"${i}" for i in range(1, len(self.keys) + 1))
        n = len(self.keys)
        matches = " AND ".join(f"{c} = ${i}" for i, c in enumerate(self.keys, start=1))
        self._set = (
            f"INSERT INTO {self.table} ({columns}, due_at, claimed_until) VALUES ({placeholders}, ${n + 1}, NULL) "
            f"ON CONFLICT ({columns}) DO UPDATE SET due_at = excluded.due_at, claimed_until = NULL"
        )
        arrays = ", ".join(f"${i}::text[]" for i in range(1, n + 1))
        self._set_many = (
            f"INSERT INTO {self.table} ({columns}, due_at, claimed_until) "
            f"SELECT *, ${n + 1}::timestamptz, NULL::timestamptz FROM unnest({arrays}) "
            f"ON CONFLICT ({columns}) DO UPDATE SET due_at = excluded.due_at, claimed_until = NULL"
        )
        self._set_each = (
            f"INSERT INTO {self.table} ({columns}, due_at, claimed_until) "
            f"SELECT *, NULL::timestamptz FROM unnest({arrays}, ${n + 1}::timestamptz[]) "
            f"ON CONFLICT ({columns}) DO UPDATE SET due_at = excluded.due_at, claimed_until = NULL"
        )
        pairs = " AND ".join(f"t.{c} = d.{c}" for c in self.keys)
        self._cancel_many = f"DELETE FROM {self.table} t USING unnest({arrays}) AS d({columns}) WHERE {pairs}"
        self._take_many = (
            f"DELETE FROM {self.table} t USING unnest({arrays}, ${n + 1}::timestamptz[]) AS d({columns}, due_at) "
            f"WHERE {pairs} AND t.due_at = d.due_at "
            f"RETURNING {', '.join(f't.{c}' for c in self.keys)}"
        )
        self._cancel = f"DELETE FROM {self.table} WHERE {matches}"
        self._take = f"DELETE FROM {self.table} WHERE {matches} AND due_at = ${n + 1} RETURNING true"
        self._claim = (
            f"UPDATE {self.table} t SET claimed_until = clock_timestamp() + $3::interval "
            f"FROM (SELECT {columns} FROM {self.table} "
            f"      WHERE due_at <= $1 AND (claimed_until IS NULL OR claimed_until < clock_timestamp()) "
            f"      ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED) d "
            f"WHERE {' AND '.join(f't.{c} = d.{c}' for c in self.keys)} "
            f"RETURNING {', '.join(f't.{c}' for c in self.keys)}, t.due_at"
        )
        self._next = f"SELECT min(due_at) FROM {self.table}"
        self._next_claimable = (
            f"SELECT min(due_at) FROM {self.table} "
            f"WHERE claimed_until IS NULL OR claimed_until < clock_timestamp()"
        )

    async def set(self, connection: Connection, key: Sequence[str], due_at: dt.datetime) -> None:
        """Make ``key``'s timer due at ``due_at`` (replacing any earlier one, releasing its claim)."""
        await connection.execute(self._set, *key, due_at)

    async def set_many(
        self, connection: Connection, keys: Sequence[Sequence[str]], due_at: dt.datetime
    ) -> None:
        """``set`` for many keys at one instant, in one statement (keys in ascending order, so
        that concurrent writers lock rows in one order)."""
        if not keys:
            return
        columns = list(zip(*sorted(tuple(k) for k in keys), strict=True))
        await connection.execute(self._set_many, *(list(c) for c in columns), due_at)

    async def set_each(
        self, connection: Connection, timers: Sequence[tuple[Sequence[str], dt.datetime]]
    ) -> None:
        """``set`` for many keys, each at its own instant, in one statement (keys in ascending
        order; a key at most once)."""
        if not timers:
            return
        ordered = sorted((tuple(key), due_at) for key, due_at in timers)
        columns = list(zip(*(key for key, _ in ordered), strict=True))
        await connection.execute(self._set_each, *(list(c) for c in columns), [due for _, due in ordered])

    async def cancel_many(self, connection: Connection, keys: Sequence[Sequence[str]]) -> None:
        """``cancel`` for many keys in one statement."""
        if not keys:
            return
        columns = list(zip(*sorted(tuple(k) for k in keys), strict=True))
        await connection.execute(self._cancel_many, *(list(c) for c in columns))

    async def take_many(self, connection: Connection, due: Sequence[Due]) -> frozenset[tuple[str, ...]]:
        """``take`` for many claimed timers in one statement: the keys of those taken."""
        if not due:
            return frozenset()
        ordered = sorted(due, key=lambda d: d.key)
        columns = list(zip(*(d.key for d in ordered), strict=True))
        rows = await connection.fetch(
            self._take_many, *(list(c) for c in columns), [d.due_at for d in ordered]
        )
        return frozenset(tuple(r[i] for i in range(len(self.keys))) for r in rows)

    async def cancel(self, connection: Connection, key: Sequence[str]) -> None:
        """Remove ``key``'s timer, if any."""
        await connection.execute(self._cancel, *key)

    async def claim(self, pool: asyncpg.Pool | Connection, now: dt.datetime, limit: int) -> list[Due]:
        """Lease up to ``limit`` timers due at ``now`` that no live claim holds, earliest first."""
        rows = await pool.fetch(self._claim, now, limit, self.lease)
        return sorted(
            (Due(tuple(r[i] for i in range(len(self.keys))), r["due_at"]) for r in rows),
            key=lambda d: d.due_at,
        )

    async def take(self, connection: Connection, due: Due) -> bool:
        """Delete the claimed timer if it still stands: True exactly once per timer set."""
        return bool(await connection.fetchval(self._take, *due.key, due.due_at))

    async def next_due(self, pool: asyncpg.Pool | Connection) -> dt.datetime | None:
        """The earliest instant any timer is due, claimed or not."""
        value: dt.datetime | None = await pool.fetchval(self._next)
        return value

    async def next_claimable(self, pool: asyncpg.Pool | Connection) -> dt.datetime | None:
        """The earliest instant a timer that no live claim holds is due (``claim`` would take it then)."""
        value: dt.datetime | None = await pool.fetchval(self._next_claimable)
        return value
