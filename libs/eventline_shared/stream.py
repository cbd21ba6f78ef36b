"""The Redis event stream: entry layout, connections and safe trimming.

Each stored event becomes one stream entry with the fields:

* ``event_id``: the client-chosen event id (consumers dedupe on it with
  ``customer_id``);
* ``customer_id``: the owning customer, ``""`` for a system event (so the
  stream can later be sharded by customer);
* ``name``: the event name, so consumers can skip events without parsing;
* ``payload``: the ``eventline.common.v1.Event`` exactly as stored, serialized
  as protobuf;
* ``traceparent``: the W3C trace context of the call that stored the event
  (see ``eventline_shared.tracing``), so consumers continue its trace.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import cast

import redis.asyncio as redis
from eventline.common.v1 import common_pb2
from redis import exceptions as redis_errors


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    event_id: str
    customer_id: str
    name: str
    payload: bytes
    traceparent: str = ""

    def event(self) -> common_pb2.Event:
        return common_pb2.Event.FromString(self.payload)

    @classmethod
    def from_fields(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEntry:
        return cls(
            entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            event_id=fields.get(b"event_id", b"").decode(),
            customer_id=fields.get(b"customer_id", b"").decode(),
            name=fields.get(b"name", b"").decode(),
            payload=fields.get(b"payload", b""),
            traceparent=fields.get(b"traceparent", b"").decode(),
        )


# Appends the entries packed in each ARGV blob, in order, in one round trip.
_APPEND = """
local count = 0
for _, blob in ipairs(ARGV) do
    local pos, size = 1, #blob
    while pos <= size do
        local event_id, customer_id, name, payload, traceparent
        event_id, pos = struct.unpack('>I4c0', blob, pos)
        customer_id, pos = struct.unpack('>I4c0', blob, pos)
        name, pos = struct.unpack('>I4c0', blob, pos)
        payload, pos = struct.unpack('>I4c0', blob, pos)
        traceparent, pos = struct.unpack('>I4c0', blob, pos)
        redis.call('XADD', KEYS[1], '*', 'event_id', event_id, 'customer_id', customer_id,
                   'name', name, 'payload', payload, 'traceparent', traceparent)
        count = count + 1
    end
end
return count
"""

_LENGTH = struct.Struct(">I")


def pack_entry(customer_id: str, event_id: str, name: str, payload: bytes, traceparent: str) -> bytes:
    """One stream entry, packed for ``Appender``: five length-prefixed fields.

    Entries are packed once, when their events are stored, and concatenated;
    the relay hands the blobs to Redis as they are, so publishing costs no
    per-event work in Python.
    """
    fields = (event_id.encode(), customer_id.encode(), name.encode(), payload, traceparent.encode())
    return b"".join(part for field in fields for part in (_LENGTH.pack(len(field)), field))


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


class Appender:
    """Appends packed entries (see ``pack_entry``) in one round trip."""

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self.stream = stream
        self._script = client.register_script(_APPEND)

    async def append(self, blobs: list[bytes]) -> int:
        """Append every entry of ``blobs`` in order; returns how many."""
        appended: int = await self._script(keys=[self.stream], args=blobs)
        return appended


def dead_letter_stream(stream: str) -> str:
    """The default key of the dead-letter stream of consumers of ``stream``."""
    return stream + ":dead"


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot serve the stream now (retry later), not a bad command.

    Unreachable, timing out, loading, out of memory, read-only or failing to
    persist; and on a Redis Cluster, a node answering MOVED/ASK (it does not
    hold the key: a client that is not cluster-aware can never succeed there),
    CLUSTERDOWN or TRYAGAIN.
    """
    return isinstance(
        exc,
        redis_errors.ConnectionError
        | redis_errors.TimeoutError
        | redis_errors.OutOfMemoryError
        | redis_errors.ReadOnlyError
        | redis_errors.AskError
        | redis_errors.ClusterError
        | redis_errors.TryAgainError,
    ) or (isinstance(exc, redis_errors.ResponseError) and str(exc).startswith("MISCONF"))


def connect(url: str) -> redis.Redis:
    """A client that fails fast when Redis is down instead of hanging the caller."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10)


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def safe_trim_point(client: redis.Redis, stream: str, retention_s: float) -> str | None:
    """The lowest entry id that must be kept: nothing below it is needed by anyone.

    Entries older than ``retention_s`` may go, but never one that a consumer
    group has not acknowledged or not yet read (Redis 7's XTRIM would silently
    drop pending entries). Returns None when the stream does not exist.
    """
    if not await client.exists(stream):
        return None
    keep = f"{int((time.time() - retention_s) * 1000)}-0"
    for group in await client.xinfo_groups(stream):
        last = group["last-delivered-id"]
        needed = _next_id(last.decode() if isinstance(last, bytes) else last)
        # Asked even when XINFO counted nothing pending: entries may have been read since. And
        # what XINFO counted may be acknowledged by now, leaving no lowest pending id.
        lowest = (await client.xpending(stream, group["name"]))["min"]
        if lowest is not None:
            needed = min(needed, lowest.decode() if isinstance(lowest, bytes) else lowest, key=_id_key)
        keep = min(keep, needed, key=_id_key)
    return keep


async def trim(client: redis.Redis, stream: str, retention_s: float) -> int:
    """Trim what no one needs any more (see ``safe_trim_point``); returns entries removed."""
    keep = await safe_trim_point(client, stream, retention_s)
    if keep is None:
        return 0
    removed: int = await client.xtrim(stream, minid=keep, approximate=False)
    return removed


async def erase_customer_entries(
    client: redis.Redis, stream: str, customer_id: str, chunk: int = 5000
) -> int:
    """Delete every entry of ``customer_id`` from ``stream``; returns how many.

    Entries carry no index by customer, so this scans the stream in chunks:
    erasure is rare and the stream is bounded by its retention.
    """
    wanted = customer_id.encode()
    start = "-"
    erased = 0
    while True:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await client.xrange(stream, min=start, max="+", count=chunk),
        )
        if not entries:
            return erased
        doomed = [entry_id for entry_id, fields in entries if fields.get(b"customer_id") == wanted]
        if doomed:
            erased += await client.xdel(stream, *doomed)
        start = "(" + entries[-1][0].decode()
        if len(entries) < chunk:
            return erased
