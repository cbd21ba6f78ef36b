"""The batch path's servicer and writer without sockets: the replies and results of their
shortcuts against the general rule, and the paths of a batch's violations."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from google.rpc import error_details_pb2

from eventline_ingestion import servicer as servicing
from eventline_ingestion.servicer import IngestionServicer
from eventline_ingestion.validation import NewEvent
from eventline_ingestion.writer import EventWriter, Stored


class Call:
    """A gRPC call's context as the batch path reads it: no metadata."""

    def invocation_metadata(self) -> tuple[()]:
        return ()


class Writer:
    """Stores nothing: every event is new; records the order of what happened."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def store(self, events: Sequence[NewEvent]) -> Stored:
        self.log.append(f"stored {len(events)}")
        return {event.key: (b"", False) for event in events}


def batch(size: int, *, repeat_first: bool = False) -> ingestion_pb2.TrackEventsRequest:
    items = []
    for i in range(size):
        event = ingestion_pb2.TrackCustomerEventRequest(customer_id="c1", event_id=f"e{i}", name="Bought")
        event.context["item_id"].integer_value = i
        items.append(ingestion_pb2.TrackEventsItem(customer_event=event))
    if repeat_first:
        items.append(ingestion_pb2.TrackEventsItem(customer_event=items[0].customer_event))
    return ingestion_pb2.TrackEventsRequest(events=items, omit_stored_events=True)


def servicer_with(log: list[str]) -> IngestionServicer:
    return IngestionServicer(None, Writer(log), None, None)  # type: ignore[arg-type]


async def test_violations_of_a_batch_name_their_items() -> None:
    """Items are validated without their path, which only a violation gets."""
    request = batch(300)
    request.events[250].customer_event.name = "bad name"
    request.events[250].customer_event.context["bad code"].integer_value = 1
    request.events[10].system_event.CopyFrom(
        ingestion_pb2.TrackSystemEventRequest(event_id="s", name="bad name")
    )
    request.events[20].Clear()
    reply = await servicer_with([]).TrackEvents(request, Call())
    assert [i for i, r in enumerate(reply.results) if r.HasField("error")] == [10, 20, 250]

    def fields(i: int) -> list[str]:
        bad = error_details_pb2.BadRequest()
        reply.results[i].error.details[0].Unpack(bad)
        return sorted(v.field for v in bad.field_violations)

    assert fields(250) == [
        'events[250].customer_event.context["bad code"]',
        "events[250].customer_event.name",
    ]
    assert fields(10) == ["events[10].system_event.name"]
    assert fields(20) == ["events[20]"]


def test_the_compact_reply_of_new_events_is_the_reply_built_item_by_item() -> None:
    """The shortcut (every item valid, new and of its own id) answers what the general rule
    does: an empty result per item."""
    checked = [NewEvent(1, f"c{i}", "e", "A", 0, b"", "{}", {}, {}, b"", "") for i in range(3)]  # type: ignore[arg-type]
    stored = {event.key: (b"", False) for event in checked}
    reply = servicing._compact_reply(checked, stored, {})  # type: ignore[arg-type]
    assert reply == ingestion_pb2.TrackEventsResponse(results=[ingestion_pb2.TrackEventsResult()] * 3)
    seen_before = servicing._compact_reply(checked, {**stored, ("c1", "e"): (b"", True)}, {})  # type: ignore[arg-type]
    assert [r.deduplicated for r in seen_before.results] == [False, True, False]


async def test_the_compact_reply_marks_an_id_repeated_in_the_batch() -> None:
    reply = await servicer_with([]).TrackEvents(batch(3, repeat_first=True), Call())
    assert [r.deduplicated for r in reply.results] == [False, False, False, True]
    assert not any(r.HasField("error") or r.HasField("event") for r in reply.results)


class Repository:
    """``store_events``: every key new except those in ``before``."""

    def __init__(self, before: set[tuple[str, str]] = frozenset()) -> None:  # type: ignore[assignment]
        self.before = before

    async def store_events(
        self, events: Sequence[NewEvent], received_at: object, timeout: float
    ) -> dict[tuple[str, str], tuple[bytes, bool]]:
        return {e.key: (e.event_id.encode(), e.key in self.before) for e in events}


def new_event(customer: str, event_id: str) -> NewEvent:
    return NewEvent(
        common_pb2.EVENT_KIND_CUSTOMER,
        customer,
        event_id,
        "A",
        0,
        b"",
        "{}",
        {},
        {},
        b"",
        "",
    )


async def test_the_writer_answers_each_request_for_its_own_keys_repeats_seen() -> None:
    writer = EventWriter(Repository({("c", "old")}), lambda: None)  # type: ignore[arg-type]
    alone = await writer.store([new_event("c", "1"), new_event("c", "old")])
    assert alone == {("c", "1"): (b"1", False), ("c", "old"): (b"old", True)}
    repeated = await writer.store([new_event("c", "2"), new_event("c", "2")])
    assert repeated == {("c", "2"): (b"2", False)}
    # Two requests in one statement sharing a key: the second sees it stored.
    both = await asyncio.gather(
        writer._group.submit_many([[new_event("c", "3")], [new_event("c", "3"), new_event("c", "4")]])
    )
    assert both[0] == [{("c", "3"): (b"3", False)}, {("c", "3"): (b"3", True), ("c", "4"): (b"4", False)}]


class Answering(Writer):
    """Answers every event with ``stored`` (its serialized form) and ``seen``."""

    def __init__(self, stored: bytes, seen: bool) -> None:
        super().__init__([])
        self.stored, self.seen = stored, seen

    async def store(self, events: Sequence[NewEvent]) -> Stored:
        return {event.key: (self.stored, self.seen) for event in events}


async def test_a_unary_reply_parsed_from_its_encoding_holds_the_stored_event() -> None:
    """The reply to TrackCustomerEvent is parsed from the stored event's bytes as field 1 and
    ``deduplicated``: the same message as one built from the parsed event, short or long."""
    for context_chars, seen in ((0, False), (0, True), (300, False), (20_000, True)):
        event = common_pb2.Event(
            event_id="e1", customer_id="c1", name="Bought", kind=common_pb2.EVENT_KIND_CUSTOMER
        )
        if context_chars:
            event.context["note"].string_value = "x" * context_chars
        servicer = IngestionServicer(None, Answering(event.SerializeToString(), seen), None, None)  # type: ignore[arg-type]
        request = ingestion_pb2.TrackCustomerEventRequest(customer_id="c1", event_id="e1", name="Bought")
        reply = await servicer.TrackCustomerEvent(request, Call())
        assert reply == ingestion_pb2.TrackCustomerEventResponse(event=event, deduplicated=seen)
