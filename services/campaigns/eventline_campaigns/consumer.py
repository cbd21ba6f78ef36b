"""The stream consumer: a consumer group on the ingestion stream, shared by every replica.

* Each replica reads new entries with ``XREADGROUP >`` under its own
  consumer name; entries left pending by a crashed replica for longer than
  ``claim_idle_ms`` are taken over with ``XAUTOCLAIM``.
* An entry is acknowledged only after the engine has recorded its deliveries
  in the ledger and handed them to the channels.
* An entry that fails is left pending; once it has been delivered more than
  ``max_attempts`` times it is copied to the dead-letter stream (with the
  error) and acknowledged, so it never blocks the entries behind it. An entry
  that cannot even be parsed is dead-lettered at once.
* ``drain()`` processes until nothing is left (burst mode for tests and
  tools); ``run()`` serves until ``shutdown()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from eventline.common.v1 import common_pb2
from google.protobuf.message import DecodeError
from redis import exceptions as redis_errors

from eventline_campaigns.audience import SegmentationRefused
from eventline_campaigns.engine import Engine
from eventline_shared import database, faults, tracing
from eventline_shared.dependencies import REDIS, DependencyMonitor
from eventline_shared.errors import Unavailable
from eventline_shared.stream import StreamEntry

log = logging.getLogger(__name__)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` means a dependency is down or refuses us (retry later) rather than a bad entry."""
    if isinstance(
        exc, Unavailable | SegmentationRefused | redis_errors.ConnectionError | redis_errors.TimeoutError
    ):
        return True
    translated = database.translate(exc)
    return isinstance(translated, Unavailable)


@dataclass
class _Parsed:
    entry: StreamEntry
    event: common_pb2.Event


class StreamConsumer:
    def __init__(
        self,
        client: redis.Redis,
        engine: Engine,
        *,
        stream: str,
        group: str,
        consumer: str,
        dead_letter_stream: str,
        batch: int = 200,
        claim_idle_ms: int = 30_000,
        max_attempts: int = 5,
        recover_interval_s: float = 1.0,
        concurrency: int = 4,
        max_outage_backoff_s: float = 5.0,
        dependencies: DependencyMonitor | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_letter_stream = dead_letter_stream
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        # Entries this consumer is processing right now: never reclaimed from itself.
        self._inflight: set[str] = set()
        self.max_attempts = max_attempts
        self.recover_interval_s = recover_interval_s
        self.concurrency = concurrency
        self.max_outage_backoff_s = max_outage_backoff_s
        self._stop = asyncio.Event()
        self._group_ready = False
        self.errors: list[str] = []
        """The latest processing errors (kept short), for logs and tests."""
        self.dependencies = dependencies
        """Told whether each read of the stream worked, so health shows a consumer that cannot read."""

    async def ensure_group(self) -> None:
        """Create the group at the start of the stream (campaigns ignore events from before their activation)."""
        if self._group_ready:
            return
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # --- reading ---

    async def _read_new(self, block_ms: int | None) -> list[StreamEntry]:
        reply: Any = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=block_ms
        )
        entries: list[StreamEntry] = []
        for _, items in reply or []:
            entries += [StreamEntry.from_fields(entry_id, fields) for entry_id, fields in items if fields]
        return entries

    async def _reclaim(self, min_idle_ms: int) -> list[StreamEntry]:
        """Entries pending too long elsewhere (or failed here), now ours; poison ones are dead-lettered."""
        claimed: list[StreamEntry] = []
        start = "0-0"
        while True:
            reply: Any = await self.client.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start_id=start, count=self.batch
            )
            start = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            claimed += [StreamEntry.from_fields(entry_id, fields) for entry_id, fields in reply[1] if fields]
            if start == "0-0" or len(claimed) >= self.batch:
                break
        claimed = [entry for entry in claimed if entry.entry_id not in self._inflight]
        if not claimed:
            return []
        log.debug("stream entries reclaimed", extra={"entries": len(claimed)})
        deliveries = await self._times_delivered([e.entry_id for e in claimed])
        fresh: list[StreamEntry] = []
        for entry in claimed:
            attempts = deliveries.get(entry.entry_id, 1)
            if attempts > self.max_attempts:
                await self._dead_letter(entry, f"failed {attempts - 1} times", attempts - 1)
            else:
                fresh.append(entry)
        return fresh

    async def _times_delivered(self, entry_ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for entry_id in entry_ids:
            rows: Any = await self.client.xpending_range(
                self.stream, self.group, min=entry_id, max=entry_id, count=1, consumername=self.consumer
            )
            for row in rows:
                key = row["message_id"]
                found[key.decode() if isinstance(key, bytes) else key] = int(row["times_delivered"])
        return found

    async def _dead_letter(self, entry: StreamEntry, error: str, attempts: int) -> None:
        fields: dict[str, str | bytes] = {
            "event_id": entry.event_id,
            "customer_id": entry.customer_id,
            "name": entry.name,
            "payload": entry.payload,
            "source_stream": self.stream,
            "source_id": entry.entry_id,
            "group": self.group,
            "attempts": str(attempts),
            "error": error[:2000],
        }
        await self.client.xadd(self.dead_letter_stream, fields)  # type: ignore[arg-type]
        await self.client.xack(self.stream, self.group, entry.entry_id)
        log.error(
            "stream entry dead-lettered",
            extra={"entry_id": entry.entry_id, "event_id": entry.event_id, "error": error[:500]},
        )

    # --- processing ---

    async def process(self, entries: Sequence[StreamEntry]) -> int:
        """Process entries and acknowledge the ones whose deliveries are recorded; returns how many."""
        parsed: list[_Parsed] = []
        for entry in entries:
            try:
                event = common_pb2.Event.FromString(entry.payload)
                if not event.event_id or not event.name:
                    raise ValueError("the event has no id or no name")
            except (DecodeError, ValueError) as exc:
                await self._dead_letter(entry, f"unreadable entry: {exc}", 1)
                continue
            parsed.append(_Parsed(entry, event))
        if not parsed:
            return len(entries)
        ids = [p.entry.entry_id for p in parsed]
        self._inflight.update(ids)
        heartbeat = asyncio.create_task(self._hold(ids))
        try:
            return await self._process_parsed(entries, parsed)
        finally:
            heartbeat.cancel()
            self._inflight.difference_update(ids)

    async def _hold(self, entry_ids: Sequence[str]) -> None:
        """While entries are processed, keep resetting their idle time (XCLAIM JUSTID does not
        count as a delivery), so that no replica reclaims work that is still going on."""
        while True:
            await asyncio.sleep(max(self.claim_idle_ms / 3000, 0.05))
            try:
                await self.client.xclaim(
                    self.stream, self.group, self.consumer, 0, list(entry_ids), justid=True
                )
            except redis_errors.RedisError:
                pass

    async def _process_parsed(self, entries: Sequence[StreamEntry], parsed: Sequence[_Parsed]) -> int:
        try:
            await self._process_with_retries(parsed)
            done = [p.entry.entry_id for p in parsed]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Find the entries that fail on their own; the others go through.
            self._note_error(exc)
            done = []
            for item in parsed:
                try:
                    await self._process_batch([item])
                    done.append(item.entry.entry_id)
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
            await self.client.xack(self.stream, self.group, *done)
        log.debug("stream entries processed", extra={"entries": len(entries), "acknowledged": len(done)})
        return len(entries)

    def _note_error(self, exc: BaseException) -> None:
        self.errors = [*self.errors[-9:], repr(exc)[:500]]

    async def _process_with_retries(self, items: Sequence[_Parsed]) -> None:
        """Process a batch; while a dependency is down, retry it here with backoff.

        An outage (PostgreSQL, segmentation) is not the entries' fault: retrying
        them in place keeps their delivery count, so an outage never sends good
        entries to the dead-letter stream. Only errors that are not transient
        reach the caller (and count as attempts).
        """
        delay = 0.1
        while True:
            try:
                await self._process_batch(items)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not transient(exc) or self._stop.is_set():
                    raise
                self._note_error(exc)
                log.warning("dependency unavailable; retrying the batch", extra={"error": repr(exc)[:300]})
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_outage_backoff_s)
            try:
                # Still ours: keep other replicas from reclaiming what this one retries.
                await self.client.xclaim(
                    self.stream, self.group, self.consumer, 0, [i.entry.entry_id for i in items], justid=True
                )
            except redis_errors.RedisError:
                pass

    async def _process_batch(self, items: Sequence[_Parsed]) -> None:
        customer = [p.event for p in items if p.event.kind == common_pb2.EVENT_KIND_CUSTOMER]
        if customer:
            await self.engine.handle_customer_events(customer)
            if log.isEnabledFor(logging.DEBUG):
                for item in items:
                    # Each event's own trace, continued from the call that stored it.
                    trace = tracing.TraceContext.parse(item.entry.traceparent) or tracing.TraceContext.root()
                    log.debug(
                        "customer event handled",
                        extra={"event_id": item.event.event_id, "trace_id": trace.trace_id},
                    )
        for item in items:
            if item.event.kind == common_pb2.EVENT_KIND_SYSTEM:
                # The fan-out's log lines carry the trace of the call that stored the event.
                tracing.continue_from(item.entry.traceparent)
                await self.engine.handle_system_event(item.event, self._keepalive(item.entry.entry_id))

    def _keepalive(self, entry_id: str):  # type: ignore[no-untyped-def]
        async def touch() -> None:
            # Resets the entry's idle time so no other replica reclaims a long fan-out.
            await self.client.xclaim(self.stream, self.group, self.consumer, 0, [entry_id], justid=True)

        return touch

    # --- loops ---

    async def step(self, block_ms: int | None, reclaim: bool) -> int:
        """One round: reclaim (optionally) and read new entries; returns how many were processed."""
        await self.ensure_group()
        entries = await self._reclaim(self.claim_idle_ms) if reclaim else []
        entries += await self._read_new(block_ms)
        if not entries:
            return 0
        return await self.process(entries)

    async def drain(self) -> int:
        """Process until the stream has nothing new or reclaimable; returns entries processed."""
        await self.engine.cache.refresh()
        total = 0
        while True:
            processed = await self.step(None, reclaim=True)
            total += processed
            if processed == 0:
                break
        await self.engine.recover()
        return total

    async def run(self) -> None:
        """Serve until ``shutdown()``: read, reclaim now and then, resend stale deliveries.

        Up to ``concurrency`` batches are processed at once, so that reading
        the next batch overlaps with the database round trips of the previous
        ones (latency under load); each batch is acknowledged on its own.
        """
        loop = asyncio.get_running_loop()
        next_reclaim = 0.0
        recovering = asyncio.create_task(self._recover_loop())
        delay = 0.1
        inflight: set[asyncio.Task[int]] = set()
        try:
            while not self._stop.is_set():
                try:
                    if len(inflight) >= self.concurrency:
                        await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    await self.ensure_group()
                    entries: list[StreamEntry] = []
                    if loop.time() >= next_reclaim:
                        entries += await self._reclaim(self.claim_idle_ms)
                        # A full batch means more may be waiting: claim again at once.
                        pause = 0.0 if len(entries) >= self.batch else max(self.claim_idle_ms / 2000, 0.5)
                        next_reclaim = loop.time() + pause
                    entries += await self._read_new(20 if inflight else 500)
                    if self.dependencies is not None:
                        self.dependencies.report_ok(REDIS)
                    if entries:
                        task = asyncio.create_task(self.process(entries))
                        inflight.add(task)
                        task.add_done_callback(self._finished(inflight))
                    delay = 0.1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._note_error(exc)
                    if self.dependencies is not None:
                        self.dependencies.report_error(exc)
                    if isinstance(exc, redis_errors.ResponseError) and "NOGROUP" in str(exc):
                        self._group_ready = False
                    log.warning("campaign consumer error; retrying", extra={"error": repr(exc)[:500]})
                    try:
                        await asyncio.wait_for(self._stop.wait(), delay)
                    except TimeoutError:
                        pass
                    delay = min(delay * 2, 5.0)
        finally:
            # Let batches in flight finish: what they recorded gets sent and acknowledged.
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            # After shutdown() it stops once its current round is done; otherwise (cancelled) at once.
            if not self._stop.is_set():
                recovering.cancel()
            await asyncio.gather(recovering, return_exceptions=True)

    async def _recover_loop(self) -> None:
        """Resend stale pending deliveries every ``recover_interval_s``, beside (not in) the read loop."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.recover_interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.engine.recover()
            except Exception as exc:
                self._note_error(exc)
                log.warning("cannot resend stale deliveries", extra={"error": repr(exc)[:300]})

    def _finished(self, inflight: set[asyncio.Task[int]]):  # type: ignore[no-untyped-def]
        def done(task: asyncio.Task[int]) -> None:
            inflight.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self._note_error(task.exception())  # type: ignore[arg-type]
                log.warning(
                    "batch failed; its entries stay pending", extra={"error": repr(task.exception())[:500]}
                )

        return done

    def shutdown(self) -> None:
        self._stop.set()
