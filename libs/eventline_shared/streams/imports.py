"""Bulk imports running: a mark that ingestion keeps while it stores calls hinted as part of a
bulk import (``TrackEventsRequest.bulk_import``), which real-time consumers read to defer new
entries until the import is over (``StreamHandler.deferring``).

The mark is one key per stream, in its first partition's slot (``stream.import_mark_key``), that
every replica and a Redis Cluster share. Its value is an instant, in microseconds since 1970 by the
writing service's clock, until which the mark holds: a writer only moves it later, never earlier,
so replicas importing side by side keep the latest. Whether it is live is decided by the reader's
clock, not by a Redis expiry compared with wall time (the key's expiry, far longer than the lease,
only lets Redis forget a mark nobody renews).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from eventline_shared.clock import Clock
from eventline_shared.streams import stream
from eventline_shared.streams.stream import Client, StreamLayout
from eventline_shared.values import EPOCH

log = logging.getLogger(__name__)

LEASE = dt.timedelta(seconds=2)
"""How long the mark holds after it was last renewed: it is renewed while hinted calls are being
stored and at the end of each, so it lapses this long (at most) after the last one ends."""

_FORGET_MS = 3_600_000
"""The key's Redis expiry: only so that a mark nobody renews does not stay forever."""

# Moves the mark KEYS[1] to instant ARGV[1] (µs) unless it holds later already; ARGV[2]: the key's
# expiry (ms), for forgetting only.
_PUBLISH = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > held then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def _micros(instant: dt.datetime) -> int:
    return (instant - EPOCH) // dt.timedelta(microseconds=1)


class ImportMark:
    """The "import running" mark of one stream: published by ingestion, read by consumers."""

    def __init__(
        self, client: Client, layout: StreamLayout, clock: Clock, lease: dt.timedelta = LEASE
    ) -> None:
        self.client = client
        self.key = stream.import_mark_key(layout.keys[0])
        self.clock = clock
        self.lease = lease
        self._publish = client.register_script(_PUBLISH)

    async def publish(self) -> dt.datetime:
        """Hold the mark until the clock's now plus the lease (or later, if another replica holds
        it so); returns the instant this call asked for."""
        until = self.clock.now() + self.lease
        await self._publish(keys=[self.key], args=[_micros(until), _FORGET_MS])
        return until

    async def until(self) -> dt.datetime | None:
        """The instant the mark holds until (None: never set, or forgotten)."""
        value = await self.client.get(self.key)
        if value is None:
            return None
        try:
            return EPOCH + dt.timedelta(microseconds=int(value))
        except ValueError:
            return None  # not a mark this code wrote: ignored, so that consumers read on

    async def live(self) -> bool:
        """Whether a bulk import is being stored now, by this reader's clock."""
        until = await self.until()
        return until is not None and self.clock.now() < until


class ImportsRunning:
    """Ingestion's side: ``storing()`` around each hinted call's storing keeps the mark live, in
    the background. Publishing never delays a call, and a failure to publish (Redis down) never
    fails one: the consumers then only read on as usual."""

    def __init__(self, mark: ImportMark) -> None:
        self.mark = mark
        self.calls = 0
        """Hinted calls being stored now (in this process)."""
        self._held_until: dt.datetime | None = None
        self._task: asyncio.Task[None] | None = None

    @contextmanager
    def storing(self) -> Iterator[None]:
        """Around the storing of a hinted call: the mark holds while it runs and a lease after."""
        self.calls += 1
        self._renew()
        try:
            yield
        finally:
            self.calls -= 1
            self._renew()

    def _renew(self) -> None:
        """Start publishing in the background unless it runs already or the mark this process
        published still holds for two thirds of the lease."""
        if self._task is not None and not self._task.done():
            return
        if (
            self._held_until is not None
            and self._held_until - self.mark.clock.now() >= self.mark.lease * 2 / 3
        ):
            return
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        """Publish, and again every third of the lease while hinted calls are being stored."""
        while True:
            try:
                self._held_until = await self.mark.publish()
            except Exception as exc:  # never a call's failure: the consumers read on meanwhile
                log.warning("cannot publish the import mark", extra={"error": repr(exc)[:300]})
            if self.calls == 0:
                return
            await asyncio.sleep(self.mark.lease.total_seconds() / 3)

    async def settled(self) -> None:
        """Once no hinted call is being stored: wait for the publishing in progress (tests)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        """Stop renewing (shutdown): the mark lapses by itself a lease later."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
