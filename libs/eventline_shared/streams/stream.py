"""The Redis event stream: entry layout, key names, connections and safe trimming.

Keys, the one place that names them (see ``StreamLayout``):

* the stream ``EVENTLINE_STREAM`` is cut into ``EVENTLINE_STREAM_PARTITIONS``
  partition streams; a customer's events all go to partition
  ``partition_of(customer_id)`` (a stable hash), system events to partition 0;
* each partition stream has its dead-letter stream in the same Redis Cluster
  hash slot (a hash tag), so that the script touching both runs on one node;
  different partitions hash to different slots, so a cluster spreads them
  over its masters.

Each stored event becomes one stream entry with the fields:

* ``event_id``: the client-chosen event id (consumers dedupe on it with
  ``customer_id``);
* ``customer_id``: the owning customer, ``""`` for a system event (so the
  stream can later be sharded by customer);
* ``name``: the event name, so consumers can skip events without parsing;
* ``payload``: the ``eventline.common.v1.Event`` exactly as stored, serialized
  as protobuf;
* ``traceparent``: the W3C trace context of the call that stored the event
  (see ``eventline_shared.observability.tracing``), so consumers continue its trace.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import redis.asyncio as redis
from eventline.common.v1 import common_pb2
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from eventline_shared.errors import Unavailable
from eventline_shared.observability.dependencies import REDIS, Dependency
from eventline_shared.streams.entries import pack_encoded_entry as pack_encoded_entry
from eventline_shared.streams.entries import pack_entry as pack_entry
from eventline_shared.streams.entries import unpack_entries as unpack_entries

Client: TypeAlias = redis.Redis | RedisCluster
"""A client of a single Redis server or of a Redis Cluster (see ``connect``)."""

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
"""EVENTLINE_REDIS_URL schemes that name a Redis Cluster (any of its nodes; rediss: TLS)."""


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    event_id: str
    customer_id: str
    name: str
    payload: bytes
    traceparent: str = ""
    stream: str = ""
    """The partition stream the entry was read from ("" when not known)."""

    def event(self) -> common_pb2.Event:
        return common_pb2.Event.FromString(self.payload)

    @classmethod
    def from_fields(cls, entry_id: bytes | str, fields: dict[bytes, bytes], stream: str = "") -> StreamEntry:
        return cls(
            entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            event_id=fields.get(b"event_id", b"").decode(),
            customer_id=fields.get(b"customer_id", b"").decode(),
            name=fields.get(b"name", b"").decode(),
            payload=fields.get(b"payload", b""),
            traceparent=fields.get(b"traceparent", b"").decode(),
            stream=stream,
        )


# Appends the entries packed in each ARGV blob, in order, in one round trip. One
# ``struct.unpack`` reads an entry's five length-prefixed fields: one call of the C library
# per entry instead of five (Redis's CPU per entry, docs/performance.md's tenth round).
_APPEND = """
local count = 0
for _, blob in ipairs(ARGV) do
    local pos, size = 1, #blob
    while pos <= size do
        local event_id, customer_id, name, payload, traceparent
        event_id, customer_id, name, payload, traceparent, pos =
            struct.unpack('>I4c0I4c0I4c0I4c0I4c0', blob, pos)
        redis.call('XADD', KEYS[1], '*', 'event_id', event_id, 'customer_id', customer_id,
                   'name', name, 'payload', payload, 'traceparent', traceparent)
        count = count + 1
    end
end
return count
"""


class Appender:
    """Appends packed entries (see ``pack_entry``) to one stream in one round trip."""

    def __init__(self, client: Client, stream: str) -> None:
        self.stream = stream
        self._script = client.register_script(_APPEND)

    async def append(self, blobs: list[bytes]) -> int:
        """Append every entry of ``blobs`` in order; returns how many."""
        appended: int = await self._script(keys=[self.stream], args=blobs)
        return appended


def hash_tag(key: str) -> str | None:
    """The part of ``key`` that Redis Cluster hashes to find its slot, when it has a hash tag.

    Redis's rule: the text between the first ``{`` and the first ``}`` after
    it, if that is not empty; otherwise the whole key is hashed.
    """
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    return key[start + 1 : end] if end > start + 1 else None


def _same_slot(key: str, suffix: str) -> str:
    """A key named after ``key`` + ``suffix`` that hashes to ``key``'s slot."""
    return key + suffix if hash_tag(key) is not None else "{" + key + "}" + suffix


def dead_letter_key(stream: str) -> str:
    """The dead-letter stream of ``stream``: in its hash slot (``{eventline:events}:dead``)."""
    return _same_slot(stream, ":dead")


def owner_key(stream: str, group: str) -> str:
    """The lease naming which consumer of ``group`` owns partition ``stream`` now (in its slot)."""
    return _same_slot(stream, f":owner:{group}")


def members_key(stream: str, group: str) -> str:
    """The live consumers of ``group`` on the stream whose first partition is ``stream``."""
    return _same_slot(stream, f":members:{group}")


def import_mark_key(stream: str) -> str:
    """The mark saying bulk imports are being stored into the stream whose first partition is
    ``stream`` (``eventline_shared.streams.imports``; in its slot)."""
    return _same_slot(stream, ":importing")


def partition_of(customer_id: str, partitions: int) -> int:
    """The partition of a customer's events: CRC-32 of the id, so every process agrees forever.

    System events (``customer_id == ""``) live in partition 0.
    """
    if partitions <= 1 or not customer_id:
        return 0
    return zlib.crc32(customer_id.encode()) % partitions


@dataclass(frozen=True)
class StreamLayout:
    """The keys of the event stream ``base`` cut into ``partitions`` partitions.

    One partition: the stream is ``base`` itself. More: partition ``i`` is
    ``base:i``, or, when ``base`` has a hash tag (``app:{events}``), the tag
    gets the number (``app:{events:i}``); either way partitions hash to
    different slots.
    """

    base: str
    partitions: int = 1

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("a stream has at least one partition")
        if hash_tag(self.base) is None and ("{" in self.base or "}" in self.base):
            # No key with another name could share its slot: its dead letters would be elsewhere.
            raise ValueError(f"stream name {self.base!r} has braces but no hash tag ({{tag}})")

    @property
    def keys(self) -> list[str]:
        """Every partition's stream key, partition 0 first."""
        return [self.key(i) for i in range(self.partitions)]

    def key(self, partition: int) -> str:
        if self.partitions == 1:
            return self.base
        tag = hash_tag(self.base)
        if tag is None:
            return f"{self.base}:{partition}"
        return self.base.replace("{" + tag + "}", "{" + f"{tag}:{partition}" + "}", 1)

    def key_for(self, customer_id: str) -> str:
        """The stream key of ``customer_id``'s events (partition 0 for a system event: ``""``)."""
        if self.partitions == 1:
            return self.base  # the usual layout, asked once per stored event: no hashing
        return self.key(partition_of(customer_id, self.partitions))

    @property
    def dead_letter_keys(self) -> list[str]:
        return [dead_letter_key(key) for key in self.keys]


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot serve the stream now (retry later), not a bad command.

    Unreachable, timing out, loading, out of memory, read-only or failing to
    persist; and on a Redis Cluster, a node answering MOVED/ASK (it does not
    hold the key: a client that is not cluster-aware can never succeed there),
    CLUSTERDOWN, TRYAGAIN, a master down or a slot no node serves (a failover
    the cluster client's retries did not outlast).
    """
    return isinstance(
        exc,
        redis_errors.ConnectionError
        | redis_errors.TimeoutError
        | redis_errors.OutOfMemoryError
        | redis_errors.ReadOnlyError
        | redis_errors.AskError
        | redis_errors.ClusterError
        | redis_errors.TryAgainError
        | redis_errors.RedisClusterException,
    ) or (isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(("MISCONF", "CLUSTERDOWN")))


def translate(exc: BaseException) -> Unavailable | None:
    """The client-facing error for a Redis driver error, or None when it is a bug."""
    if unavailable(exc):
        return Unavailable("the event stream is unavailable, retry later")
    return None


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


_STREAMS = ("STREAMS", b"STREAMS")


class _ClusterClient(RedisCluster):
    """A ``RedisCluster`` that finds the keys of XREAD and XREADGROUP itself.

    redis-py routes a command whose keys can move (Redis flags both
    ``movablekeys``) by asking a node ``COMMAND GETKEYS`` first, before every
    read: a round trip or two more per read, and three times the client's CPU
    of a read (measured, docs/performance.md). Their keys are the first half of
    what follows ``STREAMS``, so they are read here; everything else (the slot
    to node map, MOVED/ASK, retries after a failover) is the client's as before.
    """

    async def _determine_slot(self, command: str, *args: Any) -> int:
        name = command.upper()
        if name in ("XREADGROUP", "XREAD"):
            # XREADGROUP GROUP <group> <consumer> [options] STREAMS ...: the group and consumer
            # names come first and may be anything; the options' values are numbers.
            start = 3 if name == "XREADGROUP" else 0
            for position in range(start, len(args)):
                if args[position] in _STREAMS:
                    rest = args[position + 1 :]
                    slots = {self.keyslot(key) for key in rest[: len(rest) // 2]}
                    if len(slots) == 1:
                        return slots.pop()
                    break
        return await super()._determine_slot(command, *args)


def connect(url: str) -> Client:
    """The one way a process connects to Redis: a client that fails fast when Redis is down.

    ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) names any
    node of a Redis Cluster: the client learns the slot map from it, follows
    MOVED and ASK redirections, and after a failover or a connection error
    reloads the map and retries (a few times, backing off) before the error
    reaches the caller, whose own loop backs off and retries again. Any other
    URL (``redis://``, ``rediss://``, ``unix://``) is one server.
    """
    if is_cluster_url(url):
        return _ClusterClient.from_url(
            url.replace("+cluster", "", 1),
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6),
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=10,
        )
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=10)


def _next_id(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def safe_trim_point(client: Client, stream: str, retention_s: float) -> str | None:
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


async def trim(client: Client, stream: str, retention_s: float) -> int:
    """Trim what no one needs any more (see ``safe_trim_point``); returns entries removed."""
    keep = await safe_trim_point(client, stream, retention_s)
    if keep is None:
        return 0
    removed: int = await client.xtrim(stream, minid=keep, approximate=False)
    return removed


async def erase_customer(client: Client, layout: StreamLayout, customer_id: str) -> int:
    """Delete ``customer_id``'s entries from every partition and dead-letter stream; returns how many."""
    erased = 0
    for key in layout.keys:
        for doomed in (key, dead_letter_key(key)):
            erased += await erase_customer_entries(client, doomed, customer_id)
    return erased


async def erase_customer_entries(client: Client, stream: str, customer_id: str, chunk: int = 5000) -> int:
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


class Redis(Dependency):
    """Redis, probed with ``EXISTS`` of the stream keys (see the module's description)."""

    def __init__(self, client: Client, keys: str | Sequence[str], *, required: bool) -> None:
        super().__init__(REDIS, required=required)
        self.client = client
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    async def probe(self) -> None:
        for key in self.keys:  # one by one: on a cluster, keys of several slots cannot share a command
            await self.client.exists(key)

    def explains(self, exc: BaseException) -> bool:
        return unavailable(exc)
