"""Stream entries as the outbox keeps them and ``stream.Appender`` appends them: five
length-prefixed fields (the field list is ``stream``'s docstring).

Entries are packed once, when their events are stored, and concatenated; the relay hands the
blobs to Redis as they are, so publishing costs no per-event work in Python. Packing is part of
ingestion's per-event work: this module is compiled with mypyc where a C compiler is found
(``scripts/compile_modules.py``; docs/performance.md).
"""

from __future__ import annotations

import struct
from typing import Final

_LENGTH: Final = struct.Struct(">I")
"""Each field's length before it: 4 bytes, big-endian."""


def pack_entry(customer_id: str, event_id: str, name: str, payload: bytes, traceparent: str) -> bytes:
    """One stream entry, packed for ``stream.Appender``."""
    return pack_encoded_entry(
        customer_id.encode(), event_id.encode(), name.encode(), payload, traceparent.encode()
    )


def pack_encoded_entry(
    customer_id: bytes, event_id: bytes, name: bytes, payload: bytes, traceparent: bytes
) -> bytes:
    """``pack_entry`` of fields already encoded as UTF-8 (a writer that encoded them for the
    payload too encodes them once)."""
    # int.to_bytes, not _LENGTH.pack: half the time compiled, no more interpreted.
    return b"".join(
        (
            len(event_id).to_bytes(4, "big"),
            event_id,
            len(customer_id).to_bytes(4, "big"),
            customer_id,
            len(name).to_bytes(4, "big"),
            name,
            len(payload).to_bytes(4, "big"),
            payload,
            len(traceparent).to_bytes(4, "big"),
            traceparent,
        )
    )


def unpack_entries(blob: bytes) -> list[tuple[str, str, str, bytes, str]]:
    """The (customer_id, event_id, name, payload, traceparent) entries packed in ``blob``."""
    entries = []
    position = 0
    while position < len(blob):
        fields = []
        for _ in range(5):
            (size,) = _LENGTH.unpack_from(blob, position)
            fields.append(blob[position + 4 : position + 4 + size])
            position += 4 + size
        event_id, customer_id, name, payload, traceparent = fields
        entries.append(
            (customer_id.decode(), event_id.decode(), name.decode(), payload, traceparent.decode())
        )
    return entries
