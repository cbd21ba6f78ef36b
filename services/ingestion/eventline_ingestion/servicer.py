"""IngestionService over gRPC: validate, call the repository, map the reply."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging

import redis.asyncio as redis
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_ingestion import validation
from eventline_ingestion.repository import IngestionRepository
from eventline_ingestion.validation import Arrival, NewEvent
from eventline_ingestion.writer import EventWriter
from eventline_shared import stream, tracing
from eventline_shared.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    invalid,
    raise_if_any,
)
from eventline_shared.grpc_server import Context, database_timeout
from eventline_shared.values import check_customer_id, timestamp_to_datetime

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
QUERY_CEILING_S = 30.0
"""The longest a database call of an RPC without a deadline may take."""
MAX_PAGE_SIZE = 1000


def _arrival(context: Context) -> Arrival:
    """Now, and the trace of this call: the client's traceparent continued, or a new one."""
    return Arrival.now_under(tracing.from_metadata(context.invocation_metadata()).header)


class IngestionServicer(ingestion_pb2_grpc.IngestionServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        repository: IngestionRepository,
        writer: EventWriter,
        client: redis.Redis,
        stream_key: str,
        max_batch: int = 1000,
    ) -> None:
        self.repository = repository
        self.writer = writer
        self.client = client
        self.stream_key = stream_key
        self.max_batch = max_batch

    async def _track_one(
        self, event: NewEvent | list[FieldViolation], context: Context
    ) -> tuple[common_pb2.Event, bool]:
        if not isinstance(event, NewEvent):
            raise InvalidArgument(event)
        results = await self.writer.store([event])
        stored, seen = results[event.key]
        log.debug("event tracked", extra={"event_id": event.event_id, "deduplicated": seen})
        return stored, seen

    async def TrackCustomerEvent(
        self, request: ingestion_pb2.TrackCustomerEventRequest, context: Context
    ) -> ingestion_pb2.TrackCustomerEventResponse:
        event, seen = await self._track_one(validation.customer_event(request, _arrival(context)), context)
        return ingestion_pb2.TrackCustomerEventResponse(event=event, deduplicated=seen)

    async def TrackSystemEvent(
        self, request: ingestion_pb2.TrackSystemEventRequest, context: Context
    ) -> ingestion_pb2.TrackSystemEventResponse:
        event, seen = await self._track_one(validation.system_event(request, _arrival(context)), context)
        return ingestion_pb2.TrackSystemEventResponse(event=event, deduplicated=seen)

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
        arrival = _arrival(context)
        checked = [validation.batch_item(item, i, arrival) for i, item in enumerate(request.events)]
        good = [e for e in checked if isinstance(e, NewEvent)]
        stored = await self.writer.store(good) if good else {}
        log.debug("batch tracked", extra={"items": len(checked), "valid": len(good)})
        first_index: dict[tuple[str, str], int] = {}
        results = []
        for i, item in enumerate(checked):
            if isinstance(item, NewEvent):
                event, seen = stored[item.key]
                repeated = first_index.setdefault(item.key, i) != i
                results.append(ingestion_pb2.TrackEventsResult(event=event, deduplicated=seen or repeated))
            else:
                error = InvalidArgument(item).to_status()
                results.append(ingestion_pb2.TrackEventsResult(error=error))
        return ingestion_pb2.TrackEventsResponse(results=results)

    async def UpsertCustomer(
        self, request: ingestion_pb2.UpsertCustomerRequest, context: Context
    ) -> ingestion_pb2.UpsertCustomerResponse:
        change = validation.customer_change(request)
        if not isinstance(change, validation.CustomerChange):
            raise InvalidArgument(change)
        customer, created = await self.repository.upsert_customer(
            change, database_timeout(context, QUERY_CEILING_S)
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
            raise NotFound(f"customer {request.customer_id!r} not found")
        return ingestion_pb2.GetCustomerResponse(customer=customer)

    async def ListTimeline(
        self, request: ingestion_pb2.ListTimelineRequest, context: Context
    ) -> ingestion_pb2.ListTimelineResponse:
        violations = [v for v in [check_customer_id(request.customer_id, "customer_id")] if v]
        violations += validation.check_names(list(request.event_names), "event_names")
        if request.page_size < 0:
            violations.append(FieldViolation("page_size", "page_size must not be negative"))
        after = timestamp_to_datetime(request.occurred_after) if request.HasField("occurred_after") else None
        before = (
            timestamp_to_datetime(request.occurred_before) if request.HasField("occurred_before") else None
        )
        filters = _filter_digest(request)
        cursor = None
        if request.page_token:
            cursor = _decode_token(request.page_token, filters)
            if cursor is None:
                violations.append(
                    FieldViolation("page_token", "page token is malformed or was made for other filters")
                )
        raise_if_any(violations)
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self.repository.timeline(
            request.customer_id,
            names=list(request.event_names),
            after=after,
            before=before,
            cursor=cursor,
            limit=size,
            timeout=database_timeout(context, QUERY_CEILING_S),
        )
        if not page.events and not cursor:
            if not await self.repository.customer_exists(
                request.customer_id, database_timeout(context, QUERY_CEILING_S)
            ):
                raise NotFound(f"customer {request.customer_id!r} not found")
        token = _encode_token(page.last, filters) if page.last else ""
        return ingestion_pb2.ListTimelineResponse(events=page.events, next_page_token=token)

    async def EraseCustomer(
        self, request: ingestion_pb2.EraseCustomerRequest, context: Context
    ) -> ingestion_pb2.EraseCustomerResponse:
        raise_if_any(v for v in [check_customer_id(request.customer_id, "customer_id")] if v)
        erased, events = await self.repository.erase_customer(
            request.customer_id, database_timeout(context, QUERY_CEILING_S)
        )
        entries = 0
        for key in (self.stream_key, stream.dead_letter_stream(self.stream_key)):
            entries += await stream.erase_customer_entries(self.client, key, request.customer_id)
        return ingestion_pb2.EraseCustomerResponse(
            customer_erased=erased, events_erased=events, stream_entries_erased=entries
        )


def _filter_digest(request: ingestion_pb2.ListTimelineRequest) -> str:
    key = [
        request.customer_id,
        sorted(request.event_names),
        request.occurred_after.ToJsonString() if request.HasField("occurred_after") else "",
        request.occurred_before.ToJsonString() if request.HasField("occurred_before") else "",
    ]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def _encode_token(last: tuple[dt.datetime, str], filters: str) -> str:
    raw = json.dumps({"t": last[0].isoformat(), "e": last[1], "f": filters})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_token(token: str, filters: str) -> tuple[dt.datetime, str] | None:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if raw["f"] != filters:
            return None
        return dt.datetime.fromisoformat(raw["t"]), str(raw["e"])
    except (ValueError, KeyError, TypeError):
        return None
