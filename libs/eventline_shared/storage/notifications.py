"""PostgreSQL notifications: wake a waiting worker the moment a transaction commits.

``notify`` inside a writing transaction queues a NOTIFY that PostgreSQL delivers
only if and when that transaction commits, to every session listening on the
channel (every replica: a notification is a broadcast, so whatever the woken
workers then claim must still be claimed safely, e.g. with ``SKIP LOCKED`` or an
advisory lock). ``Listener`` holds one connection of its own (pool connections
are never left LISTENing, see ``database._keep_session``) and calls a callback
for each notification; it reconnects after the connection is lost, and the
worker it wakes keeps polling meanwhile, so a lost notification only delays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from eventline_shared.storage.database import CONNECT_TIMEOUT_S, Connection

log = logging.getLogger(__name__)

OUTBOX = "eventline_outbox"
"""The channel of committed ``event_outbox`` rows that a writer other than the relay's own
process wrote (segmentation's transitions, ingestion's profile notices): the relays wake on it."""


async def notify(connection: Connection, channel: str) -> None:
    """Wake the listeners of ``channel`` when the current transaction commits (once per transaction:
    PostgreSQL folds identical notifications of one transaction)."""
    await connection.execute("SELECT pg_notify($1, '')", channel)


class Listener:
    """Calls ``wake`` whenever ``channel`` is notified, until ``shutdown``."""

    def __init__(self, dsn: str, channel: str, wake: Callable[[], None], *, retry_s: float = 1.0) -> None:
        self.dsn = dsn
        self.channel = channel
        self.wake = wake
        self.retry_s = retry_s
        self.listening = asyncio.Event()
        """Set while a connection listens (tests wait for it before they write)."""
        self._stop = asyncio.Event()

    def _notified(self, *_: Any) -> None:
        self.wake()

    async def run(self) -> None:
        while not self._stop.is_set():
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
            except Exception as exc:
                log.warning("cannot listen for notifications yet", extra={"error": repr(exc)})
            else:
                try:
                    connection.add_termination_listener(lambda _, lost=lost: lost.set())
                    await connection.add_listener(self.channel, self._notified)
                    self.listening.set()
                    # Rows committed before LISTEN took effect are the poll's (or this wake's).
                    self.wake()
                    stop = asyncio.ensure_future(self._stop.wait())
                    gone = asyncio.ensure_future(lost.wait())
                    try:
                        await asyncio.wait([stop, gone], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stop.cancel()
                        gone.cancel()
                except Exception as exc:
                    log.warning("listening for notifications failed", extra={"error": repr(exc)})
                finally:
                    self.listening.clear()
                    if not connection.is_closed():
                        await connection.close(timeout=CONNECT_TIMEOUT_S)
            if not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), self.retry_s)
                except TimeoutError:
                    pass

    def shutdown(self) -> None:
        self._stop.set()
