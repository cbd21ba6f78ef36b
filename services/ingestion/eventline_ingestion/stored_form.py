"""The stored events' serialized form and the storing statement's columns, built per event.

The per-event work of ``IngestionRepository.store_events``, apart from its I/O: compiled with
mypyc where a C compiler is found (``scripts/compile_modules.py``; docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from eventline.common.v1 import common_pb2
from google.protobuf import timestamp_pb2

from eventline_ingestion.validation import NewEvent
from eventline_shared.streams.entries import pack_encoded_entry
from eventline_shared.values import length_delimited, varint

# The stored event's serialized form (``eventline.common.v1.Event``) is written here, field by
# field, rather than by building the message and serializing it: a batch event's payload is
# needed for its stream entry whatever the reply, and the message only when the reply holds it
# (then parsed from these bytes); writing the bytes costs about half of building and serializing
# the message (docs/performance.md). Its occurred_at and context come serialized from validation
# (``NewEvent.occurred_at``, ``NewEvent.context_wire``), written from the fields it read. Tags:
# field number << 3 | wire type (2: length-delimited).
_EVENT_ID: Final = b"\x0a"
_CUSTOMER_ID: Final = b"\x1a"
_NAME: Final = b"\x22"
_OCCURRED_AT: Final = b"\x2a"
_RECEIVED_AT: Final = b"\x32"
_KIND: Final[dict[int, bytes]] = {
    kind: b"\x10" + bytes((kind,)) for kind in common_pb2.EventKind.values() if kind
}
"""Field 2, a varint: the kind's number (each below 128, one byte)."""


def received_at_field(received_at: timestamp_pb2.Timestamp) -> bytes:
    """The ``received_at`` field of a stored event's serialized form (one per statement)."""
    return length_delimited(_RECEIVED_AT, received_at.SerializeToString())


def stored_event_bytes(
    event: NewEvent, event_id: bytes, customer_id: bytes, name: bytes, received_at: bytes
) -> bytes:
    """The serialized ``Event`` exactly as it will be stored and published: ``event`` with its
    ids and name encoded as UTF-8 and its ``received_at_field``."""
    occurred = event.occurred_at
    return b"".join(
        (
            _EVENT_ID,
            varint(len(event_id)),
            event_id,
            _KIND[event.kind],
            # Empty for a system event: proto3 leaves an empty string out.
            length_delimited(_CUSTOMER_ID, customer_id) if customer_id else b"",
            _NAME,
            varint(len(name)),
            name,
            _OCCURRED_AT,
            varint(len(occurred)),
            occurred,
            received_at,
            event.context_wire,
        )
    )


class EventColumns:
    """The storing statement's columns of one kind of event (customer or system), one element per
    event in key order."""

    def __init__(self) -> None:
        self.event_ids: list[str] = []
        self.names: list[str] = []
        self.occurred: list[int] = []
        self.contexts: list[str] = []
        self.entries: list[bytes] = []
        self.seqs: list[int] = []
        """Each event's place in the order of arrival (each partition's entries go in that order)."""

    def add(self, event: NewEvent, entry: bytes, arrival: int) -> None:
        self.event_ids.append(event.event_id)
        self.names.append(event.name)
        self.occurred.append(event.occurred_us)
        self.contexts.append(event.context_json)
        self.entries.append(entry)
        self.seqs.append(arrival)


class StatementColumns:
    """The storing statement's columns, and each key's result as if the event is new."""

    def __init__(self) -> None:
        self.built: dict[tuple[str, str], tuple[bytes, bool]] = {}
        self.customer = EventColumns()
        self.customer_ids: list[str] = []
        """The customer events' customers."""
        self.stream_keys: list[str] = []
        """Each customer event's partition stream, only with more than one."""
        self.system = EventColumns()


def statement_columns(
    events: Sequence[NewEvent], received_at: bytes, key_for: Callable[[str], str] | None
) -> StatementColumns:
    """Each event's stored form, stream entry and elements of the statement's columns, in one
    pass (``received_at``: its ``received_at_field``; ``key_for``: each customer's partition
    stream, None with one partition stream)."""
    columns = StatementColumns()
    built = columns.built
    keys = [e.key for e in events]
    for arrival in sorted(range(len(events)), key=keys.__getitem__):
        e = events[arrival]
        event_id, customer_id, name = e.event_id.encode(), e.customer_id.encode(), e.name.encode()
        payload = stored_event_bytes(e, event_id, customer_id, name, received_at)
        built[e.key] = (payload, False)
        entry = pack_encoded_entry(customer_id, event_id, name, payload, e.traceparent.encode())
        if e.customer_id:
            columns.customer.add(e, entry, arrival)
            columns.customer_ids.append(e.customer_id)
            if key_for is not None:
                columns.stream_keys.append(key_for(e.customer_id))
        else:
            columns.system.add(e, entry, arrival)
    return columns
