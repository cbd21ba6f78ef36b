"""The events of concurrent store requests share one statement and one commit
(``eventline_shared.streams.group_commit``, up to ``max_events`` per statement); a
request's events are always in one statement, so a request is stored entirely
or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from eventline_ingestion.repository import IngestionRepository
from eventline_ingestion.validation import NewEvent
from eventline_shared import faults
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.streams.group_commit import GroupCommit

Stored = dict[tuple[str, str], tuple[bytes, bool]]
"""For each (customer_id, event_id): the stored event, serialized (``common_pb2.Event``, parsed
only by a reply that holds it), and whether it had been stored before."""

STATEMENT_TIMEOUT_S = 30.0
OVERLAP_EVENTS = 100
"""The fewest queued events that start a second statement beside a running one. A storing
statement costs PostgreSQL ~300 µs and this process ~200 µs of CPU whatever it carries (and
~30 and ~15 µs more per event; docs/performance.md), so unary calls are better grouped into the
next statement than sent beside the running one in groups of one or two; batches of hundreds
still overlap."""
SETTLE_TURNS = 100
"""Turns of the event loop a storing statement that ended with calls queued keeps its place
before the next one takes them (``GroupCommit``'s ``settle_turns``): calls received meanwhile
join the next statement, so under load the statements (and the relay's claims, woken per commit)
are shared by more calls; an idle loop turns in ~2 µs, so a call that waited behind a statement
at low load waits ~0.2 ms more at most, and a lone call with no statement running goes out at
once (docs/performance.md, issue 16's sixth round)."""


class EventWriter:
    def __init__(
        self,
        repository: IngestionRepository,
        on_stored: Callable[[], None],
        *,
        max_events: int = 2000,
        concurrency: int = 2,
        overlap_events: int = OVERLAP_EVENTS,
        settle_turns: int = SETTLE_TURNS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.repository = repository
        self.on_stored = on_stored
        self._group: GroupCommit[Sequence[NewEvent], Stored] = GroupCommit(
            self._statement,
            size=len,
            max_size=max_events,
            concurrency=concurrency,
            overlap_size=overlap_events,
            settle_turns=settle_turns,
        )

    async def store(self, events: Sequence[NewEvent]) -> Stored:
        """Store ``events`` (any keys, repeats allowed) and return the result for each key.

        A key repeated within the request, or already stored, is reported as
        seen before, with the event stored first.
        """
        return await self._group.submit(events)

    async def _statement(self, requests: list[Sequence[NewEvent]]) -> list[Stored]:
        unique: dict[tuple[str, str], NewEvent] = {}
        for events in requests:
            for event in events:
                unique.setdefault(event.key, event)
        await faults.point("writer.before_store")
        results = await self.repository.store_events(
            list(unique.values()), self.clock.now(), STATEMENT_TIMEOUT_S
        )
        await faults.point("writer.after_commit")
        if any(not seen for _, seen in results.values()):
            self.on_stored()
        if len(requests) == 1 and len(unique) == len(requests[0]):
            return [results]  # one request (a batch, a lone call) without a repeated key: as stored
        claimed: set[tuple[str, str]] = set()
        answers: list[Stored] = []
        for events in requests:
            mine: Stored = {}
            for event in events:
                if event.key not in mine:
                    stored, seen = results[event.key]
                    mine[event.key] = (stored, seen or event.key in claimed)
                    claimed.add(event.key)
            answers.append(mine)
        return answers
