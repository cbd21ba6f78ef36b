"""What the campaign service does with the event stream: triggers, fan-outs and resends.

The consumer group itself (reading, reclaiming, dead letters, backoff) is
``eventline_shared.streams.consumer_group.ConsumerGroup``; this module is its handler.
A batch's deliveries and journey entries are recorded under its partition's fence
(``CampaignRepository.raise_fence``): once another replica has taken the partition
over, this one's recording fails and the batch is left to the new owner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from eventline.common.v1 import common_pb2
from redis import exceptions as redis_errors

from eventline_campaigns.audience import SegmentationRefused
from eventline_campaigns.engine import Engine
from eventline_campaigns.repository import BATCH_FENCE
from eventline_shared.errors import Unavailable
from eventline_shared.observability import tracing
from eventline_shared.storage import database
from eventline_shared.streams import stream
from eventline_shared.streams.consumer_group import Received, StreamHandler

log = logging.getLogger(__name__)


class CampaignHandler(StreamHandler):
    """Evaluates customer events' triggers, fans system events out, resends stale deliveries."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def transient(self, exc: BaseException) -> bool:
        """A dependency down or refusing us (retry later), rather than a bad entry."""
        if isinstance(
            exc, Unavailable | SegmentationRefused | redis_errors.ConnectionError | redis_errors.TimeoutError
        ) or stream.unavailable(exc):
            return True
        return isinstance(database.translate(exc), Unavailable)

    async def catch_up(self) -> None:
        await self.engine.cache.refresh()

    async def fence(self, partition: str, held: int | None) -> int:
        """Raise the partition's fence in the ledger: the previous owner records nothing more."""
        return await self.engine.repository.raise_fence(partition, held)

    async def housekeeping(self) -> None:
        """Resend deliveries recorded but not sent (a sender that died)."""
        await self.engine.delivery.recover()

    async def handle(self, batch: Sequence[Received]) -> None:
        """Handle a batch (of one partition) under its fence: what it records, in every task it
        starts, is refused once the partition has another owner (``PartitionTakenOver``)."""
        fenced = BATCH_FENCE.set(batch[0].fence if batch else None)
        try:
            await self._handle(batch)
        finally:
            BATCH_FENCE.reset(fenced)

    async def _handle(self, batch: Sequence[Received]) -> None:
        customer = [p.event for p in batch if p.event.kind == common_pb2.EVENT_KIND_CUSTOMER]
        if customer:
            await self.engine.handle_customer_events(customer)
            if log.isEnabledFor(logging.DEBUG):
                for item in batch:
                    # Each event's own trace, continued from the call that stored it.
                    trace = tracing.TraceContext.parse(item.entry.traceparent) or tracing.TraceContext.root()
                    log.debug(
                        "customer event handled",
                        extra={"event_id": item.event.event_id, "trace_id": trace.trace_id},
                    )
        for item in batch:
            if item.event.kind == common_pb2.EVENT_KIND_SYSTEM:
                # The fan-out's log lines carry the trace of the call that stored the event.
                tracing.continue_from(item.entry.traceparent)
                await self.engine.handle_system_event(item.event, item.keepalive)
