"""What the fuzz tests of every service share (scenario 16): the clean refusals, one call that
answers or refuses cleanly, and the create -> get -> update round in which a refused write
must leave the service's table as it was; and the hostile values, filters and paging that every
service's requests are built from (the filter language is segmentation's; campaigns reuse it in
audiences and trigger predicates)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from google.protobuf import field_mask_pb2, timestamp_pb2
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

CLEAN = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND}
"""The refusals a request may get whatever it holds; anything else (INTERNAL, UNKNOWN) is a bug."""

fuzzed = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
"""Hypothesis settings of the fuzz tests: no deadline (real servers), fixtures shared by examples."""


def differential_examples(examples: int) -> settings:
    """Hypothesis settings of the differential tests against real services: no deadline, one
    database and server shared by the examples, and large or slow examples allowed."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


Rows = Callable[[], Awaitable[Any]]

# --------------------------------------------------------------------------- strategies

HOSTILE = [
    "item-id",
    "",
    "x\x00",
    "a'b",
    'a"b',
    "a -- b",
    "a" * 300,
    "ünïcödé",
    "$.x",
    "_",
    "\n",
    "A",
    "price",
]
codes = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
enum_numbers = st.integers(-3, 20)
int64s = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 400))
timestamps = st.builds(
    timestamp_pb2.Timestamp,
    seconds=st.one_of(st.integers(-(2**40), 2**40), st.integers(-62135596800, 253402300799)),
    nanos=st.one_of(st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)),
)
decimals = st.one_of(
    st.sampled_from(["NaN", "inf", "-Infinity", "1e999999", "1" * 200, "0.5", "", "1.2.3", "\x00"]),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.text(max_size=20),
)
values = st.one_of(
    st.builds(common_pb2.Value, string_value=st.text(max_size=50)),
    st.builds(common_pb2.Value, integer_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(common_pb2.Value, decimal_value=decimals),
    st.builds(common_pb2.Value, boolean_value=st.booleans()),
    st.builds(common_pb2.Value, timestamp_value=timestamps),
    st.just(common_pb2.Value()),
)
references = st.one_of(st.sampled_from(["$x", "$", "$$", "$item-id", "x", "$\x00"]), st.text(max_size=20))
operands = st.one_of(
    st.builds(pb.Operand, literal=values),
    st.builds(pb.Operand, reference=references),
    st.just(pb.Operand()),
)
predicates = st.builds(
    pb.Predicate,
    field=codes,
    operator=enum_numbers,
    value=st.one_of(st.none(), operands),
    values=st.lists(operands, max_size=4),
)
periods = st.one_of(
    st.just(pb.Period()),
    st.builds(pb.Period, absolute=st.builds(pb.TimeRange, start=timestamps, end=timestamps)),
    st.builds(pb.Period, last=st.builds(pb.RecentPeriod, amount=int64s, unit=enum_numbers)),
    st.builds(pb.Period, days_ago=st.builds(pb.DaysAgoPeriod, min_days_ago=int64s, max_days_ago=int64s)),
)
count_tests = st.one_of(
    st.builds(pb.CountTest, period=periods, at_least=int64s),
    st.builds(pb.CountTest, period=periods, at_most=int64s),
    st.builds(pb.CountTest, period=periods, exactly=int64s),
    st.builds(pb.CountTest, period=periods, between=st.builds(pb.CountRange, min=int64s, max=int64s)),
    st.builds(pb.CountTest),
)
event_conditions = st.one_of(
    st.builds(pb.EventCondition, name=codes, predicates=st.lists(predicates, max_size=3)),
    st.builds(pb.EventCondition, name=codes, predicates=st.lists(predicates, max_size=2), count=count_tests),
    st.builds(pb.EventCondition, name=codes, last_occurred=periods),
    st.builds(pb.EventCondition, name=codes, first_occurred=periods),
    st.builds(
        pb.EventCondition,
        name=codes,
        days_since_last=st.builds(pb.DaysSinceTest, comparison=enum_numbers, days=int64s),
    ),
)
customer_conditions = st.one_of(
    st.builds(pb.CustomerCondition, has_address=enum_numbers),
    st.builds(pb.CustomerCondition, consent_granted=enum_numbers),
    st.builds(pb.CustomerCondition, attribute=predicates),
    st.just(pb.CustomerCondition()),
)
leaves = st.one_of(
    st.builds(pb.Filter, event=event_conditions),
    st.builds(pb.Filter, customer=customer_conditions),
    st.just(pb.Filter()),
)


def _deep(depth: int) -> pb.Filter:
    node = pb.Filter(event=pb.EventCondition(name="x"))
    for _ in range(depth):
        node = pb.Filter(negation=node)
    return node


filters = st.one_of(
    st.recursive(
        leaves,
        lambda children: st.one_of(
            st.builds(pb.Filter, all_of=st.builds(pb.FilterList, filters=st.lists(children, max_size=4))),
            st.builds(pb.Filter, any_of=st.builds(pb.FilterList, filters=st.lists(children, max_size=4))),
            st.builds(pb.Filter, negation=children),
        ),
        max_leaves=12,
    ),
    st.integers(20, 90).map(_deep),
    st.integers(100, 600).map(
        lambda n: pb.Filter(any_of=pb.FilterList(filters=[pb.Filter(event=pb.EventCondition(name="e"))] * n))
    ),
)
bindings = st.dictionaries(st.one_of(references, codes), values, max_size=4)
page_tokens = st.one_of(
    st.sampled_from(["", "garbage", "eyJ4IjoxfQ==", "\x00", "a" * 2000]), st.text(max_size=30)
)
page_sizes = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 1001))


plausible_predicates = st.builds(
    pb.Predicate,
    field=st.sampled_from(["price", "item_id", "plan"]),
    operator=st.integers(1, 12),
    value=st.one_of(st.none(), operands),
    values=st.lists(operands, max_size=3),
)
plausible_filters = st.builds(
    pb.Filter,
    event=st.builds(
        pb.EventCondition,
        name=st.sampled_from(["Viewed", "Purchased"]),
        predicates=st.lists(plausible_predicates, max_size=2),
    ),
)

# --------------------------------------------------------------------------- calls


async def answer_or_refuse(call, message, allowed=CLEAN):  # type: ignore[no-untyped-def]
    """The reply of ``call(message)``, or None when it was refused with one of ``allowed``."""
    try:
        return await call(message)
    except grpc.aio.AioRpcError as error:
        assert error.code() in allowed, (call, error.code(), error.details(), message)
        return None


async def all_or_nothing(call, message, rows: Rows, allowed):  # type: ignore[no-untyped-def]
    """``answer_or_refuse`` for a write: when refused, ``rows()`` reads as before the call."""
    before = await rows()
    reply = await answer_or_refuse(call, message, allowed)
    if reply is None:
        assert await rows() == before
    return reply


async def create_get_update(
    stub, module, resource: str, message, requested_id: str, update, mask, rows, allowed
):  # type: ignore[no-untyped-def]
    """Create a fuzzed ``resource`` (``"Segment"``, ``"Campaign"``: the AIP names its RPCs and
    fields), get it, update it with ``update`` under ``mask``; each refused write leaves ``rows()``
    as it was. Returns its id: the created one, else ``requested_id`` (then the calls that
    follow aim at a resource that may not exist)."""
    noun = resource.lower()
    created = await all_or_nothing(
        getattr(stub, f"Create{resource}"),
        getattr(module, f"Create{resource}Request")(**{noun: message, f"{noun}_id": requested_id}),
        rows,
        allowed,
    )
    event("created" if created is not None else "create refused")
    target = getattr(getattr(created, noun), f"{noun}_id") if created is not None else requested_id
    await answer_or_refuse(
        getattr(stub, f"Get{resource}"), getattr(module, f"Get{resource}Request")(**{f"{noun}_id": target})
    )
    setattr(update, f"{noun}_id", target)
    updated = await all_or_nothing(
        getattr(stub, f"Update{resource}"),
        getattr(module, f"Update{resource}Request")(
            **{noun: update, "update_mask": field_mask_pb2.FieldMask(paths=mask)}
        ),
        rows,
        allowed,
    )
    event("updated" if updated is not None else "update refused")
    return target
