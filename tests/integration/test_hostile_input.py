"""The attacks of issue 10 (items 6, 9, 10, 11, 12 and 14) against real services, each with the
outcome it must now get: a reply the client can read, INVALID_ARGUMENT with the field's path, never
INTERNAL, never something stored that cannot be answered."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as seg
from eventline.segmentation.v1 import segmentation_pb2_grpc
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import service_env
from tests.fuzzing import CLEAN, page_sizes, timestamps
from tests.support import customer_event, violations

MiB = 1024 * 1024
INVALID = grpc.StatusCode.INVALID_ARGUMENT
TRAILERS_LIMIT = 8 * 1024
"""What a gRPC client accepts of trailers by default."""


@pytest.fixture
async def big_sender(ingestion_server) -> AsyncIterator[ingestion_pb2_grpc.IngestionServiceStub]:  # type: ignore[no-untyped-def]
    """A client that sends up to 32 MiB and receives with the default 4 MiB limit, as Python and Node do."""
    options = [("grpc.max_send_message_length", 32 * MiB)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_server.port}", options=options) as channel:
        yield ingestion_pb2_grpc.IngestionServiceStub(channel)


async def refused(call: Any, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)
    return caught.value


async def invalid_at(call: Any, request: Any, field: str) -> dict[str, str]:
    """The call is INVALID_ARGUMENT naming ``field``; the violations by path."""
    error = await refused(call, request)
    assert error.code() == INVALID, (error.code(), error.details())
    paths = violations(error)
    assert field in paths, paths
    return paths


async def stored_events(db) -> int:  # type: ignore[no-untyped-def]
    return int(await db.fetchval("SELECT (SELECT count(*) FROM customer_events) + (SELECT count(*) FROM system_events)"))


def big_event(i: int, context_bytes: int, customer: str = "big") -> ingestion_pb2.TrackEventsItem:
    """A customer event whose context holds about ``context_bytes`` bytes (in 4,000-byte strings)."""
    request = customer_event(customer, "Viewed", f"e{i:05d}")
    for k in range(context_bytes // 4000):
        request.context[f"k{k}"].string_value = "x" * 3990
    return ingestion_pb2.TrackEventsItem(customer_event=request)


async def every_page(call: Any, request: Any) -> list[Any]:
    """Every page of a list, read with a client's default limits; each within a reply's 4,000,000 bytes."""
    pages = []
    while True:
        page = await call(request)
        assert page.ByteSize() <= 4_000_000
        pages.append(page)
        if not page.next_page_token:
            return pages
        request.page_token = page.next_page_token


# --- 6. Never store what cannot be answered; every reply fits a client's 4 MiB -----------------------


@pytest.mark.parametrize("total_mb", [4.5, 15.9])
async def test_a_batch_whose_reply_cannot_fit_is_refused_and_stores_nothing(big_sender, db, total_mb):
    count = int(total_mb * 1_000_000 / 32_200)
    batch = ingestion_pb2.TrackEventsRequest(events=[big_event(i, 32_000) for i in range(count)])
    assert total_mb * 1_000_000 * 0.95 < batch.ByteSize() < 16 * MiB  # within the server's request limit
    error = await refused(big_sender.TrackEvents, batch)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "events" in violations(error)
    assert await stored_events(db) == 0


async def test_a_batch_whose_events_could_not_be_echoed_is_stored_when_they_are_omitted(big_sender, db):
    """The reply bound counts what the reply holds: without the events, a batch whose echo could
    not fit is stored and answered in a few bytes per item."""
    batch = ingestion_pb2.TrackEventsRequest(
        events=[big_event(i, 32_000) for i in range(140)], omit_stored_events=True
    )
    assert batch.ByteSize() > 4_000_000
    reply = await big_sender.TrackEvents(batch)
    assert len(reply.results) == 140 and not any(r.WhichOneof("result") for r in reply.results)
    assert reply.ByteSize() < 1000
    assert await stored_events(db) == 140


async def test_a_batch_just_under_the_bound_is_stored_and_its_reply_read_with_default_limits(big_sender, db):
    batch = ingestion_pb2.TrackEventsRequest(events=[big_event(i, 32_000) for i in range(110)])
    assert batch.ByteSize() > 3.3 * MiB
    reply = await big_sender.TrackEvents(batch)
    assert len(reply.results) == 110 and all(r.HasField("event") for r in reply.results)
    assert await stored_events(db) == 110


async def test_timeline_pages_stop_by_bytes_and_read_everything(big_sender, db):
    for start in range(0, 300, 100):
        reply = await big_sender.TrackEvents(
            ingestion_pb2.TrackEventsRequest(events=[big_event(i, 28_000) for i in range(start, start + 100)])
        )
        assert all(r.HasField("event") for r in reply.results)
    pages = await every_page(big_sender.ListTimeline, ingestion_pb2.ListTimelineRequest(customer_id="big", page_size=1000))
    assert len(pages) >= 3
    seen = [e.event_id for page in pages for e in page.events]
    assert len(seen) == 300 and len(set(seen)) == 300


async def test_events_stored_earlier_too_large_to_echo_are_answered_with_an_error_not_lost(big_sender, db):
    """The reply bound counts a repeated id as the event sent; one stored before with a larger event is
    the case it cannot know. Those items stored nothing; they are answered with an error until the reply
    fits, the new event of the batch is stored and answered."""
    for start in range(0, 150, 50):  # 150 events of 28 KB: 4.2 MB in all
        await big_sender.TrackEvents(
            ingestion_pb2.TrackEventsRequest(events=[big_event(i, 28_000) for i in range(start, start + 50)])
        )
    small = [ingestion_pb2.TrackEventsItem(customer_event=customer_event("big", "Viewed", f"e{i:05d}")) for i in range(150)]
    new = ingestion_pb2.TrackEventsItem(customer_event=customer_event("big", "Viewed", "fresh"))
    reply = await big_sender.TrackEvents(ingestion_pb2.TrackEventsRequest(events=[*small, new]))
    assert reply.results[-1].HasField("event") and not reply.results[-1].deduplicated
    errors = [r for r in reply.results[:-1] if r.HasField("error")]
    echoed = [r for r in reply.results[:-1] if r.HasField("event")]
    assert errors and echoed and all(r.deduplicated for r in reply.results[:-1])
    assert all(r.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for r in errors)
    assert await stored_events(db) == 151
    alone = await big_sender.TrackCustomerEvent(small[0].customer_event)
    assert alone.deduplicated and len(alone.event.context) == 7


async def test_a_segment_that_could_not_be_answered_is_refused_and_stored_nothing(segmentation_server, db):
    options = [("grpc.max_send_message_length", 32 * MiB)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{segmentation_server.port}", options=options) as channel:
        stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
        huge = seg.Filter(
            customer=seg.CustomerCondition(
                attribute=seg.Predicate(
                    field="a",
                    operator=seg.OPERATOR_IN,
                    values=[
                        seg.Operand(literal=common_pb2.Value(string_value=f"{i:04d}" + "v" * 4090))
                        for i in range(1000)
                    ],
                )
            )
        )
        segment = seg.Segment(display_name="huge", filter=huge)
        error = await refused(stub.CreateSegment, seg.CreateSegmentRequest(segment=segment, segment_id="huge"))
        # Refused before decoding now (a segment RPC accepts at most 256 KiB, so whatever is stored
        # fits a reply); the promise is the same: refused, and nothing stored.
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and violations(error)
        assert await db.fetchval("SELECT count(*) FROM segments") == 0


async def test_list_segments_pages_stop_by_bytes(segmentation):
    def large(i: int) -> seg.Segment:
        values = [seg.Operand(literal=common_pb2.Value(string_value=f"{i}-{j}" + "v" * 4000)) for j in range(60)]
        return seg.Segment(
            display_name=f"s{i}",
            filter=seg.Filter(
                customer=seg.CustomerCondition(
                    attribute=seg.Predicate(field="a", operator=seg.OPERATOR_IN, values=values)
                )
            ),
        )

    # About 240 KB each (under the 256 KiB a segment RPC accepts): 24 are more than one page holds.
    ids = [f"s{i:02d}" for i in range(24)]
    for i, segment_id in enumerate(ids):
        await segmentation.CreateSegment(seg.CreateSegmentRequest(segment=large(i), segment_id=segment_id))
    pages = await every_page(segmentation.ListSegments, seg.ListSegmentsRequest(page_size=50))
    assert len(pages) > 1 and all(0 < len(page.segments) < 24 for page in pages)
    assert [s.segment_id for page in pages for s in page.segments] == ids


async def test_list_campaigns_pages_stop_by_bytes(campaigns):
    def large(i: int) -> campaigns_pb2.Campaign:
        body = f"{i} " + "b" * 99_990
        return campaigns_pb2.Campaign(
            display_name=f"c{i}",
            trigger=campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name="E")),
            actions=[
                campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="s", html_body=body, text_body=body)),
                campaigns_pb2.Action(
                    push=campaigns_pb2.PushAction(title="t", body="b", data={f"d{k}": "x" * 3990 for k in range(20)})
                ),
            ],
        )

    for i in range(16):  # about 280 KB each
        await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=large(i), campaign_id=f"c{i}"))
    pages = await every_page(campaigns.ListCampaigns, campaigns_pb2.ListCampaignsRequest(page_size=500))
    assert all(0 < len(page.campaigns) < 16 for page in pages)
    ids = [c.campaign_id for page in pages for c in page.campaigns]
    assert sorted(ids) == sorted(f"c{i}" for i in range(16)) and len(ids) == 16


async def test_a_stored_row_too_large_for_a_reply_is_a_clean_resource_exhausted(segmentation, db):
    """The last line of defence: a reply over 4,000,000 bytes is refused by the server with a reason,
    not sent for the client to fail on (here a segment written behind the API's back)."""
    huge = seg.Filter(
        customer=seg.CustomerCondition(
            attribute=seg.Predicate(
                field="a",
                operator=seg.OPERATOR_IN,
                values=[seg.Operand(literal=common_pb2.Value(string_value=f"{i:04d}" + "v" * 4090)) for i in range(1100)],
            )
        )
    )
    await db.execute(
        "INSERT INTO segments (segment_id, display_name, description, filter) VALUES ('legacy', 'x', '', $1)",
        huge.SerializeToString(),
    )
    error = await refused(segmentation.GetSegment, seg.GetSegmentRequest(segment_id="legacy"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than the 4,000,000" in (error.details() or "")


# --- 9. Bad input answers INVALID_ARGUMENT with the field's path, never INTERNAL ----------------------


@pytest.mark.parametrize(
    ("field", "seconds", "nanos"),
    [
        ("occurred_after", 10**12, 0),
        ("occurred_after", -62135596800 - 86400, 0),  # year 0
        ("occurred_before", 0, -5),
        ("occurred_before", 253402300800, 0),  # year 10000
    ],
)
async def test_timeline_bounds_outside_a_timestamp_are_invalid_argument(ingestion, field, seconds, nanos):
    await ingestion.TrackCustomerEvent(customer_event("c1", "A"))
    request = ingestion_pb2.ListTimelineRequest(customer_id="c1")
    getattr(request, field).CopyFrom(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    await invalid_at(ingestion.ListTimeline, request, field)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    after=st.one_of(st.none(), timestamps),
    before=st.one_of(st.none(), timestamps),
    occurred_at=st.one_of(st.none(), timestamps),
    page_size=page_sizes,
    edit=st.one_of(st.none(), st.tuples(st.integers(0, 200), st.characters(codec="utf-8"))),
)
async def test_fuzzed_timeline_and_track_timestamps_and_tokens_are_clean(
    ingestion, after, before, occurred_at, page_size, edit
):
    """Any Timestamp in ListTimeline or a tracked event, any page size, any edit of a real token:
    a clean refusal or an answer, never INTERNAL."""
    track = customer_event("c1", "A")
    if occurred_at is not None:
        track.occurred_at.CopyFrom(occurred_at)
    try:
        await ingestion.TrackCustomerEvent(track)
    except grpc.aio.AioRpcError as error:
        assert error.code() in CLEAN, error.details()
    await ingestion.TrackCustomerEvent(customer_event("c1", "A", "one"))
    await ingestion.TrackCustomerEvent(customer_event("c1", "A", "two"))
    request = ingestion_pb2.ListTimelineRequest(customer_id="c1", page_size=page_size)
    if after is not None:
        request.occurred_after.CopyFrom(after)
    if before is not None:
        request.occurred_before.CopyFrom(before)
    for _ in range(2):
        try:
            page = await ingestion.ListTimeline(request)
        except grpc.aio.AioRpcError as error:
            assert error.code() in CLEAN, error.details()
            return
        if not page.next_page_token:
            return
        token = page.next_page_token
        if edit is not None:
            at, character = edit
            token = token[: at % len(token)] + character + token[at % len(token) + 1 :]
        request.page_token = token


def forged(payload: dict[str, Any]) -> str:
    """A token as the services used to make them: base64 of JSON, editable by anyone."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


EDITED_TOKENS = [
    forged({"t": "9999-12-31T23:00:00-14:00", "e": "x", "f": "0"}),
    forged({"t": "2026-01-01T00:00:00", "c": "x\x00y", "e": "\x00"}),  # naive, NUL
    forged({"after": "c1", "now": "0001-01-01T00:00:00+00:00", "key": "k"}),  # now = year 1
    forged({"segment": "a\x00b"}),
    forged({"p": "campaign_id", "v": "c", "d": 10**30}),
    "x" * 5000,
    "\x00",
]


async def _two_pages(call: Any, request: Any) -> str:
    page = await call(request)
    assert page.next_page_token, "the test needs a second page"
    return str(page.next_page_token)


def _tampered(token: str) -> list[str]:
    body, _, signature = token.partition(".")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    edited = raw.replace(b'"]]', b'0"]]')  # the same token, its last key edited
    assert edited != raw
    return [
        base64.urlsafe_b64encode(edited).decode().rstrip("=") + "." + signature,
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        *EDITED_TOKENS,
    ]


async def test_edited_page_tokens_of_every_list_rpc_are_invalid_argument(ingestion, segmentation, campaigns, db):
    # A second page exists in each list.
    for i in range(3):
        await ingestion.TrackCustomerEvent(customer_event("c1", "A", f"t{i}"))
        await segmentation.CreateSegment(
            seg.CreateSegmentRequest(
                segment=seg.Segment(display_name="s", filter=seg.Filter(event=seg.EventCondition(name="A"))),
                segment_id=f"s{i}",
            )
        )
        await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(
                campaign=campaigns_pb2.Campaign(
                    display_name="c",
                    trigger=campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name="A")),
                    actions=[campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text="hi"))],
                ),
                campaign_id=f"c{i}",
            )
        )
        await db.execute(
            "INSERT INTO deliveries (customer_id, campaign_id, event_id, channel, status, reason) VALUES ('c1', 'c0', $1, 2, 4, 'x')",
            f"t{i}",
        )
    lists = [
        (ingestion.ListTimeline, ingestion_pb2.ListTimelineRequest(customer_id="c1", page_size=1)),
        (segmentation.ListCustomers, seg.ListCustomersRequest(filter=seg.Filter(event=seg.EventCondition(name="A")), page_size=1)),
        (segmentation.ListSegments, seg.ListSegmentsRequest(page_size=1)),
        (campaigns.ListCampaigns, campaigns_pb2.ListCampaignsRequest(page_size=1)),
        (campaigns.ListDeliveries, campaigns_pb2.ListDeliveriesRequest(campaign_id="c0", page_size=1)),
    ]
    await ingestion.TrackCustomerEvent(customer_event("c2", "A"))  # a second customer for ListCustomers
    tokens = {}
    for call, request in lists:
        tokens[id(call)] = await _two_pages(call, request)
    for call, request in lists:
        good = tokens[id(call)]
        request.page_token = good
        await call(request)  # the real token works
        for n, bad in enumerate([*_tampered(good), *[t for other, t in tokens.items() if other != id(call)]]):
            request.page_token = bad
            try:
                await invalid_at(call, request, "page_token")
            except BaseException as exc:
                raise AssertionError(f"{call._method!r} accepted edited token {n}: {bad!r}") from exc


async def test_a_token_made_for_other_filters_is_invalid_argument(ingestion):
    for i in range(3):
        await ingestion.TrackCustomerEvent(customer_event("c1", "A", f"t{i}"))
    token = await _two_pages(ingestion.ListTimeline, ingestion_pb2.ListTimelineRequest(customer_id="c1", page_size=1))
    other = ingestion_pb2.ListTimelineRequest(customer_id="c1", page_size=1, event_names=["B"], page_token=token)
    await invalid_at(ingestion.ListTimeline, other, "page_token")


async def test_page_tokens_hold_across_replicas(db_url, stream_key, redis_client, ingestion):
    """The signing key lives in PostgreSQL: a token of one replica pages on another."""
    from eventline_ingestion.service import running
    from eventline_ingestion.settings import Settings

    for i in range(3):
        await ingestion.TrackCustomerEvent(customer_event("c1", "A", f"t{i}"))
    first = await ingestion.ListTimeline(ingestion_pb2.ListTimelineRequest(customer_id="c1", page_size=2))
    async with running(Settings.from_env(service_env(db_url, stream_key)), relay=False) as other:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            replica = ingestion_pb2_grpc.IngestionServiceStub(channel)
            rest = await replica.ListTimeline(
                ingestion_pb2.ListTimelineRequest(customer_id="c1", page_size=2, page_token=first.next_page_token)
            )
    assert len(first.events) + len(rest.events) == 3 and not rest.next_page_token


async def test_stream_customers_after_an_id_with_nul_is_invalid_argument(segmentation):
    request = seg.StreamCustomersRequest(filter=seg.Filter(event=seg.EventCondition(name="A")), after_customer_id="a\x00b")
    error = await refused(lambda r: _drain(segmentation.StreamCustomers(r)), request)
    assert error.code() == INVALID and "after_customer_id" in violations(error)


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


def sms_campaign(**fields: Any) -> campaigns_pb2.Campaign:
    return campaigns_pb2.Campaign(
        display_name="c",
        trigger=campaigns_pb2.Trigger(customer_event=campaigns_pb2.CustomerEventTrigger(event_name="A")),
        actions=[campaigns_pb2.Action(sms=campaigns_pb2.SmsAction(text="hi"))],
        **fields,
    )


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(10**14, 0), (60, -5), (0, -5), (-60, 0), (60, 10**9), (315_576_000_001, 0)]
)
async def test_frequency_cap_periods_that_are_no_valid_duration_are_invalid_argument(campaigns, db, seconds, nanos):
    cap = campaigns_pb2.FrequencyCap(max_sends=1, period=duration_pb2.Duration(seconds=seconds, nanos=nanos))
    request = campaigns_pb2.CreateCampaignRequest(campaign=sms_campaign(frequency_cap=cap), campaign_id="capped")
    await invalid_at(campaigns.CreateCampaign, request, "campaign.frequency_cap.period")
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 0


# --- 10. An error about a long value reaches the client, small ----------------------------------------


def assert_small(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == INVALID, (error.code(), (error.details() or "")[:200])
    size = sum(len(k) + len(v) + 32 for k, v in error.trailing_metadata() or ())
    assert size < TRAILERS_LIMIT // 2, size
    assert len(error.details() or "") <= 512


LONG = "n" * 6000


async def test_errors_about_long_values_reach_the_client_as_invalid_argument(ingestion, segmentation, campaigns):
    attempts: list[tuple[Any, Any]] = [
        (ingestion.TrackCustomerEvent, customer_event("c1", LONG)),
        (ingestion.TrackCustomerEvent, customer_event("c1", "A", **{LONG: 1})),
        (ingestion.TrackCustomerEvent, customer_event("c1", "A", **{f"{LONG}{i}": 1 for i in range(100)})),
        (ingestion.UpsertCustomer, ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(customer_id="c1", attributes={LONG: common_pb2.Value(integer_value=1)}))),
        (ingestion.UpsertCustomer, ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(customer_id="c1", email=LONG + "@x.com"))),
        (ingestion.GetCustomer, ingestion_pb2.GetCustomerRequest(customer_id=LONG)),
        (segmentation.GetSegment, seg.GetSegmentRequest(segment_id=LONG)),
        (segmentation.CountCustomers, seg.CountCustomersRequest(segment_id=LONG)),
        (segmentation.CountCustomers, seg.CountCustomersRequest(filter=seg.Filter(event=seg.EventCondition(name=LONG)))),
        (segmentation.CountCustomers, seg.CountCustomersRequest(
            filter=seg.Filter(event=seg.EventCondition(name="A")), time_zone=LONG)),
        (campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=LONG)),
        (campaigns.UpdateCampaign, campaigns_pb2.UpdateCampaignRequest(
            campaign=campaigns_pb2.Campaign(campaign_id="x"), update_mask=field_mask_pb2.FieldMask(paths=[LONG]))),
    ]
    for call, request in attempts:
        assert_small(await refused(call, request))


async def test_a_batch_of_items_with_long_bad_values_is_answered_with_small_item_errors(ingestion, db):
    items = [
        ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1", LONG, **{f"{LONG}{k}": 1 for k in range(5)}))
        for _ in range(200)
    ]
    reply = await ingestion.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items))
    assert all(r.HasField("error") and r.error.code == INVALID.value[0] for r in reply.results)
    assert max(r.error.ByteSize() for r in reply.results) < 3000
    assert await stored_events(db) == 0


# --- 11. The context size limit is the documented measure, exactly ------------------------------------


async def test_the_context_limit_is_32768_bytes_by_the_documented_measure(ingestion, db):
    exactly = customer_event("c1", "A", **{chr(ord("a") + i): "x" * 4095 for i in range(8)})
    await ingestion.TrackCustomerEvent(exactly)  # 8 x (1 + 4,095) = 32,768 bytes
    one_more = customer_event("c1", "A", **{chr(ord("a") + i): "x" * 4095 for i in range(8)})
    one_more.context["h"].string_value += "y"
    paths = await invalid_at(ingestion.TrackCustomerEvent, one_more, "context")
    assert "got 32769" in paths["context"]
    quotes = customer_event("c1", "A", **{f"q{i}": '"' * 4000 for i in range(5)})  # 20,010 bytes
    await ingestion.TrackCustomerEvent(quotes)
    assert await stored_events(db) == 2


# --- 12. Loose validation ----------------------------------------------------------------------------


async def test_every_id_field_refuses_a_trailing_newline(ingestion, segmentation, campaigns, db):
    await ingestion.TrackCustomerEvent(customer_event("c1", "A", "e1"))
    created = await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=sms_campaign(), campaign_id="camp"))
    flt = seg.Filter(event=seg.EventCondition(name="A"))
    segment = seg.Segment(display_name="s", filter=flt)
    await segmentation.CreateSegment(seg.CreateSegmentRequest(segment=segment, segment_id="seg"))
    renamed = sms_campaign()
    renamed.campaign_id = "camp\n"
    calls: list[tuple[Any, Any, str]] = [
        (ingestion.TrackCustomerEvent, customer_event("c1\n", "A"), "customer_id"),
        (ingestion.TrackCustomerEvent, customer_event("c1", "A", "e2\n"), "event_id"),
        (ingestion.TrackSystemEvent, ingestion_pb2.TrackSystemEventRequest(event_id="s\n", name="A"), "event_id"),
        (ingestion.GetCustomer, ingestion_pb2.GetCustomerRequest(customer_id="c1\n"), "customer_id"),
        (ingestion.ListTimeline, ingestion_pb2.ListTimelineRequest(customer_id="c1\n"), "customer_id"),
        (ingestion.EraseCustomer, ingestion_pb2.EraseCustomerRequest(customer_id="c1\n"), "customer_id"),
        (ingestion.UpsertCustomer, ingestion_pb2.UpsertCustomerRequest(customer=common_pb2.Customer(customer_id="c1\n")), "customer.customer_id"),
        (segmentation.CreateSegment, seg.CreateSegmentRequest(segment=segment, segment_id="seg\n"), "segment_id"),
        (segmentation.GetSegment, seg.GetSegmentRequest(segment_id="seg\n"), "segment_id"),
        (segmentation.DeleteSegment, seg.DeleteSegmentRequest(segment_id="seg\n"), "segment_id"),
        (segmentation.UpdateSegment, seg.UpdateSegmentRequest(segment=seg.Segment(segment_id="seg\n", display_name="x", filter=flt)), "segment.segment_id"),
        (segmentation.CountCustomers, seg.CountCustomersRequest(segment_id="seg\n"), "segment_id"),
        (segmentation.GetSegmentSize, seg.GetSegmentSizeRequest(segment_id="seg\n"), "segment_id"),
        (segmentation.MatchCustomer, seg.MatchCustomerRequest(filter=flt, customer_id="c1\n"), "customer_id"),
        (campaigns.CreateCampaign, campaigns_pb2.CreateCampaignRequest(campaign=sms_campaign(), campaign_id="camp\n"), "campaign_id"),
        (campaigns.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id="camp\n"), "campaign_id"),
        (campaigns.ActivateCampaign, campaigns_pb2.ActivateCampaignRequest(campaign_id="camp\n"), "campaign_id"),
        (campaigns.PauseCampaign, campaigns_pb2.PauseCampaignRequest(campaign_id="camp\n"), "campaign_id"),
        (campaigns.ArchiveCampaign, campaigns_pb2.ArchiveCampaignRequest(campaign_id="camp\n"), "campaign_id"),
        (campaigns.GetCampaignStats, campaigns_pb2.GetCampaignStatsRequest(campaign_id="camp\n"), "campaign_id"),
        (campaigns.GetJourneyStats, campaigns_pb2.GetJourneyStatsRequest(campaign_id="camp\n"), "campaign_id"),
        (campaigns.UpdateCampaign, campaigns_pb2.UpdateCampaignRequest(campaign=renamed, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])), "campaign.campaign_id"),
        (campaigns.PreviewMessage, campaigns_pb2.PreviewMessageRequest(campaign_id="camp\n", customer_id="c1"), "campaign_id"),
        (campaigns.PreviewMessage, campaigns_pb2.PreviewMessageRequest(campaign_id="camp", customer_id="c1\n"), "customer_id"),
        (campaigns.ListDeliveries, campaigns_pb2.ListDeliveriesRequest(campaign_id="camp\n"), "campaign_id"),
        (campaigns.ListDeliveries, campaigns_pb2.ListDeliveriesRequest(customer_id="c1\n"), "customer_id"),
        (campaigns.ListDeliveries, campaigns_pb2.ListDeliveriesRequest(event_id="e1\n"), "event_id"),
    ]
    for call, request, field in calls:
        await invalid_at(call, request, field)
    batch = ingestion_pb2.TrackEventsRequest(events=[ingestion_pb2.TrackEventsItem(customer_event=customer_event("c1\n", "A"))])
    [result] = (await ingestion.TrackEvents(batch)).results
    assert result.HasField("error") and result.error.code == INVALID.value[0]
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 1
    assert created.campaign.campaign_id == "camp"


@pytest.mark.parametrize("digits", ["\u0661\u0662\u0663", "\uff11\uff12\uff13", "12.\u0665"])
async def test_decimals_in_other_scripts_are_refused(ingestion, db, digits):
    request = customer_event("c1", "A")
    request.context["d"].decimal_value = digits
    await invalid_at(ingestion.TrackCustomerEvent, request, 'context["d"]')
    assert await stored_events(db) == 0


@pytest.mark.parametrize(
    "address",
    ["a@b", "<script>alert(1)</script>@x.com", "a@x.com,b", "a;b@x.com", "a@x.com>", "a@x.", "a@x.com\r\nBcc: v@x.com",
     "Ada <a@x.com>", '"a b"@x.com', "a@[127.0.0.1]", "a@host.local"],
)
async def test_addresses_that_are_no_addr_spec_are_refused(ingestion, db, address):
    request = ingestion_pb2.UpsertCustomerRequest(customer=common_pb2.Customer(customer_id="c1", email=address))
    await invalid_at(ingestion.UpsertCustomer, request, "customer.email")
    assert await db.fetchval("SELECT count(*) FROM customers") == 0


@pytest.mark.parametrize("address", ["ada@example.com", "first.last+tag@mail.example.co.uk", "ü@bücher.de"])
async def test_real_addresses_are_accepted_as_sent(ingestion, address):
    request = ingestion_pb2.UpsertCustomerRequest(customer=common_pb2.Customer(customer_id="c1", email=address))
    assert (await ingestion.UpsertCustomer(request)).customer.email == address


@pytest.mark.parametrize("zone", ["localtime", "posixrules", "Factory", "posix/Europe/Berlin", "right/UTC", "Europe/../UTC"])
async def test_time_zones_that_are_not_iana_names_are_refused(segmentation, zone):
    request = seg.CountCustomersRequest(filter=seg.Filter(event=seg.EventCondition(name="A")), time_zone=zone)
    await invalid_at(segmentation.CountCustomers, request, "time_zone")


async def test_canonical_time_zones_are_accepted(segmentation):
    for zone in ("Europe/Berlin", "America/Argentina/Buenos_Aires", "UTC", "Etc/GMT+5"):
        await segmentation.CountCustomers(
            seg.CountCustomersRequest(filter=seg.Filter(event=seg.EventCondition(name="A")), time_zone=zone)
        )


async def test_create_campaign_and_create_segment_follow_aip_155_alike(campaigns, segmentation):
    first = await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=sms_campaign(), campaign_id="c"))
    again = await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=sms_campaign(), campaign_id="c"))
    assert again.campaign == first.campaign
    other = sms_campaign()
    other.display_name = "other"
    error = await refused(campaigns.CreateCampaign, campaigns_pb2.CreateCampaignRequest(campaign=other, campaign_id="c"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await campaigns.GetCampaign(campaigns_pb2.GetCampaignRequest(campaign_id="c"))).campaign == first.campaign

    segment = seg.Segment(display_name="s", filter=seg.Filter(event=seg.EventCondition(name="A")))
    made = await segmentation.CreateSegment(seg.CreateSegmentRequest(segment=segment, segment_id="s"))
    assert (await segmentation.CreateSegment(seg.CreateSegmentRequest(segment=segment, segment_id="s"))).segment == made.segment
    segment.display_name = "other"
    error = await refused(segmentation.CreateSegment, seg.CreateSegmentRequest(segment=segment, segment_id="s"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_state_errors_say_an_archived_campaign(campaigns):
    await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=sms_campaign(), campaign_id="c"))
    await campaigns.ArchiveCampaign(campaigns_pb2.ArchiveCampaignRequest(campaign_id="c"))
    error = await refused(campaigns.ActivateCampaign, campaigns_pb2.ActivateCampaignRequest(campaign_id="c"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "an archived campaign cannot be activated"
    await campaigns.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=sms_campaign(), campaign_id="d"))
    error = await refused(campaigns.PauseCampaign, campaigns_pb2.PauseCampaignRequest(campaign_id="d"))
    assert error.details() == "a draft campaign cannot be paused"


# --- 14. An occurred_at of exactly the epoch is what a broken serialiser sends ------------------------


async def test_an_occurred_at_of_exactly_the_epoch_is_refused(ingestion, db):
    request = customer_event("c1", "A")
    request.occurred_at.CopyFrom(timestamp_pb2.Timestamp())  # what Node's loader makes of a Date
    await invalid_at(ingestion.TrackCustomerEvent, request, "occurred_at")
    system = ingestion_pb2.TrackSystemEventRequest(event_id="s", name="A", occurred_at=timestamp_pb2.Timestamp())
    await invalid_at(ingestion.TrackSystemEvent, system, "occurred_at")
    batch = ingestion_pb2.TrackEventsRequest(events=[ingestion_pb2.TrackEventsItem(customer_event=request)])
    [result] = (await ingestion.TrackEvents(batch)).results
    assert result.HasField("error")
    assert await stored_events(db) == 0
    request.occurred_at.CopyFrom(timestamp_pb2.Timestamp(seconds=1))  # a second later is a time
    await ingestion.TrackCustomerEvent(request)
