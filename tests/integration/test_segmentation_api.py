"""SegmentationService through gRPC: bad filters, hostile input, deadlines, saved segments, paging."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg
import grpc
import pytest
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from google.protobuf import field_mask_pb2

from eventline_shared import values
from tests.support import customer_event, value, violations

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PINNED = values.datetime_to_timestamp(NOW)


def typed(v: Any) -> common_pb2.Value:
    return v if isinstance(v, common_pb2.Value) else value(v)


def event(name: str, *predicates: pb.Predicate, **test: Any) -> pb.Filter:
    return pb.Filter(event=pb.EventCondition(name=name, predicates=predicates, **test))


def pred(code: str, op: int, operand: Any = None, *, ref: str | None = None) -> pb.Predicate:
    p = pb.Predicate(field=code, operator=op)
    if ref is not None:
        p.value.reference = ref
    elif operand is not None:
        p.value.literal.CopyFrom(operand if isinstance(operand, common_pb2.Value) else value(operand))
    return p


def all_of(*children: pb.Filter) -> pb.Filter:
    return pb.Filter(all_of=pb.FilterList(filters=children))


async def seed(
    db: asyncpg.Connection,
    customers: dict[str, dict[str, Any]],
    events: list[tuple[str, str, int, dict[str, Any]]],
) -> None:
    """Customers (id -> profile columns) and events (customer, name, days ago, context)."""
    for cid, profile in customers.items():
        await db.execute(
            "INSERT INTO customers (customer_id, email, attributes) VALUES ($1, $2, $3::jsonb)",
            cid,
            profile.get("email", ""),
            values.encode_values({k: value(v) for k, v in profile.get("attributes", {}).items()}, "a").json,
        )
    for i, (cid, name, days, context) in enumerate(events):
        encoded = values.encode_values({k: typed(v) for k, v in context.items()}, "c")
        assert not encoded.violations
        await db.execute(
            "INSERT INTO customer_events VALUES ($1, $2, $3, $4, $4, $5::jsonb)",
            cid,
            f"e{i}",
            name,
            NOW - dt.timedelta(days=days),
            encoded.json,
        )
    await db.execute(
        """INSERT INTO customer_event_stats SELECT customer_id, name, min(occurred_at), max(occurred_at), count(*)
           FROM customer_events GROUP BY customer_id, name"""
    )


async def count(stub: Any, flt: pb.Filter, **kw: Any) -> int:
    reply = await stub.CountCustomers(pb.CountCustomersRequest(filter=flt, now=PINNED, **kw))
    return int(reply.count)


async def bad(call: Any) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    return violations(caught.value)


def nested(depth: int) -> pb.Filter:
    f = event("A")
    for _ in range(depth - 1):
        f = pb.Filter(negation=f)
    return f


async def test_bad_filters_are_invalid_argument_with_their_paths(segmentation: Any) -> None:
    def req(flt: pb.Filter, **kw: Any) -> Any:
        return segmentation.CountCustomers(pb.CountCustomersRequest(filter=flt, **kw))

    assert "filter" in await bad(req(pb.Filter()))
    assert "filter.all_of.filters" in await bad(req(pb.Filter(all_of=pb.FilterList())))
    assert "filter" in await bad(segmentation.CountCustomers(pb.CountCustomersRequest()))
    found = await bad(req(all_of(event("A"), event("A", pred("x", pb.OPERATOR_UNSPECIFIED, 1)))))
    assert set(found) == {"filter.all_of.filters[1].event.predicates[0].operator"}
    found = await bad(req(event("A", pred("amount", pb.OPERATOR_GREATER, "5"))))
    assert "number or timestamp" in found["filter.event.predicates[0].value.literal"]
    found = await bad(req(event("A", pred("tag", pb.OPERATOR_CONTAINS, 5))))
    assert "string" in found["filter.event.predicates[0].value.literal"]
    found = await bad(
        req(event("A", pred("tag", pb.OPERATOR_STARTS_WITH, ref="$n")), bindings={"n": value(3)})
    )
    assert "bound to $n" in found["filter.event.predicates[0].value.reference"]
    found = await bad(req(event("A", pred("item_id", pb.OPERATOR_EQUALS, ref="$item_id"))))
    assert "not bound" in found["filter.event.predicates[0].value.reference"]
    # Depth: 10 levels are fine, 11 are not; the path names the node too deep.
    await req(nested(10), now=PINNED)
    found = await bad(req(nested(11)))
    assert list(found) == ["filter" + ".negation" * 10]
    too_many = pb.Filter(any_of=pb.FilterList(filters=[all_of(*[event("A")] * 50) for _ in range(5)]))
    assert "filter.any_of.filters[3].all_of.filters[45]" in await bad(req(too_many))
    assert "filter.event.name" in await bad(req(event("")))
    assert "filter.customer.has_address" in await bad(
        req(pb.Filter(customer=pb.CustomerCondition(has_address=pb.CHANNEL_UNSPECIFIED)))
    )
    found = await bad(req(event("A", count=pb.CountTest(between=pb.CountRange(min=3, max=2)))))
    assert "filter.event.count.between.max" in found
    found = await bad(req(event("A", count=pb.CountTest(at_least=-1))))
    assert "filter.event.count.at_least" in found
    found = await bad(req(event("A", days_since_last=pb.DaysSinceTest(days=3))))
    assert "filter.event.days_since_last.comparison" in found
    found = await bad(req(event("A", last_occurred=pb.Period(last=pb.RecentPeriod(amount=3)))))
    assert "filter.event.last_occurred.last.unit" in found
    found = await bad(req(event("A", pred("x", pb.OPERATOR_EXISTS, 1))))
    assert "filter.event.predicates[0].value" in found
    found = await bad(req(event("A", pred("x", pb.OPERATOR_IN, 1))))
    assert {"filter.event.predicates[0].value", "filter.event.predicates[0].values"} <= set(found)
    assert "time_zone" in await bad(req(event("A"), time_zone="Mars/Olympus"))
    assert "time_zone" in await bad(req(event("A"), time_zone="../../etc/passwd"))
    # Every problem is listed at once.
    found = await bad(req(all_of(event("bad name"), event("A", pred("1x", pb.OPERATOR_EXISTS)))))
    assert set(found) == {
        "filter.all_of.filters[0].event.name",
        "filter.all_of.filters[1].event.predicates[0].field",
    }


async def test_hostile_codes_are_refused_and_hostile_values_compare_exactly(
    segmentation: Any, db: asyncpg.Connection
) -> None:
    hostile = [
        "it's",
        "a'; DROP TABLE customers; --",
        "--",
        "é\u0301",
        "😀",
        "back\\slash",
        '"quoted"',
        "%_",
        "x\ny",
    ]
    await seed(
        db,
        {"c1": {}, "c2": {}, "c3": {}},
        [("c1", "A", 1, {"tag": s}) for s in hostile]
        + [("c2", "A", 1, {"tag": "plain"}), ("c3", "A", 1, {"tag": "%"})],
    )
    for code in ["it's", "x; DROP TABLE customers", "a--b", "é", "a b", "x\x00"]:
        found = await bad(
            segmentation.CountCustomers(
                pb.CountCustomersRequest(filter=event("A", pred(code, pb.OPERATOR_EXISTS)))
            )
        )
        assert "filter.event.predicates[0].field" in found
        found = await bad(segmentation.CountCustomers(pb.CountCustomersRequest(filter=event(code))))
        assert "filter.event.name" in found
    for s in hostile:
        for op in (pb.OPERATOR_EQUALS, pb.OPERATOR_CONTAINS, pb.OPERATOR_STARTS_WITH):
            assert await count(segmentation, event("A", pred("tag", op, s))) == 1, (s, op)
        # Through a reference too.
        assert (
            await count(
                segmentation, event("A", pred("tag", pb.OPERATOR_EQUALS, ref="$t")), bindings={"t": value(s)}
            )
            == 1
        )
    # LIKE metacharacters are plain characters.
    assert await count(segmentation, event("A", pred("tag", pb.OPERATOR_STARTS_WITH, "%"))) == 2
    assert await count(segmentation, event("A", pred("tag", pb.OPERATOR_CONTAINS, "_"))) == 1
    found = await bad(
        segmentation.CountCustomers(
            pb.CountCustomersRequest(filter=event("A", pred("tag", pb.OPERATOR_EQUALS, "a\x00b")))
        )
    )
    assert "filter.event.predicates[0].value.literal" in found
    found = await bad(
        segmentation.CountCustomers(
            pb.CountCustomersRequest(
                filter=event("A", pred("tag", pb.OPERATOR_EQUALS, ref="$t")), bindings={"t": value("\x00")}
            )
        )
    )
    assert "NUL" in found["filter.event.predicates[0].value.reference"]
    for cid in ["c1'--", "", "x" * 129]:
        found = await bad(
            segmentation.MatchCustomer(pb.MatchCustomerRequest(filter=event("A"), customer_id=cid))
        )
        assert "customer_id" in found
    listed = await segmentation.ListCustomers(pb.ListCustomersRequest(filter=event("A"), page_size=1))
    assert list(listed.customer_ids) == ["c1"]
    assert "page_token" in await bad(
        segmentation.ListCustomers(
            pb.ListCustomersRequest(filter=event("A"), page_token="'; DROP TABLE x; --")
        )
    )
    # The page token of one filter is refused for another.
    assert "page_token" in await bad(
        segmentation.ListCustomers(
            pb.ListCustomersRequest(filter=event("B"), page_token=listed.next_page_token)
        )
    )
    assert await db.fetchval("SELECT count(*) FROM customers") == 3


async def test_typed_values_never_mix_kinds(segmentation: Any, db: asyncpg.Connection) -> None:
    await seed(
        db,
        {"s": {}, "i": {}, "d": {}, "b": {}, "t": {}, "none": {}},
        [
            ("s", "A", 1, {"v": "5"}),
            ("i", "A", 1, {"v": 5}),
            ("d", "A", 1, {"v": common_pb2.Value(decimal_value="5.000")}),
            ("b", "A", 1, {"v": True}),
            ("t", "A", 1, {"v": NOW}),
            ("none", "A", 1, {}),
        ],
    )

    async def ids(p: pb.Predicate) -> list[str]:
        reply = await segmentation.ListCustomers(pb.ListCustomersRequest(filter=event("A", p), now=PINNED))
        return list(reply.customer_ids)

    assert await ids(pred("v", pb.OPERATOR_EQUALS, 5)) == ["d", "i"]
    assert await ids(pred("v", pb.OPERATOR_EQUALS, "5")) == ["s"]
    assert await ids(pred("v", pb.OPERATOR_NOT_EQUALS, 5)) == ["b", "s", "t"]
    assert await ids(pred("v", pb.OPERATOR_GREATER_OR_EQUAL, common_pb2.Value(decimal_value="4.99"))) == [
        "d",
        "i",
    ]
    assert await ids(pred("v", pb.OPERATOR_LESS, NOW + dt.timedelta(microseconds=1))) == ["t"]
    assert await ids(pred("v", pb.OPERATOR_EQUALS, True)) == ["b"]
    assert await ids(pred("v", pb.OPERATOR_NOT_EXISTS)) == ["none"]
    p = pb.Predicate(
        field="v",
        operator=pb.OPERATOR_IN,
        values=[pb.Operand(literal=value("5")), pb.Operand(literal=value(True))],
    )
    assert await ids(p) == ["b", "s"]
    p.operator = pb.OPERATOR_NOT_IN
    assert await ids(p) == ["d", "i", "t"]


async def test_match_explains_every_node(segmentation: Any, db: asyncpg.Connection) -> None:
    await seed(
        db,
        {"c": {"email": "c@example.com", "attributes": {"tier": "gold"}}},
        [
            ("c", "A", 1, {"item_id": 42}),
            ("c", "A", 3, {"item_id": 42}),
            ("c", "A", 40, {"item_id": 42}),
            ("c", "B", 20, {}),
        ],
    )
    flt = all_of(
        event(
            "A",
            pred("item_id", pb.OPERATOR_EQUALS, ref="$item_id"),
            count=pb.CountTest(
                period=pb.Period(last=pb.RecentPeriod(amount=30, unit=pb.TIME_UNIT_DAY)), at_least=3
            ),
        ),
        event("B", days_since_last=pb.DaysSinceTest(comparison=pb.COMPARISON_GREATER, days=14)),
        pb.Filter(customer=pb.CustomerCondition(attribute=pred("tier", pb.OPERATOR_EQUALS, "gold"))),
    )
    reply = await segmentation.MatchCustomer(
        pb.MatchCustomerRequest(filter=flt, customer_id="c", bindings={"item_id": value(42)}, now=PINNED)
    )
    assert not reply.matched
    root, a, b, tier = reply.nodes
    assert (root.path, root.held) == ("filter", False)
    assert (a.path, a.held, a.count) == ("filter.all_of.filters[0]", False, 2)
    assert a.last_occurred_at.ToDatetime(UTC) == NOW - dt.timedelta(days=1)
    assert a.first_occurred_at.ToDatetime(UTC) == NOW - dt.timedelta(days=40)
    assert a.days_since_last == 1
    assert (b.held, b.count, b.days_since_last) == (True, 1, 20)
    assert tier.held and tier.value.string_value == "gold"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.MatchCustomer(
            pb.MatchCustomerRequest(filter=flt, customer_id="nobody", bindings={"item_id": value(1)})
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_validate_filter_lists_violations_and_references(segmentation: Any) -> None:
    flt = all_of(
        event("A", pred("item_id", pb.OPERATOR_EQUALS, ref="$item_id")),
        event("B", pred("tag", pb.OPERATOR_IN, ref="$tag")),
        event("C", pred("x", pb.OPERATOR_CONTAINS, ref="$item_id")),
    )
    flt.all_of.filters[1].event.predicates[0].ClearField("value")
    flt.all_of.filters[1].event.predicates[0].values.add(reference="$tag")
    reply = await segmentation.ValidateFilter(pb.ValidateFilterRequest(filter=flt))
    assert reply.valid
    assert list(reply.references) == ["item_id", "tag"]
    assert list(reply.unresolved_references) == ["item_id", "tag"]
    reply = await segmentation.ValidateFilter(
        pb.ValidateFilterRequest(filter=flt, bindings={"tag": value("x")})
    )
    assert list(reply.unresolved_references) == ["item_id"]
    reply = await segmentation.ValidateFilter(
        pb.ValidateFilterRequest(filter=all_of(event("A"), pb.Filter()))
    )
    assert not reply.valid
    assert [v.field for v in reply.violations] == ["filter.all_of.filters[1]"]
    reply = await segmentation.ValidateFilter(pb.ValidateFilterRequest())
    assert not reply.valid and reply.violations[0].field == "filter"


async def test_saved_segments_crud_and_size(segmentation: Any, db: asyncpg.Connection) -> None:
    await seed(
        db, {"a": {}, "b": {}, "c": {}}, [("a", "A", 1, {"item_id": 1}), ("b", "A", 2, {"item_id": 2})]
    )
    flt = event("A", pred("item_id", pb.OPERATOR_EQUALS, ref="$item_id"))
    made = await segmentation.CreateSegment(
        pb.CreateSegmentRequest(
            segment=pb.Segment(display_name="Item buyers", filter=flt), segment_id="buyers"
        )
    )
    assert made.segment.segment_id == "buyers" and made.segment.filter == flt
    again = await segmentation.CreateSegment(
        pb.CreateSegmentRequest(
            segment=pb.Segment(display_name="Item buyers", filter=flt), segment_id="buyers"
        )
    )
    assert again.segment == made.segment  # a retry returns the first result
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(display_name="Other", filter=flt), segment_id="buyers")
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    generated = await segmentation.CreateSegment(
        pb.CreateSegmentRequest(segment=pb.Segment(display_name="All A", filter=event("A")))
    )
    assert generated.segment.segment_id
    found = await bad(
        segmentation.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(filter=pb.Filter()), segment_id="a b")
        )
    )
    assert {"segment.display_name", "segment.filter", "segment_id"} <= set(found)

    got = await segmentation.GetSegment(pb.GetSegmentRequest(segment_id="buyers"))
    assert got.segment == made.segment
    size = await segmentation.GetSegmentSize(
        pb.GetSegmentSizeRequest(segment_id="buyers", bindings={"item_id": value(2)})
    )
    assert size.size == 1
    assert "segment.filter.event.predicates[0].value.reference" in await bad(
        segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id="buyers"))
    )
    assert (
        await segmentation.GetSegmentSize(pb.GetSegmentSizeRequest(segment_id=generated.segment.segment_id))
    ).size == 2
    listed = await segmentation.ListCustomers(
        pb.ListCustomersRequest(segment_id="buyers", bindings={"item_id": value(1)})
    )
    assert list(listed.customer_ids) == ["a"]

    updated = await segmentation.UpdateSegment(
        pb.UpdateSegmentRequest(
            segment=pb.Segment(segment_id="buyers", display_name="Renamed", filter=pb.Filter()),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert updated.segment.display_name == "Renamed" and updated.segment.filter == flt
    assert updated.segment.update_time.ToDatetime() >= made.segment.update_time.ToDatetime()
    assert "update_mask.paths[0]" in await bad(
        segmentation.UpdateSegment(
            pb.UpdateSegmentRequest(
                segment=pb.Segment(segment_id="buyers"),
                update_mask=field_mask_pb2.FieldMask(paths=["segment_id"]),
            )
        )
    )

    pages: list[str] = []
    token = ""
    while True:
        page = await segmentation.ListSegments(pb.ListSegmentsRequest(page_size=1, page_token=token))
        pages += [s.segment_id for s in page.segments]
        token = page.next_page_token
        if not token:
            break
    assert pages == sorted(["buyers", generated.segment.segment_id])

    await segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id="buyers"))
    for call in (
        segmentation.GetSegment(pb.GetSegmentRequest(segment_id="buyers")),
        segmentation.DeleteSegment(pb.DeleteSegmentRequest(segment_id="buyers")),
        segmentation.CountCustomers(pb.CountCustomersRequest(segment_id="buyers")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_and_stream_are_paged_in_byte_order_and_resumable(
    segmentation: Any, db: asyncpg.Connection
) -> None:
    ids = ["b", "B", "a", "_x", "a.b", "a-b", "Z", "0", "+1", "a@b"]
    await seed(db, {i: {} for i in ids}, [(i, "A", 1, {}) for i in ids])
    want = sorted(ids, key=str.encode)
    got: list[str] = []
    token = ""
    while True:
        page = await segmentation.ListCustomers(
            pb.ListCustomersRequest(filter=event("A"), page_size=3, page_token=token)
        )
        assert len(page.customer_ids) <= 3
        got += page.customer_ids
        token = page.next_page_token
        if not token:
            break
    assert got == want
    chunks = [
        list(c.customer_ids)
        async for c in segmentation.StreamCustomers(
            pb.StreamCustomersRequest(filter=event("A"), chunk_size=4)
        )
    ]
    assert [len(c) for c in chunks] == [4, 4, 2] and [i for c in chunks for i in c] == want
    resumed = [
        i
        async for c in segmentation.StreamCustomers(
            pb.StreamCustomersRequest(filter=event("A"), after_customer_id=want[4])
        )
        for i in c.customer_ids
    ]
    assert resumed == want[5:]


async def test_deadline_cancels_the_query_in_postgresql(
    segmentation: Any, db: asyncpg.Connection, db_url: str
) -> None:
    await seed(db, {"c": {}}, [("c", "A", 1, {"tag": "x"})])
    flt = event("A", pred("tag", pb.OPERATOR_CONTAINS, "x"), count=pb.CountTest(at_least=2))
    database = db_url.rsplit("/", 1)[1].split("?")[0]
    # While this test holds an exclusive lock, the service's query waits forever
    # unless the deadline cancels it in PostgreSQL.
    async with db.transaction():
        await db.execute("LOCK TABLE customer_events IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await segmentation.CountCustomers(pb.CountCustomersRequest(filter=flt), timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Generous: while the lock is held, an uncancelled query would wait forever.
        deadline = time.monotonic() + 60
        while True:
            waiting = await db.fetchval(
                """SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active'
                   AND query LIKE '%strpos%' AND pid <> pg_backend_pid()""",
                database,
            )
            if waiting == 0:
                break
            assert time.monotonic() < deadline, "the query was never cancelled"
            await asyncio.sleep(0.05)
    assert await count(segmentation, flt) == 0  # the service is fine afterwards


async def test_stats_shortcuts_agree_with_events_written_by_ingestion(
    ingestion: Any, segmentation_server: Any
) -> None:
    """Events tracked out of order through ingestion: the stats-based answers stay exact."""
    from eventline.segmentation.v1 import segmentation_pb2_grpc

    for cid, days in [("x", 20), ("x", 2), ("x", 30), ("y", 16), ("y", 15), ("z", 1)]:
        request = customer_event(cid, "Bought")
        request.occurred_at.FromDatetime(
            (dt.datetime.now(UTC) - dt.timedelta(days=days)).replace(tzinfo=None)
        )
        await ingestion.TrackCustomerEvent(request)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{segmentation_server.port}") as channel:
        stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)

        async def ids(flt: pb.Filter) -> list[str]:
            return list((await stub.ListCustomers(pb.ListCustomersRequest(filter=flt))).customer_ids)

        assert await ids(
            event("Bought", days_since_last=pb.DaysSinceTest(comparison=pb.COMPARISON_GREATER, days=14))
        ) == ["y"]
        assert await ids(event("Bought", count=pb.CountTest(at_least=2))) == ["x", "y"]
        assert await ids(event("Bought", count=pb.CountTest(exactly=1))) == ["z"]
        old = dt.datetime.now(UTC) - dt.timedelta(days=25)
        period = pb.Period(absolute=pb.TimeRange(end=values.datetime_to_timestamp(old)))
        assert await ids(event("Bought", first_occurred=period)) == ["x"]
        assert await ids(
            pb.Filter(
                negation=event(
                    "Bought", last_occurred=pb.Period(last=pb.RecentPeriod(amount=7, unit=pb.TIME_UNIT_DAY))
                )
            )
        ) == ["y"]
