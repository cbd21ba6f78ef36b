"""The storing statement on its own (``IngestionRepository.store_events``), on a real database: what
it answers for new and stored keys, its outbox rows per partition stream, the columns sent as one
text each, which an id or name holding the separator would shift (refused before anything is sent),
and its two forms: plain inserts for new keys, and the form that skips keys stored before, which a
key stored before (or being stored by another statement) sends the events through."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_ingestion import repository as statements
from eventline_ingestion import validation
from eventline_ingestion.repository import IngestionRepository
from eventline_shared.clock import ManualClock
from eventline_shared.streams import stream
from tests.support import session_waits_for_a_lock

NOW = dt.datetime(2026, 12, 2, 4, 0, tzinfo=dt.UTC)


def events(*keys: tuple[str, str]) -> list[validation.NewEvent]:
    arrival = validation.Arrival.now_under("", ManualClock(NOW))
    made = []
    for customer_id, event_id in keys:
        request = ingestion_pb2.TrackCustomerEventRequest(
            customer_id=customer_id, event_id=event_id, name="Bought"
        )
        request.context["item_id"].integer_value = len(made)
        event = validation.customer_event(request, arrival)
        assert isinstance(event, validation.NewEvent)
        made.append(event)
    return made


async def test_new_keys_are_answered_as_built_and_stored_ones_with_the_stored_event(db_url: str) -> None:
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        repository = IngestionRepository(pool, stream.StreamLayout("app:{events}", partitions=4))
        first = await repository.store_events(events(("c2", "e1"), ("c1", "e2"), ("c3", "e3")), NOW)
        assert {key: seen for key, (_, seen) in first.items()} == {
            ("c2", "e1"): False,
            ("c1", "e2"): False,
            ("c3", "e3"): False,
        }
        # c1's e2 again with another context: answered with the event stored first.
        again = events(("c1", "e4"), ("c1", "e2"))
        second = await repository.store_events(again, NOW)
        parse = common_pb2.Event.FromString
        assert second[("c1", "e2")][1] is True
        assert parse(second[("c1", "e2")][0]) == parse(first[("c1", "e2")][0])
        assert second[("c1", "e4")][1] is False
        assert parse(second[("c1", "e4")][0]).context["item_id"].integer_value == 0
        stored = await pool.fetch("SELECT customer_id, event_id FROM customer_events ORDER BY 1, 2")
        assert [tuple(r) for r in stored] == [("c1", "e2"), ("c1", "e4"), ("c2", "e1"), ("c3", "e3")]
        # Each entry is in its customer's partition stream, in arrival order.
        rows = await pool.fetch("SELECT stream, entries FROM event_outbox ORDER BY id")
        layout = repository.layout
        for row in rows:
            for customer_id, *_ in stream.unpack_entries(row["entries"]):
                assert row["stream"] == layout.key_for(customer_id)
        published = [e[1] for row in rows for e in stream.unpack_entries(row["entries"])]
        assert sorted(published) == ["e1", "e2", "e3", "e4"]


def mixed(*keys: tuple[str, str]) -> list[validation.NewEvent]:
    """Customer events, and system events where the customer id is ``""``, in this order."""
    arrival = validation.Arrival.now_under("", ManualClock(NOW))
    made = []
    for customer_id, event_id in keys:
        if customer_id:
            made += events((customer_id, event_id))
            continue
        system = validation.system_event(
            ingestion_pb2.TrackSystemEventRequest(event_id=event_id, name="Restocked"), arrival
        )
        assert isinstance(system, validation.NewEvent)
        made.append(system)
    return made


async def test_the_outbox_row_holds_the_new_events_in_arrival_order_whether_or_not_some_were_stored(
    db_url: str,
) -> None:
    # All new: the outbox takes the arrays' rows as they are; some stored before: only the new
    # ones, joined with what was stored. Either way in arrival order, system events among them.
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        repository = IngestionRepository(pool, stream.StreamLayout("app:events"))

        async def outbox_row() -> list[str]:
            rows = await pool.fetch("DELETE FROM event_outbox RETURNING entries")
            assert len(rows) == 1
            return [event_id for _, event_id, *_ in stream.unpack_entries(rows[0]["entries"])]

        await repository.store_events(mixed(("c2", "e1"), ("", "s1"), ("c1", "e2"), ("c2", "e3")), NOW)
        assert await outbox_row() == ["e1", "s1", "e2", "e3"]
        again = mixed(
            ("c3", "e4"), ("c1", "e2"), ("", "s2"), ("", "s1"), ("c2", "e5"), ("c2", "e1"), ("c1", "e6")
        )
        await repository.store_events(again, NOW)
        assert await outbox_row() == ["e4", "s2", "e5", "e6"]
        await repository.store_events(mixed(("c1", "e2"), ("", "s1")), NOW)
        assert await pool.fetchval("SELECT count(*) FROM event_outbox") == 0


@pytest.mark.parametrize("field", ["customer_id", "event_id", "name"])
async def test_an_id_or_name_holding_the_separator_stores_nothing(db_url: str, field: str) -> None:
    """Validation admits no comma in ids and names; the statement would misalign its columns if one
    came anyway, so the repository refuses the whole statement before sending it."""
    async with asyncpg.create_pool(db_url, min_size=1, max_size=1) as pool:
        repository = IngestionRepository(pool)
        batch = events(("c1", "e1"), ("c1", "e2"))
        setattr(batch[1], field, "a,b")  # past validation, which would refuse it
        with pytest.raises(ValueError, match="holds ','"):
            await repository.store_events(batch, NOW)
        assert await pool.fetchval("SELECT count(*) FROM customer_events") == 0


async def test_contexts_holding_the_separators_are_stored_as_sent(db_url: str) -> None:
    """Contexts go joined by a control character, which their JSON text always escapes."""
    async with asyncpg.create_pool(db_url, min_size=1, max_size=1) as pool:
        repository = IngestionRepository(pool)
        batch = events(("c1", "e1"), ("c1", "e2"), ("c2", "e3"))
        text = "a\x1eb,c\x1f\u2028é\\\"'"
        request = ingestion_pb2.TrackCustomerEventRequest(customer_id="c1", event_id="e2", name="Bought")
        request.context["note"].string_value = text
        request.context["amount"].decimal_value = "1e2"
        odd = validation.customer_event(request, validation.Arrival.now_under("", ManualClock(NOW)))
        assert isinstance(odd, validation.NewEvent)
        batch[1] = odd
        await repository.store_events(batch, NOW)
        stored = await repository.stored_events(batch)
        contexts = {e.event_id: dict(e.context) for e in stored}
        assert contexts["e2"]["note"].string_value == text
        assert contexts["e2"]["amount"].decimal_value == "100.0"
        assert contexts["e1"]["item_id"].integer_value == 0
        assert contexts["e3"]["item_id"].integer_value == 2


class RecordingPool:
    """A real pool that records which storing statement each call ran."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.forms: list[str] = []

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[asyncpg.Record]:
        try:
            return await self.pool.fetch(query, *args, **kwargs)
        finally:
            self._record(query)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        try:
            return await self.pool.execute(query, *args, **kwargs)
        finally:
            self._record(query)

    def _record(self, query: str) -> None:
        form = {statements._STORE_NEW_EVENTS: "new", statements._STORE_EVENTS: "tolerant"}.get(query)
        if form:
            self.forms.append(form)


async def test_a_key_stored_before_sends_this_batch_and_the_next_ones_through_the_tolerant_form(
    db_url: str,
) -> None:
    async with asyncpg.create_pool(db_url, min_size=1, max_size=1) as pool:
        recording = RecordingPool(pool)
        repository = IngestionRepository(recording)  # type: ignore[arg-type]
        await repository.store_events(events(("c1", "e1"), ("c1", "e2")), NOW)
        assert recording.forms == ["new"]
        again = await repository.store_events(events(("c1", "e3"), ("c1", "e2")), NOW)
        assert recording.forms == ["new", "new", "tolerant"], "failed on e2, then stored what was new"
        assert {key: seen for key, (_, seen) in again.items()} == {("c1", "e2"): True, ("c1", "e3"): False}
        await repository.store_events(events(("c1", "e4")), NOW)
        assert recording.forms[3:] == ["tolerant"], "a client sending again sends more than one batch"
        # Nothing of the failed statement is kept: one row per event, the stats and one outbox row
        # per statement that stored something.
        assert await pool.fetchval("SELECT count(*) FROM customer_events") == 4
        assert await pool.fetchval("SELECT count FROM customer_event_stats WHERE customer_id = 'c1'") == 4
        entries = [
            e[1]
            for r in await pool.fetch("SELECT entries FROM event_outbox ORDER BY id")
            for e in stream.unpack_entries(r["entries"])
        ]
        assert entries == ["e1", "e2", "e3", "e4"]


async def test_a_key_another_statement_is_storing_is_answered_as_stored_before(db_url: str) -> None:
    """The plain form waits for the other transaction's key; once that commits, it fails on it, and
    the events go through the tolerant form."""
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        repository = IngestionRepository(pool)
        async with pool.acquire() as other, other.transaction():
            await other.execute("INSERT INTO customers (customer_id) VALUES ('c1')")
            await other.execute(
                "INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at)"
                " VALUES ('c1', 'e1', 'Bought', $1, $1)",
                NOW,
            )
            storing = asyncio.create_task(repository.store_events(events(("c1", "e1"), ("c1", "e2")), NOW))
            await session_waits_for_a_lock(other, "the statement did not wait for the other's key")
        results = await storing
        assert {key: seen for key, (_, seen) in results.items()} == {("c1", "e1"): True, ("c1", "e2"): False}
        assert await pool.fetchval("SELECT count FROM customer_event_stats WHERE customer_id = 'c1'") == 1


async def test_the_new_events_are_written_before_their_stats_rows_are_locked(db_url: str) -> None:
    """Concurrent statements share a busy customer's stats rows; the plain form takes their locks
    last, so that another statement waits for them only from then to the commit, not through
    the whole insert. Seen from a third session: while the statement waits for a stats row, its
    event's key is already taken."""
    async with asyncpg.create_pool(db_url, min_size=3, max_size=3) as pool:
        repository = IngestionRepository(pool)
        await repository.store_events(events(("c1", "e1")), NOW)
        async with pool.acquire() as holder, holder.transaction():
            await holder.execute("SELECT FROM customer_event_stats WHERE customer_id = 'c1' FOR UPDATE")
            storing = asyncio.create_task(repository.store_events(events(("c1", "e2")), NOW))
            await session_waits_for_a_lock(holder, "the statement did not wait for the stats row")
            async with pool.acquire() as probe:
                await probe.execute("SET lock_timeout = '10ms'")
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await probe.execute(
                        "INSERT INTO customer_events (customer_id, event_id, name, occurred_at, received_at)"
                        " VALUES ('c1', 'e2', 'Bought', $1, $1)",
                        NOW,
                    )
        assert {key: seen for key, (_, seen) in (await storing).items()} == {("c1", "e2"): False}


@pytest.mark.parametrize("partitions", [1, 4])
async def test_new_events_outbox_rows_hold_each_partitions_entries_and_customers_in_arrival_order(
    db_url: str, partitions: int
) -> None:
    """The plain form gets each partition's outbox row made: the entries are sorted by key for the
    statement's columns, and put back in the order they arrived."""
    async with asyncpg.create_pool(db_url, min_size=1, max_size=1) as pool:
        recording = RecordingPool(pool)
        layout = stream.StreamLayout("app:{events}", partitions=partitions)
        repository = IngestionRepository(recording, layout)  # type: ignore[arg-type]
        arrived = [(f"c{(7 * i) % 10}", f"e{99 - i:02d}") for i in range(40)]
        await repository.store_events(events(*arrived), NOW)
        assert recording.forms == ["new"]
        rows = await pool.fetch("SELECT stream, customer_ids, entries FROM event_outbox ORDER BY id")
        assert sorted(r["stream"] for r in rows) == sorted({layout.key_for(c) for c, _ in arrived})
        for row in rows:
            unpacked = [(e[0], e[1]) for e in stream.unpack_entries(row["entries"])]
            assert unpacked == [key for key in arrived if layout.key_for(key[0]) == row["stream"]]
            assert row["customer_ids"] == [c for c, _ in unpacked]


async def test_a_statement_with_system_events_goes_through_the_tolerant_form(db_url: str) -> None:
    async with asyncpg.create_pool(db_url, min_size=1, max_size=1) as pool:
        recording = RecordingPool(pool)
        repository = IngestionRepository(recording)  # type: ignore[arg-type]
        results = await repository.store_events(mixed(("c1", "e1"), ("", "s1")), NOW)
        assert recording.forms == ["tolerant"]
        assert {key: seen for key, (_, seen) in results.items()} == {("c1", "e1"): False, ("", "s1"): False}
        published = [
            e[1]
            for r in await pool.fetch("SELECT entries FROM event_outbox")
            for e in stream.unpack_entries(r["entries"])
        ]
        assert published == ["e1", "s1"]
