"""IngestionService over gRPC: validate, call the repository, map the reply."""

from __future__ import annotations

import datetime as dt
import logging

from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_ingestion import validation
from eventline_ingestion.erasure import Erasure
from eventline_ingestion.repository import IngestionRepository
from eventline_ingestion.validation import Arrival, NewEvent
from eventline_ingestion.writer import EventWriter, Stored
from eventline_shared import paging
from eventline_shared.clock import SYSTEM_CLOCK, Clock
from eventline_shared.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    invalid,
    quote,
    raise_if_any,
)
from eventline_shared.observability import tracing
from eventline_shared.paging import MAX_REPLY_BYTES, PageTokens
from eventline_shared.server.grpc_server import Context, database_timeout
from eventline_shared.streams.imports import ImportsRunning
from eventline_shared.values import (
    check_customer_id,
    check_timestamp,
    length_delimited,
    timestamp_to_datetime,
)

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
QUERY_CEILING_S = 30.0
"""The longest a database call of an RPC without a deadline may take."""
MAX_PAGE_SIZE = 1000


def _arrival(context: Context, clock: Clock) -> Arrival:
    """Now, and the trace of this call: the client's traceparent continued, or a new one."""
    return Arrival.now_under(tracing.from_metadata(context.invocation_metadata()).header, clock)


class IngestionServicer(ingestion_pb2_grpc.IngestionServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        repository: IngestionRepository,
        writer: EventWriter,
        erasure: Erasure,
        tokens: PageTokens,
        max_batch: int = 1000,
        clock: Clock = SYSTEM_CLOCK,
        imports: ImportsRunning | None = None,
    ) -> None:
        self.clock = clock
        self.imports = imports
        """Keeps the "import running" mark while calls hinted ``bulk_import`` are stored (None: no
        mark, the hint is accepted and changes nothing)."""
        self.repository = repository
        self.writer = writer
        self.erasure = erasure
        self.tokens = tokens
        self.max_batch = max_batch

    async def _track_one(self, event: NewEvent | list[FieldViolation], context: Context) -> bytes:
        """The reply's encoding (``TrackCustomerEventResponse`` and ``TrackSystemEventResponse``
        share it): the stored event's bytes as they are, as field 1, and ``deduplicated``."""
        if not isinstance(event, NewEvent):
            raise InvalidArgument(event)
        results = await self.writer.store([event])
        stored, seen = results[event.key]
        log.debug("event tracked", extra={"event_id": event.event_id, "deduplicated": seen})
        reply = length_delimited(_EVENT_FIELD, stored)
        return reply + _DEDUPLICATED if seen else reply

    async def TrackCustomerEvent(
        self, request: ingestion_pb2.TrackCustomerEventRequest, context: Context
    ) -> ingestion_pb2.TrackCustomerEventResponse:
        # Parsed from its encoding: one parse, where an Event parsed and copied in took two.
        return ingestion_pb2.TrackCustomerEventResponse.FromString(
            await self._track_one(validation.customer_event(request, _arrival(context, self.clock)), context)
        )

    async def TrackSystemEvent(
        self, request: ingestion_pb2.TrackSystemEventRequest, context: Context
    ) -> ingestion_pb2.TrackSystemEventResponse:
        return ingestion_pb2.TrackSystemEventResponse.FromString(
            await self._track_one(validation.system_event(request, _arrival(context, self.clock)), context)
        )

    async def TrackEvents(
        self, request: ingestion_pb2.TrackEventsRequest, context: Context
    ) -> ingestion_pb2.TrackEventsResponse:
        if not request.events:
            raise invalid("events", "at least one event is required")
        if len(request.events) > self.max_batch:
            raise ResourceExhausted(
                [
                    FieldViolation(
                        "events", f"at most {self.max_batch} events per call, got {len(request.events)}"
                    )
                ]
            )
        arrival = _arrival(context, self.clock)
        checked = validation.batch_items(request.events, arrival)
        errors = {
            i: ingestion_pb2.TrackEventsResult(error=InvalidArgument(item).to_status())
            for i, item in enumerate(checked)
            if not isinstance(item, NewEvent)
        }
        # Never store what cannot be answered: the reply is bounded before anything is stored.
        error_bytes = {i: paging.message_bytes(e) for i, e in errors.items()}
        omit = request.omit_stored_events
        bound = (
            validation.compact_reply_bytes(checked, error_bytes)
            if omit
            else validation.reply_bytes(request, checked, error_bytes)
        )
        if bound > MAX_REPLY_BYTES:
            raise ResourceExhausted(
                [
                    FieldViolation(
                        "events",
                        f"the reply to these {len(request.events):,} events could take {bound:,} bytes, "
                        f"more than the {MAX_REPLY_BYTES:,} a reply may hold; send fewer or smaller "
                        "events per call",
                    )
                ]
            )
        good = [e for e in checked if isinstance(e, NewEvent)]
        if good and request.bulk_import and self.imports is not None:
            with self.imports.storing():
                stored = await self.writer.store(good)
        else:
            stored = await self.writer.store(good) if good else {}
        log.debug("batch tracked", extra={"items": len(checked), "valid": len(good)})
        if omit:
            return _compact_reply(checked, stored, errors)
        first_index: dict[tuple[str, str], int] = {}
        results = []
        stored_before = False
        for i, item in enumerate(checked):
            if isinstance(item, NewEvent):
                event, seen = stored[item.key]
                stored_before |= seen
                repeated = first_index.setdefault(item.key, i) != i
                results.append(
                    ingestion_pb2.TrackEventsResult(
                        event=common_pb2.Event.FromString(event), deduplicated=seen or repeated
                    )
                )
            else:
                results.append(errors[i])
        reply = ingestion_pb2.TrackEventsResponse(results=results)
        # Only events stored by earlier calls can make the reply larger than its bound.
        if stored_before and reply.ByteSize() > MAX_REPLY_BYTES:
            _shrink(reply)
        return reply

    async def UpsertCustomer(
        self, request: ingestion_pb2.UpsertCustomerRequest, context: Context
    ) -> ingestion_pb2.UpsertCustomerResponse:
        change = validation.customer_change(request)
        if not isinstance(change, validation.CustomerChange):
            raise InvalidArgument(change)
        customer, created = await self.repository.upsert_customer(
            change, self.clock.now(), database_timeout(context, QUERY_CEILING_S)
        )
        return ingestion_pb2.UpsertCustomerResponse(customer=customer, created=created)

    async def GetCustomer(
        self, request: ingestion_pb2.GetCustomerRequest, context: Context
    ) -> ingestion_pb2.GetCustomerResponse:
        raise_if_any(v for v in [check_customer_id(request.customer_id, "customer_id")] if v)
        customer = await self.repository.get_customer(
            request.customer_id, database_timeout(context, QUERY_CEILING_S)
        )
        if customer is None:
            raise NotFound(f"customer {quote(request.customer_id)} not found")
        return ingestion_pb2.GetCustomerResponse(customer=customer)

    async def ListTimeline(
        self, request: ingestion_pb2.ListTimelineRequest, context: Context
    ) -> ingestion_pb2.ListTimelineResponse:
        violations = [v for v in [check_customer_id(request.customer_id, "customer_id")] if v]
        violations += validation.check_names(list(request.event_names), "event_names")
        bounds = {}
        for field in ("occurred_after", "occurred_before"):
            if request.HasField(field):
                bad = check_timestamp(getattr(request, field), field)
                if bad:
                    violations.append(bad)
                else:
                    bounds[field] = timestamp_to_datetime(getattr(request, field))
        raise_if_any(violations)
        size = paging.page_size(request.page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        bound_to = paging.scope(request)
        cursor = None
        if request.page_token:
            position = self.tokens.read(request.page_token, "ListTimeline", bound_to, (dt.datetime, str))
            cursor = (position.instant(0), position.text(1))
        rows = await self.repository.timeline(
            request.customer_id,
            names=list(request.event_names),
            after=bounds.get("occurred_after"),
            before=bounds.get("occurred_before"),
            cursor=cursor,
            limit=size + 1,
            timeout=database_timeout(context, QUERY_CEILING_S),
        )
        if not rows and not cursor:
            if not await self.repository.customer_exists(
                request.customer_id, database_timeout(context, QUERY_CEILING_S)
            ):
                raise NotFound(f"customer {quote(request.customer_id)} not found")
        page = paging.fill(rows, size, paging.message_bytes)
        token = ""
        if len(page) < len(rows):
            last = page[-1]
            token = self.tokens.issue(
                "ListTimeline", bound_to, (timestamp_to_datetime(last.occurred_at), last.event_id)
            )
        return ingestion_pb2.ListTimelineResponse(events=page, next_page_token=token)

    async def EraseCustomer(
        self, request: ingestion_pb2.EraseCustomerRequest, context: Context
    ) -> ingestion_pb2.EraseCustomerResponse:
        raise_if_any(v for v in [check_customer_id(request.customer_id, "customer_id")] if v)
        erased = await self.erasure.erase(request.customer_id, database_timeout(context, QUERY_CEILING_S))
        return ingestion_pb2.EraseCustomerResponse(
            customer_erased=erased.customer,
            events_erased=erased.events,
            stream_entries_erased=erased.stream_entries,
        )


_EVENT_FIELD = b"\x0a"
"""Field 1 of a unary reply, length-delimited: the event."""
_DEDUPLICATED = b"\x10\x01"
"""Field 2 of a unary reply, a varint: ``deduplicated`` true."""

_EMPTY_RESULT = b"\x0a\x00"
"""An empty ``TrackEventsResult`` as an element of ``TrackEventsResponse.results`` (field 1)."""


def _compact_reply(
    checked: list[NewEvent | list[FieldViolation]],
    stored: Stored,
    errors: dict[int, ingestion_pb2.TrackEventsResult],
) -> ingestion_pb2.TrackEventsResponse:
    """The reply without the stored events: an empty result for each stored item (``deduplicated``
    set when its id was stored before, by an earlier call or an earlier item), an error for each
    refused one."""
    if not errors and len(stored) == len(checked) and not any(seen for _, seen in stored.values()):
        # The usual bulk import: every item valid, new, and of its own id, so every result is
        # empty; the reply is parsed from its encoding (a result per item: field 1, length 0),
        # not built an item at a time (docs/performance.md, issue 16).
        return ingestion_pb2.TrackEventsResponse.FromString(_EMPTY_RESULT * len(checked))
    reply = ingestion_pb2.TrackEventsResponse()
    add = reply.results.add
    first: set[tuple[str, str]] = set()
    for i, item in enumerate(checked):
        if isinstance(item, NewEvent):
            result = add()
            if stored[item.key][1] or item.key in first:
                result.deduplicated = True
            first.add(item.key)
        else:
            add().CopyFrom(errors[i])
    return reply


def _shrink(reply: ingestion_pb2.TrackEventsResponse) -> None:
    """Fit a batch reply that only events stored by earlier calls made too large.

    ``reply_bytes`` bounds the reply before storing, counting each repeated
    event id as the event sent; an id stored earlier with a larger event is
    answered with that event. Such an item stored nothing in this call, so it
    is answered with an error instead (largest first) until the reply fits:
    sent again alone, it returns the stored event.
    """
    seen = sorted(
        (i for i, r in enumerate(reply.results) if r.deduplicated),
        key=lambda i: reply.results[i].ByteSize(),
        reverse=True,
    )
    for i in seen:
        if reply.ByteSize() <= MAX_REPLY_BYTES:
            return
        reply.results[i].CopyFrom(
            ingestion_pb2.TrackEventsResult(
                error=ResourceExhausted(
                    [
                        FieldViolation(
                            f"events[{i}]",
                            "this event id was stored before, with an event too large to return in "
                            "this reply; nothing was stored: send it alone to read the stored event",
                        )
                    ]
                ).to_status(),
                deduplicated=True,
            )
        )
