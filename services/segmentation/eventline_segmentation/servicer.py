"""SegmentationService: check the request, call the domain (``segments``), map the answer."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator

import grpc
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc

from eventline_segmentation import segments
from eventline_segmentation.repository import StoredSegment
from eventline_segmentation.segments import Segments, Target, check_segment_id
from eventline_shared import field_masks, paging, values
from eventline_shared.errors import EventlineError, FieldViolation, InvalidArgument, invalid, raise_if_any
from eventline_shared.paging import PageTokens
from eventline_shared.server.grpc_server import Context, database_timeout

DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
DEFAULT_CHUNK = 5000
WATCH_PAGE = 1000
"""Transitions WatchSegment reads per query."""
WATCH_POLL_S = 0.1
"""How often a WatchSegment stream that has sent everything looks for new transitions."""
DEFAULT_SEGMENT_PAGE = 50
MAX_SEGMENT_PAGE = 1000
MAX_LISTED_VIOLATIONS = 100
"""ValidateFilter lists at most this many problems (a huge bad filter must not make a huge reply)."""
MAX_REQUIRED_EVENT_IDS = 100
"""Event ids one MatchCustomer call may require (a campaign passes its one trigger event)."""


def segment_message(stored: StoredSegment) -> pb.Segment:
    return pb.Segment(
        segment_id=stored.segment_id,
        display_name=stored.display_name,
        description=stored.description,
        filter=pb.Filter.FromString(stored.filter),
        create_time=values.datetime_to_timestamp(stored.created_at),
        update_time=values.datetime_to_timestamp(stored.updated_at),
        realtime=stored.realtime,
        time_zone=stored.time_zone,
    )


class TooManyStreams(EventlineError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StreamSlots:
    """At most ``size`` streams at once in this replica; one more is refused at once, not queued."""

    def __init__(self, size: int, rpc: str) -> None:
        self.size = size
        self.rpc = rpc
        """The RPC the streams serve, named when one more is refused."""
        self.open = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.open >= self.size:
            raise TooManyStreams(
                f"{self.size} {self.rpc} calls are already being served by this replica; retry later"
            )
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        segments: Segments,
        max_query_s: float,
        max_streams: int,
        tokens: PageTokens,
    ) -> None:
        self.segments = segments
        self.watches = StreamSlots(max_streams, "WatchSegment")
        """WatchSegment streams (long-lived) have their own places: they never take StreamCustomers'."""
        self.max_query_s = max_query_s
        self.streams = StreamSlots(max_streams, "StreamCustomers")
        self.tokens = tokens

    # Evaluation ----------------------------------------------------------------------

    async def CountCustomers(
        self, request: pb.CountCustomersRequest, context: Context
    ) -> pb.CountCustomersResponse:
        counted = await self.segments.count(Target.of(request), database_timeout(context, self.max_query_s))
        return pb.CountCustomersResponse(count=counted.count, now=values.datetime_to_timestamp(counted.now))

    async def ListCustomers(
        self, request: pb.ListCustomersRequest, context: Context
    ) -> pb.ListCustomersResponse:
        size = paging.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        # A token is bound to what is evaluated, a saved segment's filter included (it may change
        # between pages), so the target is resolved before the token is read.
        resolved = await self.segments.resolve(Target.of(request))
        after, now = "", None
        if request.page_token:
            position = self.tokens.read(request.page_token, "ListCustomers", resolved.key, (str, dt.datetime))
            after, now = position.text(0), position.instant(1)
            if not segments.NOW_MIN <= now < segments.NOW_MAX:
                raise invalid("page_token", f"the page token's now must be {segments.NOW_BOUNDS}")
        prepared = self.segments.prepare(resolved, now)
        ids = await self.segments.customer_ids(
            prepared, after, size + 1, database_timeout(context, self.max_query_s)
        )
        page = paging.fill(ids, size, paging.string_bytes)
        next_token = ""
        if len(page) < len(ids):
            next_token = self.tokens.issue("ListCustomers", prepared.key, (page[-1], prepared.clock.now))
        return pb.ListCustomersResponse(
            customer_ids=page,
            next_page_token=next_token,
            now=values.datetime_to_timestamp(prepared.clock.now),
        )

    async def StreamCustomers(
        self, request: pb.StreamCustomersRequest, context: Context
    ) -> AsyncIterator[pb.StreamCustomersResponse]:
        # A chunk of 10,000 ids of at most 128 bytes is far below a reply's 4 MB.
        chunk = paging.page_size(request.chunk_size, DEFAULT_CHUNK, MAX_PAGE, "chunk_size")
        after = request.after_customer_id
        if after:
            raise_if_any(values.present([values.check_customer_id(after, "after_customer_id")]))
        with self.streams.slot():  # first: refusing a stream must cost next to nothing
            prepared = await self.segments.prepared(Target.of(request))
            pages = self.segments.customer_id_pages(
                prepared, after, lambda: database_timeout(context, self.max_query_s)
            )
            async with contextlib.aclosing(pages):
                async for ids in pages:
                    # The page is held as its replies (compact protobuf), not as Python strings:
                    # a stream waiting for its client holds a few hundred KB at most.
                    replies = collections.deque(
                        pb.StreamCustomersResponse(customer_ids=ids[start : start + chunk])
                        for start in range(0, len(ids), chunk)
                    )
                    del ids
                    while replies:
                        yield replies.popleft()

    async def MatchCustomer(
        self, request: pb.MatchCustomerRequest, context: Context
    ) -> pb.MatchCustomerResponse:
        bad = values.present(
            [
                values.check_customer_id(request.customer_id, "customer_id"),
                *(
                    values.check_event_id(event_id, f"required_event_ids[{i}]")
                    for i, event_id in enumerate(request.required_event_ids)
                ),
            ]
        )
        if len(request.required_event_ids) > MAX_REQUIRED_EVENT_IDS:
            bad.append(FieldViolation("required_event_ids", f"at most {MAX_REQUIRED_EVENT_IDS} event ids"))
        if bad:
            raise InvalidArgument(bad[:MAX_LISTED_VIOLATIONS])
        matched = await self.segments.match(
            Target.of(request),
            request.customer_id,
            list(request.required_event_ids),
            database_timeout(context, self.max_query_s),
        )
        response = pb.MatchCustomerResponse(
            matched=matched.matched, now=values.datetime_to_timestamp(matched.now)
        )
        for e in matched.explanations:
            node = response.nodes.add(path=e.path, held=e.held, count=e.count)
            if e.last is not None:
                node.last_occurred_at.CopyFrom(values.datetime_to_timestamp(e.last))
            if e.first is not None:
                node.first_occurred_at.CopyFrom(values.datetime_to_timestamp(e.first))
            if e.days_since_last is not None:
                node.days_since_last = e.days_since_last
            if e.value is not None:
                node.value.CopyFrom(e.value)
        return response

    async def ValidateFilter(
        self, request: pb.ValidateFilterRequest, context: Context
    ) -> pb.ValidateFilterResponse:
        report = segments.check_filter(request.filter, request.HasField("filter"), request.bindings)
        return pb.ValidateFilterResponse(
            valid=not report.violations,
            violations=[
                pb.FilterViolation(field=v.field, description=v.description)
                for v in report.violations[:MAX_LISTED_VIOLATIONS]
            ],
            references=report.references,
            unresolved_references=report.unresolved,
        )

    # Saved segments ------------------------------------------------------------------

    async def CreateSegment(
        self, request: pb.CreateSegmentRequest, context: Context
    ) -> pb.CreateSegmentResponse:
        violations = segments.check_segment(request.segment, segments.SEGMENT_FIELDS)
        if request.segment_id:
            violations += values.present([check_segment_id(request.segment_id, "segment_id")])
        raise_if_any(violations)
        segments.fits_a_reply(request.segment)
        stored = await self.segments.create(request.segment_id, request.segment)
        return pb.CreateSegmentResponse(segment=segment_message(stored))

    async def GetSegment(self, request: pb.GetSegmentRequest, context: Context) -> pb.GetSegmentResponse:
        raise_if_any(values.present([check_segment_id(request.segment_id, "segment_id")]))
        return pb.GetSegmentResponse(segment=segment_message(await self.segments.get(request.segment_id)))

    async def ListSegments(
        self, request: pb.ListSegmentsRequest, context: Context
    ) -> pb.ListSegmentsResponse:
        size = paging.page_size(request.page_size, DEFAULT_SEGMENT_PAGE, MAX_SEGMENT_PAGE)
        bound_to = paging.scope(request)
        after = ""
        if request.page_token:
            after = self.tokens.read(request.page_token, "ListSegments", bound_to, (str,)).text(0)
        stored = await self.segments.list_after(after, size + 1, paging.READ_BYTES)
        listed = [segment_message(s) for s in stored]
        page = paging.fill(listed, size, paging.message_bytes)
        next_token = ""
        if len(page) < len(listed):
            next_token = self.tokens.issue("ListSegments", bound_to, (page[-1].segment_id,))
        return pb.ListSegmentsResponse(segments=page, next_page_token=next_token)

    async def UpdateSegment(
        self, request: pb.UpdateSegmentRequest, context: Context
    ) -> pb.UpdateSegmentResponse:
        # An empty mask replaces the display name, description and filter (UpdateSegmentRequest.update_mask).
        mask = field_masks.read(
            request.update_mask, segments.SEGMENT_FIELDS, when_empty=segments.DEFAULT_UPDATE_FIELDS
        )
        violations = mask.violations
        violations += values.present([check_segment_id(request.segment.segment_id, "segment.segment_id")])
        violations += segments.check_segment(request.segment, mask.paths)
        raise_if_any(violations)
        if "filter" in mask.paths:
            segments.fits_a_reply(request.segment)
        stored = await self.segments.update(request.segment, mask.paths)
        return pb.UpdateSegmentResponse(segment=segment_message(stored))

    async def DeleteSegment(
        self, request: pb.DeleteSegmentRequest, context: Context
    ) -> pb.DeleteSegmentResponse:
        raise_if_any(values.present([check_segment_id(request.segment_id, "segment_id")]))
        await self.segments.delete(request.segment_id)
        return pb.DeleteSegmentResponse()

    async def GetSegmentSize(
        self, request: pb.GetSegmentSizeRequest, context: Context
    ) -> pb.GetSegmentSizeResponse:
        stored = await self.segments.stored_size(Target.segment(request))
        if stored is not None:
            return pb.GetSegmentSizeResponse(
                size=stored.count, now=values.datetime_to_timestamp(stored.now), stored=True
            )
        counted = await self.segments.count(
            Target.segment(request), database_timeout(context, self.max_query_s)
        )
        return pb.GetSegmentSizeResponse(size=counted.count, now=values.datetime_to_timestamp(counted.now))

    # Real-time segments (issue 13) ---------------------------------------------------

    async def ListSegmentMembers(
        self, request: pb.ListSegmentMembersRequest, context: Context
    ) -> pb.ListSegmentMembersResponse:
        members = await self.segments.realtime(request.segment_id)
        size = paging.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)
        bound_to = paging.scope(request)
        after = ""
        if request.page_token:
            after = self.tokens.read(request.page_token, "ListSegmentMembers", bound_to, (str,)).text(0)
        definition = await members.definition(members.pool, request.segment_id)
        rows = await members.members(request.segment_id, after, size + 1)
        found = [
            pb.SegmentMember(customer_id=customer_id, entered_at=values.datetime_to_timestamp(entered_at))
            for customer_id, entered_at in rows
        ]
        page = paging.fill(found, size, paging.message_bytes)
        next_token = ""
        if len(page) < len(found):
            next_token = self.tokens.issue("ListSegmentMembers", bound_to, (page[-1].customer_id,))
        return pb.ListSegmentMembersResponse(
            members=page, next_page_token=next_token, backfilling=definition.backfill_after is not None
        )

    async def WatchSegment(
        self, request: pb.WatchSegmentRequest, context: Context
    ) -> AsyncIterator[pb.WatchSegmentResponse]:
        if request.after_cursor < 0:
            raise invalid("after_cursor", "a cursor is 0 or more")
        with self.watches.slot():
            members = await self.segments.realtime(request.segment_id)
            after = request.after_cursor
            while True:
                found = await members.transitions(request.segment_id, after, WATCH_PAGE)
                for t in found:
                    yield pb.WatchSegmentResponse(
                        cursor=t.cursor,
                        customer_id=t.customer_id,
                        kind=pb.TRANSITION_KIND_ENTERED if t.entered else pb.TRANSITION_KIND_EXITED,
                        occur_time=values.datetime_to_timestamp(t.occurred_at),
                    )
                    after = t.cursor
                if len(found) < WATCH_PAGE:
                    # Transitions commit in cursor order (membership.py), so polling from the
                    # last cursor sent misses none. A segment no longer real-time ends the stream.
                    await asyncio.sleep(WATCH_POLL_S)
                    await members.definition(members.pool, request.segment_id)
