"""Group commit: concurrent store requests share one statement and one commit.

Every RPC that stores events hands them to the writer and awaits its result.
While a statement runs, new requests queue up; when it finishes, the next
statement takes everything queued (whole requests only, up to ``max_events``),
so under load each commit carries many requests and under no load a request
goes out at once. A request's events are always in one statement, so a
request is stored entirely or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from eventline.common.v1 import common_pb2

from eventline_ingestion.repository import IngestionRepository
from eventline_ingestion.validation import NewEvent
from eventline_shared import faults
from eventline_shared.clock import SYSTEM_CLOCK, Clock

Stored = dict[tuple[str, str], tuple[common_pb2.Event, bool]]
"""For each (customer_id, event_id): the stored event and whether it had been stored before."""

STATEMENT_TIMEOUT_S = 30.0


@dataclass
class _Request:
    events: Sequence[NewEvent]
    done: asyncio.Future[Stored] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EventWriter:
    def __init__(
        self,
        repository: IngestionRepository,
        on_stored: Callable[[], None],
        *,
        max_events: int = 2000,
        concurrency: int = 2,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.repository = repository
        self.on_stored = on_stored
        self.max_events = max_events
        self.concurrency = concurrency
        self._queue: list[_Request] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def store(self, events: Sequence[NewEvent]) -> Stored:
        """Store ``events`` (any keys, repeats allowed) and return the result for each key.

        A key repeated within the request, or already stored, is reported as
        seen before, with the event stored first.
        """
        request = _Request(events)
        self._queue.append(request)
        self._start_statements()
        return await request.done

    def _start_statements(self) -> None:
        while self._queue and self._running < self.concurrency:
            taken: list[_Request] = []
            count = 0
            while self._queue and (not taken or count + len(self._queue[0].events) <= self.max_events):
                request = self._queue.pop(0)
                if request.done.cancelled():
                    continue
                taken.append(request)
                count += len(request.events)
            if not taken:
                return
            self._running += 1
            task = asyncio.create_task(self._statement(taken))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _statement(self, requests: list[_Request]) -> None:
        try:
            unique: dict[tuple[str, str], NewEvent] = {}
            for request in requests:
                for event in request.events:
                    unique.setdefault(event.key, event)
            await faults.point("writer.before_store")
            results = await self.repository.store_events(
                list(unique.values()), self.clock.now(), STATEMENT_TIMEOUT_S
            )
            await faults.point("writer.after_commit")
        except Exception as exc:
            for request in requests:
                if not request.done.done():
                    request.done.set_exception(exc)
        else:
            if any(not seen for _, seen in results.values()):
                self.on_stored()
            claimed: set[tuple[str, str]] = set()
            for request in requests:
                mine: Stored = {}
                for event in request.events:
                    if event.key not in mine:
                        stored, seen = results[event.key]
                        mine[event.key] = (stored, seen or event.key in claimed)
                        claimed.add(event.key)
                if not request.done.done():
                    request.done.set_result(mine)
        finally:
            self._running -= 1
            self._start_statements()
