"""A consumer group on the event stream, shared by every replica: the one place that consumes it.

``ConsumerGroup(handler)`` reads the entries of every partition of the stream
(``eventline_shared.streams.stream.StreamLayout``) and hands them to ``handler`` in
batches; the campaign service is one user, a future consumer is another.

* Each replica reads new entries with ``XREADGROUP >`` under its own consumer
  name; entries left pending by a crashed replica for longer than
  ``claim_idle_ms`` are taken over with ``XAUTOCLAIM``.
* An entry is acknowledged only after the handler returned for its batch.
* An entry that fails is left pending; once it has been delivered more than
  ``max_attempts`` times it is moved to its partition's dead-letter stream
  (with the error) and acknowledged in one script (both keys share a hash
  slot), so it never blocks the entries behind it. An entry that cannot even
  be parsed is dead-lettered at once.
* While a dependency is down (``handler.transient``), a batch is retried in
  place with backoff: an outage never sends good entries to the dead letters.
* One customer's entries are handed over in stream order. Across replicas:
  ``run()`` reads only the partitions this replica owns, one owner per
  partition at a time (a lease in the partition's hash slot, renewed every
  third of ``lease_ms``; the replicas share the partitions evenly, counted in
  a members set). A new owner first takes over every entry the previous one
  left pending, before reading new ones; an owner giving a partition up
  (rebalancing) stops reading it and releases it once its batches are done. An
  owner that stalled past its lease reads nothing more of the partition, even
  before its renewal finds the lease gone (``reads``).
* Fencing: before a new owner processes anything of a partition it took over,
  the handler raises the partition's fence where it writes
  (``StreamHandler.fence``, which waits for the previous owner's writes in
  progress) and returns a token; every batch carries it (``Received.fence``),
  and the handler's writes check it, so that a batch the previous owner had
  already begun fails there (``PartitionTakenOver``) and is left pending.
  Within a replica, the entries of a batch whose customers have a batch still
  in flight wait for it (or only until the handler said their customer's work
  in it is done: ``Received.settled``); the batch's other entries do not (a
  customer's entries all wait or all go).
* Consumers of replicas that are gone are removed from the group
  (``XGROUP DELCONSUMER``) once they have nothing pending and have been idle
  for ``forget_idle_ms``.
* From the moment its lease may have run out, an owner also hands no batch it
  had read to the handler any more: a batch still waiting (behind an earlier
  batch of one of its customers, or to be retried after an outage) is left
  pending, untouched, for the new owner, which takes it over before anything
  newer. A batch the handler had already begun is the fence's (above).
* A handler with nothing to keep up to date (``StreamHandler.idle``: real-time
  segmentation while no real-time segment exists) is not handed the entries:
  ``run()`` moves the group past those appended before the handler said so
  (``XGROUP SETID``, never back), every ``idle_poll_s``, and reads again once it
  is not idle. The group stays current, so the stream is trimmed as usual.
* A handler that may defer its work (``StreamHandler.deferring``: real-time segmentation while
  bulk imports are being stored) is handed nothing new meanwhile: ``run()`` and ``drain()`` read
  no new entry of a partition (none is held pending, so ``claim_idle_ms`` plays no part) until it
  stops deferring or the partition's oldest unread entry is ``overdue`` for it (the handler's
  bound on the lag). ``run()`` asks before a read (at most every ``defer_check_s``), and every
  ``idle_poll_s`` while it defers; a read that waits for new entries (no batch in flight) takes
  only a few, so that a bulk load beginning meanwhile gets few in before the next read asks.
  Entries pending already are processed and reclaimed as usual.
* ``drain()`` processes until nothing is left (burst mode for tests and
  tools: it reads every partition, owned or not); ``run()`` serves until
  ``shutdown()``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from eventline.common.v1 import common_pb2
from google.protobuf.message import DecodeError
from redis import exceptions as redis_errors

from eventline_shared import faults
from eventline_shared.observability.dependencies import REDIS, DependencyMonitor
from eventline_shared.streams import stream
from eventline_shared.streams.stream import Client, StreamEntry

log = logging.getLogger(__name__)

Keepalive = Callable[[], Awaitable[None]]

_WAITING_READ = 10
"""Most entries a read that waits for new ones takes when the handler may defer (``run()``)."""

_LEASED: ContextVar[bool] = ContextVar("_LEASED", default=False)
"""True in ``run()``'s readers and the batch tasks they start: their batches are processed only
while this replica's partition leases cannot have run out (``drain()`` reads every partition,
owned or not, and is not fenced)."""


class PartitionTakenOver(Exception):
    """A batch's partition is another replica's now: the batch is left pending, untouched, for
    the new owner (which takes it over before anything newer). A handler raises it when a write
    of the batch was refused by the fence the new owner raised (``StreamHandler.fence``)."""


class _LeaseRunOut(PartitionTakenOver):
    """The lease of a batch's partition may have run out before the handler got it."""


@dataclass(frozen=True)
class Fence:
    """The fencing token of the partition a batch was read from, as its owner took it over."""

    partition: str
    token: int


@dataclass
class Received:
    """One readable entry handed to the handler, with its event parsed."""

    entry: StreamEntry
    event: common_pb2.Event
    keepalive: Keepalive
    """Call it now and then during long work: no other replica reclaims the entry meanwhile."""
    fence: Fence | None = None
    """The token ``StreamHandler.fence`` gave this replica when it took the entry's partition
    over (None: read outside a lease, by ``drain()`` or with ``ordered=False``): the handler's
    writes check it, so that they fail once another replica has taken the partition over."""
    settled: Callable[[], None] = lambda: None
    """Call it once the work of this entry's customer in the batch is done (committed, or none
    to do): the customer's entries of later batches may then start before this batch ends (it is
    still acknowledged when it ends). For handlers whose work does not depend on the order it is
    repeated in (a state-based evaluation): if the batch then fails, its entries are tried again
    after those. Not calling it keeps the customer's later entries waiting for the whole batch."""


class StreamHandler:
    """What a consumer group does with its entries; subclasses implement ``handle``."""

    async def handle(self, batch: Sequence[Received]) -> None:
        """Process a batch; raising leaves every entry of it pending (each is then tried alone)."""
        raise NotImplementedError

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` means a dependency is down (retry the batch in place), not a bad entry."""
        return stream.unavailable(exc)

    may_idle = False
    """Whether ``idle`` may answer True: ``run()`` asks it before each read only then."""

    async def idle(self) -> bool:
        """Whether no entry appended before this call can matter to the handler (it has nothing to
        keep up to date): ``run()`` then moves the group past them unread, and reads again once
        this answers False."""
        return False

    may_defer = False
    """Whether ``deferring`` may answer True: ``run()`` and ``drain()`` ask it only then."""

    async def deferring(self) -> bool:
        """Whether new entries may wait now (the handler's work is cheaper done later, for example
        while a bulk import is being stored): nothing new is read, unless ``overdue``."""
        return False

    def overdue(self, event: common_pb2.Event) -> bool:
        """While ``deferring``: whether the oldest unread entry of a partition (its event) has waited
        too long, so that the partition is read after all."""
        return True

    async def catch_up(self) -> None:
        """Before a ``drain()``: load what processing must see now (caches that poll)."""

    async def fence(self, partition: str, held: int | None) -> int | None:
        """This replica took ``partition`` over (``run()``, before it processes anything of it):
        make the writes of every earlier owner's batches fail from now on, waiting for those in
        progress, and return the token this owner's batches carry (``Received.fence``); None when
        the handler's writes are not fenced (the default: the partition lease alone orders).
        ``held`` is the token this replica had for the partition before (None: none): when it is
        still the current one, no other replica fenced the partition since (a new owner fences
        before it processes anything), so it is kept and this replica's batches in flight go on."""
        return None

    async def housekeeping(self) -> None:
        """Every ``housekeeping_interval_s`` while running, and at the end of a ``drain()``."""


# Moves an entry to the dead-letter stream and acknowledges it, atomically: KEYS[1] the stream,
# KEYS[2] its dead-letter stream (same hash slot), ARGV[1] the group, ARGV[2] the entry id,
# ARGV[3..] the dead-letter entry's fields and values.
_DEAD_LETTER = """
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""

# Removes consumer ARGV[2] of group ARGV[1] on stream KEYS[1] if it has nothing pending and has
# been idle for ARGV[3] ms; checked and done in one step, so no entry it reads meanwhile is lost.
_FORGET = """
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
    local info = {}
    for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
    if info['name'] == ARGV[2] then
        if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[3]) then
            redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
            return 1
        end
        return 0
    end
end
return 0
"""


# Moves group ARGV[1] of stream KEYS[1] past entry ARGV[2] unread, unless it is there already
# (another replica may have read further meanwhile): never back. ENTRIESREAD (the entries added up
# to it) keeps the group's lag known (eventline_stream_lag_entries).
_SKIP = """
local function later(a, b)
    local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
    local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
    a_ms, a_seq, b_ms, b_seq = tonumber(a_ms), tonumber(a_seq), tonumber(b_ms), tonumber(b_seq)
    return a_ms > b_ms or (a_ms == b_ms and a_seq > b_seq)
end
local function field(reply, name)
    for i = 1, #reply, 2 do
        if reply[i] == name then return reply[i + 1] end
    end
end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    if field(group, 'name') == ARGV[1] and later(ARGV[2], field(group, 'last-delivered-id')) then
        local added = field(redis.call('XINFO', 'STREAM', KEYS[1]), 'entries-added')
        local after = #redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+')
        redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[2], 'ENTRIESREAD', math.max(added - after, 0))
        return 1
    end
end
return 0
"""


# The first entry of stream KEYS[1] that group ARGV[1] has not read (nil: none), in one round trip.
_OLDEST_UNREAD = """
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, last
    for i = 1, #group, 2 do
        if group[i] == 'name' then name = group[i + 1] end
        if group[i] == 'last-delivered-id' then last = group[i + 1] end
    end
    if name == ARGV[1] then
        return redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)[1]
    end
end
return nil
"""


# Lease scripts: KEYS[1] the lease, ARGV[1] this consumer, ARGV[2] the lease in ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Counts the live consumers of the group: KEYS[1] the members set, ARGV[1] this consumer (or ''
# when leaving), ARGV[2] how long a member stays without saying it is alive (ms).
_MEMBERS = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], ms, ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """A script's reply of an entry's fields (name, value, ...) as XRANGE's reply has them."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class ConsumerGroup:
    def __init__(
        self,
        client: Client,
        handler: StreamHandler,
        *,
        streams: Sequence[str],
        group: str,
        consumer: str,
        batch: int = 200,
        claim_idle_ms: int = 30_000,
        max_attempts: int = 5,
        concurrency: int = 4,
        housekeeping_interval_s: float = 1.0,
        forget_idle_ms: int = 600_000,
        lease_ms: int = 10_000,
        ordered: bool = True,
        max_outage_backoff_s: float = 5.0,
        idle_poll_s: float = 0.25,
        defer_check_s: float = 0.01,
        dependencies: DependencyMonitor | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not streams:
            raise ValueError("a consumer group reads at least one stream")
        self.client = client
        self.handler = handler
        self.streams = list(streams)
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.housekeeping_interval_s = housekeeping_interval_s
        self.forget_idle_ms = forget_idle_ms
        self.lease_ms = lease_ms
        """How long a partition stays a replica's without renewal (a crashed owner's, then free)."""
        self.ordered = ordered
        """Whether ``run()`` reads only the partitions it owns (per-customer order across replicas);
        False: every replica reads every partition (more replicas than partitions can share the
        work, one customer's entries may then be processed out of order on two replicas)."""
        self.owned: set[str] = set() if ordered else set(self.streams)
        """The partitions ``run()`` reads now."""
        self._fresh: set[str] = set()  # owned since the last read: take the previous owner's entries first
        self._monotonic = monotonic
        # When each lease held runs out at the latest (counted from before it was taken or renewed): a
        # replica that stalled past it reads nothing more of the partition, even before it renews.
        self._held_until: dict[str, float] = {}
        # The fencing token of each partition taken over (``StreamHandler.fence``), set before its
        # first read: its batches carry it. Kept when the partition is lost: passed to the next fence.
        self._tokens: dict[str, int | None] = {}
        self._fenced: set[str] = set()  # the partitions fenced since this replica last took them
        self._batches_of: Counter[str] = Counter()  # batches in flight per partition
        self._reading: Counter[str] = Counter()  # reads in flight per partition
        self.max_outage_backoff_s = max_outage_backoff_s
        self.idle_poll_s = idle_poll_s
        """While the handler is idle (``StreamHandler.idle``), how often ``run()`` asks it again;
        also how often it asks a handler that defers (``StreamHandler.deferring``) again."""
        self.defer_check_s = defer_check_s
        """While a handler that may defer does not, how often at most ``run()`` asks it again before
        a read (a GET per partition): a bulk load's entries appear on the stream after its mark (its
        calls are stored first), so few are read in between."""
        self.dependencies = dependencies
        """Told whether each read of the stream worked, so health shows a consumer that cannot read."""
        self.errors: list[str] = []
        """The latest processing errors (kept short), for logs and tests."""
        self.forgotten = 0
        """Consumers of gone replicas this one removed from the group."""
        # Entries this consumer is processing right now: never reclaimed from itself.
        self._inflight: set[str] = set()
        # The latest batch in flight of each customer: the next one of theirs waits for it.
        self._customers: dict[str, asyncio.Future[None]] = {}
        self._stop = asyncio.Event()
        self._ready: set[str] = set()
        self._dead_letter = client.register_script(_DEAD_LETTER)
        self._forget = client.register_script(_FORGET)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._members = client.register_script(_MEMBERS)
        self._skip = client.register_script(_SKIP)
        self._oldest_unread = client.register_script(_OLDEST_UNREAD)

    async def ensure_group(self) -> None:
        """Create the group at the start of every partition (it ignores nothing already stored)."""
        for key in self.streams:
            if key in self._ready:
                continue
            try:
                await self.client.xgroup_create(key, self.group, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._ready.add(key)

    # --- reading ---

    async def _read_new(self, key: str, block_ms: int | None, count: int | None = None) -> list[StreamEntry]:
        reply: Any = await self.client.xreadgroup(
            self.group, self.consumer, {key: ">"}, count=count or self.batch, block=block_ms
        )
        entries: list[StreamEntry] = []
        for _, items in reply or []:
            entries += [
                StreamEntry.from_fields(entry_id, fields, key) for entry_id, fields in items if fields
            ]
        return entries

    async def _reclaim(self, key: str, min_idle_ms: int) -> list[StreamEntry]:
        """Entries pending too long elsewhere (or failed here), now ours; poison ones are dead-lettered.

        The candidates are listed first (XPENDING with IDLE) and this consumer's
        entries in processing left out before anything is claimed: XAUTOCLAIM
        would count a delivery of each (a slow batch's entries then reached the
        dead letters without ever failing). XCLAIM with the same idle time
        takes only those still idle; entries deleted meanwhile (erasure) leave
        the pending list.
        """
        rows: Any = await self.client.xpending_range(
            key, self.group, min="-", max="+", count=self.batch + len(self._inflight), idle=min_idle_ms
        )
        delivered = {
            _text(row["message_id"]): int(row["times_delivered"])
            for row in rows
            if _text(row["message_id"]) not in self._inflight
        }
        if not delivered:
            return []
        ids: list[str | bytes | int | memoryview[int]] = [e for e in list(delivered)[: self.batch]]
        reply: Any = await self.client.xclaim(key, self.group, self.consumer, min_idle_ms, ids)
        claimed = [StreamEntry.from_fields(entry_id, fields, key) for entry_id, fields in reply if fields]
        if not claimed:
            return []
        log.debug("stream entries reclaimed", extra={"entries": len(claimed)})
        fresh: list[StreamEntry] = []
        for entry in claimed:
            attempts = delivered[entry.entry_id] + 1  # this claim was one more delivery
            if attempts > self.max_attempts:
                await self._move_to_dead_letters(entry, f"failed {attempts - 1} times", attempts - 1)
            else:
                fresh.append(entry)
        return fresh

    async def _move_to_dead_letters(self, entry: StreamEntry, error: str, attempts: int) -> None:
        fields: dict[str, str | bytes] = {
            "event_id": entry.event_id,
            "customer_id": entry.customer_id,
            "name": entry.name,
            "payload": entry.payload,
            "source_stream": entry.stream,
            "source_id": entry.entry_id,
            "group": self.group,
            "attempts": str(attempts),
            "error": error[:2000],
        }
        await self._dead_letter(
            keys=[entry.stream, stream.dead_letter_key(entry.stream)],
            args=[self.group, entry.entry_id, *(part for pair in fields.items() for part in pair)],
        )
        log.error(
            "stream entry dead-lettered",
            extra={"entry_id": entry.entry_id, "event_id": entry.event_id, "error": error[:500]},
        )

    async def forget_gone_consumers(self) -> int:
        """Remove consumers with nothing pending, idle for ``forget_idle_ms``; returns how many."""
        removed = 0
        for key in self.streams:
            if key not in self._ready:
                continue
            consumers: Any = await self.client.xinfo_consumers(key, self.group)
            for info in consumers:
                name = _text(info["name"])
                if name == self.consumer or int(info["pending"]) or int(info["idle"]) < self.forget_idle_ms:
                    continue
                if await self._forget(keys=[key], args=[self.group, name, self.forget_idle_ms]):
                    removed += 1
                    log.info("gone consumer removed from the group", extra={"consumer": name, "stream": key})
        self.forgotten += removed
        return removed

    # --- processing ---

    async def process(self, entries: Sequence[StreamEntry]) -> int:
        """Process entries and acknowledge the ones the handler took; returns how many were seen."""
        tokens = self._tokens if _LEASED.get() else {}  # as they are when the batch was read
        fences = {key: Fence(key, token) for key, token in tokens.items() if token is not None}
        parsed: list[Received] = []
        for entry in entries:
            if not entry.stream:
                entry = StreamEntry(**{**entry.__dict__, "stream": self.streams[0]})
            try:
                event = common_pb2.Event.FromString(entry.payload)
                if not event.event_id or not event.name:
                    raise ValueError("the event has no id or no name")
            except (DecodeError, ValueError) as exc:
                await self._move_to_dead_letters(entry, f"unreadable entry: {exc}", 1)
                continue
            parsed.append(Received(entry, event, self._keepalive(entry), fences.get(entry.stream)))
        if not parsed:
            return len(entries)
        # One customer's entries in stream order: the customers of a batch still in flight wait for
        # it; the others of this batch go on at once (all of a customer's entries go one way).
        waiting = [p for p in parsed if p.entry.customer_id in self._customers]
        going = [p for p in parsed if p.entry.customer_id not in self._customers]
        # Both parts take their customers' places before anything awaits: a later batch of one of
        # them waits for its part.
        parts = [self._take_turn(part) for part in (waiting, going) if part]
        try:
            await asyncio.gather(*(self._in_turn(*part) for part in parts))
        finally:
            for part, _, turns, ended in parts:
                self._end_turn(part, turns, ended)  # a part cancelled before it started gives its place back
        return len(entries)

    def _take_turn(
        self, parsed: Sequence[Received]
    ) -> tuple[
        Sequence[Received], set[asyncio.Future[None]], dict[str, asyncio.Future[None]], asyncio.Future[None]
    ]:
        """Make ``parsed`` the latest entries of their customers: (them, the turns they wait for,
        their customers' turns, each done when the customer's work is: ``Received.settled``, or the
        part's end; the part's end). Synchronous, so that no other batch comes in between."""
        before = {
            self._customers[p.entry.customer_id] for p in parsed if p.entry.customer_id in self._customers
        }
        loop = asyncio.get_running_loop()
        turns: dict[str, asyncio.Future[None]] = {}
        for p in parsed:
            customer = p.entry.customer_id
            if customer:
                if customer not in turns:
                    turns[customer] = self._customers[customer] = loop.create_future()
                p.settled = functools.partial(self._settle, customer, turns[customer])
        self._inflight.update(p.entry.entry_id for p in parsed)
        return parsed, before, turns, loop.create_future()

    async def _in_turn(
        self,
        parsed: Sequence[Received],
        before: set[asyncio.Future[None]],
        turns: dict[str, asyncio.Future[None]],
        ended: asyncio.Future[None],
    ) -> None:
        """Process entries (``_take_turn``'s) once the turns they wait for are done."""
        heartbeat = asyncio.create_task(self._hold(parsed))
        try:
            if before:
                await asyncio.wait(before)
            await self._process_parsed(parsed)
        finally:
            heartbeat.cancel()
            self._end_turn(parsed, turns, ended)

    def _settle(self, customer: str, turn: asyncio.Future[None]) -> None:
        """Give ``customer`` to their next batch (the turn ``_take_turn`` gave them); once only."""
        if turn.done():
            return
        turn.set_result(None)
        if self._customers.get(customer) is turn:
            del self._customers[customer]

    def _end_turn(
        self, parsed: Sequence[Received], turns: dict[str, asyncio.Future[None]], ended: asyncio.Future[None]
    ) -> None:
        """Give the customers of ``parsed`` (``_take_turn``'s) to their next batch, those the handler
        has not settled yet; once only."""
        if ended.done():
            return
        ended.set_result(None)
        self._inflight.difference_update(p.entry.entry_id for p in parsed)
        for customer, turn in turns.items():
            self._settle(customer, turn)

    async def _claim_again(self, items: Sequence[Received]) -> None:
        """Reset the entries' idle time (XCLAIM JUSTID does not count as a delivery)."""
        by_stream: dict[str, list[str | bytes | int | memoryview[int]]] = {}
        for item in items:
            by_stream.setdefault(item.entry.stream, []).append(item.entry.entry_id)
        for key, entry_ids in by_stream.items():
            await self.client.xclaim(key, self.group, self.consumer, 0, entry_ids, justid=True)

    async def _hold(self, items: Sequence[Received]) -> None:
        """While entries are processed, keep them ours, so that no replica reclaims work still going on."""
        while True:
            await asyncio.sleep(max(self.claim_idle_ms / 3000, 0.05))
            try:
                await self._claim_again(items)
            except redis_errors.RedisError:
                pass

    def _keepalive(self, entry: StreamEntry) -> Keepalive:
        async def touch() -> None:
            await self.client.xclaim(
                entry.stream, self.group, self.consumer, 0, [entry.entry_id], justid=True
            )

        return touch

    async def _process_parsed(self, parsed: Sequence[Received]) -> None:
        try:
            await self._process_with_retries(parsed)
            done = [p.entry for p in parsed]
        except asyncio.CancelledError:
            raise
        except PartitionTakenOver:
            # Left pending, untouched: the partition's new owner takes it over before anything newer.
            log.warning("partition lease may have run out or been taken over; batch left to the new owner")
            done = []
        except Exception as exc:
            # Find the entries that fail on their own; the others go through.
            self._note_error(exc)
            done = []
            for item in parsed:
                try:
                    await self.handler.handle([item])
                    done.append(item.entry)
                except asyncio.CancelledError:
                    raise
                except Exception as single:
                    self._note_error(single)
                    log.warning(
                        "stream entry failed; it stays pending",
                        extra={"entry_id": item.entry.entry_id, "error": repr(single)[:500]},
                    )
        if done:
            await faults.point("campaigns.before_ack")
            by_stream: dict[str, list[str]] = {}
            for entry in done:
                by_stream.setdefault(entry.stream, []).append(entry.entry_id)
            for key, entry_ids in by_stream.items():
                await self.client.xack(key, self.group, *entry_ids)
        log.debug("stream entries processed", extra={"entries": len(parsed), "acknowledged": len(done)})

    def _note_error(self, exc: BaseException) -> None:
        self.errors = [*self.errors[-9:], repr(exc)[:500]]

    async def _process_with_retries(self, items: Sequence[Received]) -> None:
        """Process a batch; while a dependency is down, retry it here with backoff.

        An outage is not the entries' fault: retrying them in place keeps their
        delivery count, so an outage never sends good entries to the dead-letter
        stream. Only errors that are not transient reach the caller (and count
        as attempts).
        """
        delay = 0.1
        while True:
            if _LEASED.get() and not all(self._lease_current(item.entry.stream) for item in items):
                raise _LeaseRunOut()
            try:
                await self.handler.handle(items)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.handler.transient(exc) or self._stop.is_set():
                    raise
                self._note_error(exc)
                log.warning("dependency unavailable; retrying the batch", extra={"error": repr(exc)[:300]})
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_outage_backoff_s)
            try:
                await self._claim_again(items)  # still ours: no other replica reclaims what this one retries
            except redis_errors.RedisError:
                pass

    # --- loops ---

    async def step(self, block_ms: int | None, reclaim: bool) -> int:
        """One round over every partition: reclaim (optionally) and read new entries; returns how many
        were processed."""
        await self.ensure_group()
        total = 0
        for key in self.streams:
            entries = await self._reclaim(key, self.claim_idle_ms) if reclaim else []
            if not await self.deferred(key):
                entries += await self._read_new(key, block_ms)
            if entries:
                total += await self.process(entries)
        return total

    async def drain(self) -> int:
        """Process until the stream has nothing new or reclaimable; returns entries processed."""
        await self.handler.catch_up()
        total = 0
        while True:
            processed = await self.step(None, reclaim=True)
            total += processed
            if processed == 0:
                break
        await self.forget_gone_consumers()
        await self.handler.housekeeping()
        return total

    async def run(self) -> None:
        """Serve until ``shutdown()``: read every partition, reclaim now and then, housekeeping beside.

        Up to ``concurrency`` batches are processed at once, so that reading
        the next batch overlaps with the round trips of the previous ones
        (latency under load); each batch is acknowledged on its own.
        """
        housekeeping = asyncio.create_task(self._housekeeping_loop())
        owning = asyncio.create_task(self._ownership_loop() if self.ordered else self._stop.wait())
        inflight: set[asyncio.Task[int]] = set()
        slots = asyncio.Semaphore(self.concurrency)
        try:
            await asyncio.gather(*(self._serve(key, slots, inflight) for key in self.streams))
        finally:
            owning.cancel()
            await asyncio.gather(owning, return_exceptions=True)
            # Let batches in flight finish: what they recorded gets sent and acknowledged.
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            # After shutdown() it stops once its current round is done; otherwise (cancelled) at once.
            if not self._stop.is_set():
                housekeeping.cancel()
            await asyncio.gather(housekeeping, return_exceptions=True)
            if self.ordered:
                await self._leave()

    async def _serve(self, key: str, slots: asyncio.Semaphore, inflight: set[asyncio.Task[int]]) -> None:
        """Read one partition until ``shutdown()``, handing each batch to a task of its own."""
        _LEASED.set(self.ordered)  # this reader's task, and the batch tasks it starts (they copy it)
        loop = asyncio.get_running_loop()
        next_reclaim = 0.0
        next_idle_check = 0.0
        next_defer_check = 0.0
        held = False  # the handler defers: no new entry read (asked again after idle_poll_s)
        delay = 0.1
        while not self._stop.is_set():
            if not self.reads(key):
                try:
                    await asyncio.wait_for(self._stop.wait(), 0.05)
                except TimeoutError:
                    pass
                continue
            acquired = False
            idle = False
            self._reading[key] += 1  # until its batch is a task: a partition given up waits for it
            try:
                if key in self._fresh and key not in self._fenced:  # before anything of it is processed
                    self._tokens[key] = await self.handler.fence(key, self._tokens.get(key))
                    self._fenced.add(key)
                await slots.acquire()
                acquired = True
                await self.ensure_group()
                entries: list[StreamEntry] = []
                if key in self._fresh:
                    # The previous owner's entries first (they come before any new one), and nothing
                    # new until none is left: one still held (a batch it is finishing) is waited for.
                    entries = await self._reclaim(key, self.claim_idle_ms)
                    if not entries and not await self._others_pending(key):
                        self._fresh.discard(key)
                    elif not entries:
                        slots.release()
                        acquired = False
                        await asyncio.sleep(0.05)
                        continue
                    if entries:
                        acquired = False
                        await self._dispatch(key, entries, slots, inflight)  # in order: one round at a time
                        continue
                if loop.time() >= next_reclaim:
                    entries += await self._reclaim(key, self.claim_idle_ms)
                    # A full batch means more may be waiting: claim again at once.
                    pause = 0.0 if len(entries) >= self.batch else max(self.claim_idle_ms / 2000, 0.5)
                    next_reclaim = loop.time() + pause
                if self.handler.may_idle and loop.time() >= next_idle_check:
                    # Asked again only every idle_poll_s once it is busy: reading is always safe.
                    next_idle_check = loop.time() + self.idle_poll_s
                    idle = await self._skipped(key)
                if self.handler.may_defer and not idle and loop.time() >= next_defer_check:
                    # Before a read (at most every defer_check_s): a read of up to ``batch`` entries
                    # made after a bulk load had begun would take its events in before the next look.
                    held = await self.deferred(key)
                    next_defer_check = loop.time() + (self.idle_poll_s if held else self.defer_check_s)
                if not idle and not held:
                    # A handler that may defer: a read that waits (none in flight) takes few entries,
                    # so that a bulk load that begins while it waits gets only those in before the
                    # next read asks the handler (the reads after it take full batches).
                    few = self.handler.may_defer and not inflight
                    entries += await self._read_new(
                        key, 20 if inflight else 500, _WAITING_READ if few else None
                    )
                if self.dependencies is not None:
                    self.dependencies.report_ok(REDIS)
                if entries:
                    acquired = False  # the task gives its slot back
                    self._dispatch(key, entries, slots, inflight)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note_error(exc)
                if self.dependencies is not None:
                    self.dependencies.report_error(exc)
                if isinstance(exc, redis_errors.ResponseError) and "NOGROUP" in str(exc):
                    self._ready.discard(key)
                log.warning(
                    "stream consumer error; retrying", extra={"error": repr(exc)[:500], "stream": key}
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 5.0)
            finally:
                self._reading[key] -= 1
                if acquired:
                    slots.release()
            if idle or held:
                try:
                    await asyncio.wait_for(self._stop.wait(), self.idle_poll_s)
                except TimeoutError:
                    pass

    async def _skipped(self, key: str) -> bool:
        """While the handler is idle: move the group past every entry of partition ``key`` appended
        so far, unread; returns whether it did. The newest entry is looked up before the handler is
        asked, so that every entry skipped was appended before the handler said it was idle."""
        newest: Any = await self.client.xrevrange(key, "+", "-", count=1)
        if not await self.handler.idle():
            return False
        if newest:
            await self._skip(keys=[key], args=[self.group, _text(newest[0][0])])
        return True

    async def deferred(self, key: str) -> bool:
        """Whether no new entry of partition ``key`` is to be read now: the handler defers
        (``StreamHandler.deferring``) and the partition's oldest unread entry, if any, is not
        ``overdue`` for it (one that cannot be parsed is read, to be dead-lettered)."""
        if not self.handler.may_defer or not await self.handler.deferring():
            return False
        oldest: Any = await self._oldest_unread(keys=[key], args=[self.group])
        if not oldest:
            return True
        try:
            event = common_pb2.Event.FromString(
                StreamEntry.from_fields(oldest[0], _fields(oldest[1]), key).payload
            )
        except DecodeError:
            return False
        return not self.handler.overdue(event)

    def _dispatch(
        self, key: str, entries: list[StreamEntry], slots: asyncio.Semaphore, inflight: set[asyncio.Task[int]]
    ) -> asyncio.Task[int]:
        """Process a batch of partition ``key`` in a task of its own, which gives its slot back."""
        self._batches_of[key] += 1
        task = asyncio.create_task(self.process(entries))
        inflight.add(task)
        task.add_done_callback(self._finished(inflight, slots))
        task.add_done_callback(lambda _: self._batches_of.subtract([key]))
        return task

    async def _others_pending(self, key: str) -> bool:
        """Whether another consumer still has entries of partition ``key`` pending."""
        summary: Any = await self.client.xpending(key, self.group)
        return any(
            _text(c["name"]) != self.consumer and int(c["pending"]) for c in summary.get("consumers") or []
        )

    async def _ownership_loop(self) -> None:
        """Every third of ``lease_ms``: renew the leases held, take or give partitions to share evenly."""
        while not self._stop.is_set():
            try:
                await self.balance()
            except Exception as exc:
                self._note_error(exc)
                log.warning("cannot renew partition leases", extra={"error": repr(exc)[:300]})
            try:
                await asyncio.wait_for(self._stop.wait(), self.lease_ms / 3000)
            except TimeoutError:
                pass

    def reads(self, key: str) -> bool:
        """Whether ``run()`` may read partition ``key`` now: owned, and its lease not run out meanwhile."""
        return key in self.owned and self._lease_current(key)

    def _lease_current(self, key: str) -> bool:
        """Whether this replica's lease of ``key`` cannot have run out yet (on its own clock); a
        partition being given up still counts until it is released (its batches finish first)."""
        return not self.ordered or self._monotonic() < self._held_until.get(key, -math.inf)

    async def balance(self) -> None:
        """One round of partition ownership: renew, then take free partitions or give extra ones up."""
        started = self._monotonic()
        members = int(await self._members(keys=[self._members_key], args=[self.consumer, self.lease_ms]))
        for key in list(self.owned):
            if not await self._renew(
                keys=[stream.owner_key(key, self.group)], args=[self.consumer, self.lease_ms]
            ):
                self.owned.discard(key)  # expired (this replica stalled): someone else's now
                self._fenced.discard(key)
                log.warning("partition lease lost", extra={"stream": key})
            else:
                self._held_until[key] = started + self.lease_ms / 1000
        share = math.ceil(len(self.streams) / max(members, 1))
        # Start at a place of this consumer's own, so that replicas starting together take different ones.
        start = sum(self.consumer.encode()) % len(self.streams)
        for key in self.streams[start:] + self.streams[:start]:
            if len(self.owned) >= share:
                break
            if key not in self.owned and await self.client.set(
                stream.owner_key(key, self.group), self.consumer, nx=True, px=self.lease_ms
            ):
                self.owned.add(key)
                self._fresh.add(key)
                self._fenced.discard(key)  # fenced again before it is read
                self._held_until[key] = started + self.lease_ms / 1000
                log.info("partition taken", extra={"stream": key, "consumer": self.consumer})
        for key in sorted(self.owned)[share:]:
            await self._give_up(key)

    async def _give_up(self, key: str) -> None:
        """Stop reading ``key``; release its lease once this replica's batches of it are done."""
        self.owned.discard(key)
        self._fresh.discard(key)
        while self._batches_of[key] > 0 or self._reading[key] > 0:
            await asyncio.sleep(0.05)
        await self._release(keys=[stream.owner_key(key, self.group)], args=[self.consumer])
        self._fenced.discard(key)
        log.info("partition given up", extra={"stream": key, "consumer": self.consumer})

    async def _leave(self) -> None:
        """At shutdown: release every partition (batches are done) and leave the members."""
        try:
            for key in list(self.owned):
                await self._give_up(key)
            await self.client.zrem(self._members_key, self.consumer)
        except Exception as exc:  # the leases expire anyway
            log.warning("cannot release partitions", extra={"error": repr(exc)[:300]})

    @property
    def _members_key(self) -> str:
        return stream.members_key(self.streams[0], self.group)

    async def _housekeeping_loop(self) -> None:
        """Every ``housekeeping_interval_s``: the handler's housekeeping, and gone consumers removed."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.housekeeping_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.handler.housekeeping()
                await self.forget_gone_consumers()
            except Exception as exc:
                self._note_error(exc)
                log.warning("stream housekeeping failed", extra={"error": repr(exc)[:300]})

    def _finished(
        self, inflight: set[asyncio.Task[int]], slots: asyncio.Semaphore
    ) -> Callable[[asyncio.Task[int]], None]:
        def done(task: asyncio.Task[int]) -> None:
            inflight.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                assert error is not None
                self._note_error(error)
                log.warning("batch failed; its entries stay pending", extra={"error": repr(error)[:500]})

        return done

    def shutdown(self) -> None:
        self._stop.set()
