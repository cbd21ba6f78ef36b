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

# The stored event's serialized form (``eventline.common.v1.Event``) is written here, field by
# field, rather than by building the message and serializing it: a batch event's payload is
# needed for its stream entry whatever the reply, and the message only when the reply holds it
# (then parsed from these bytes); writing the bytes costs about half of building and serializing
# the message (docs/performance.md). Tags: field number << 3 | wire type (2: length-delimited).
_EVENT_ID: Final = b"\x0a"
_CUSTOMER_ID: Final = b"\x1a"
_NAME: Final = b"\x22"
_OCCURRED_AT: Final = b"\x2a"
_RECEIVED_AT: Final = b"\x32"
_CONTEXT: Final = b"\x3a"
_KIND: Final[dict[int, bytes]] = {
    kind: b"\x10" + bytes((kind,)) for kind in common_pb2.EventKind.values() if kind
}
"""Field 2, a varint: the kind's number (each below 128, one byte)."""
_MAP_KEY: Final = b"\x0a"
_MAP_VALUE: Final = b"\x12"
"""A map entry's fields: its key (1) and its value (2)."""
_SHORT_VARINTS: Final[list[bytes]] = [bytes((n,)) for n in range(128)]


def _varint(n: int) -> bytes:
    """A non-negative length as a protobuf varint."""
    if n < 128:
        return _SHORT_VARINTS[n]
    encoded = bytearray()
    while n > 0x7F:
        encoded.append(n & 0x7F | 0x80)
        n >>= 7
    encoded.append(n)
    return bytes(encoded)


def length_delimited(key: bytes, data: bytes) -> bytes:
    """A length-delimited protobuf field (``key``: its field number and wire type) holding ``data``."""
    return key + _varint(len(data)) + data


def received_at_field(received_at: timestamp_pb2.Timestamp) -> bytes:
    """The ``received_at`` field of a stored event's serialized form (one per statement)."""
    data = received_at.SerializeToString()
    return _RECEIVED_AT + _varint(len(data)) + data


def stored_event_bytes(
    event: NewEvent, event_id: bytes, customer_id: bytes, name: bytes, received_at: bytes
) -> bytes:
    """The serialized ``Event`` exactly as it will be stored and published: ``event`` with its
    ids and name encoded as UTF-8 and its ``received_at_field``."""
    occurred = event.occurred_at_proto.SerializeToString()
    parts = [_EVENT_ID, _varint(len(event_id)), event_id, _KIND[event.kind]]
    if customer_id:  # empty for a system event: proto3 leaves an empty string out
        parts += (_CUSTOMER_ID, _varint(len(customer_id)), customer_id)
    parts += (_NAME, _varint(len(name)), name, _OCCURRED_AT, _varint(len(occurred)), occurred, received_at)
    for code, value in event.stored_context:
        data = value.SerializeToString()
        key = code.encode()
        entry = b"".join((_MAP_KEY, _varint(len(key)), key, _MAP_VALUE, _varint(len(data)), data))
        parts += (_CONTEXT, _varint(len(entry)), entry)
    return b"".join(parts)


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
