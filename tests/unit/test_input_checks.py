"""The shared input checks and the paging helper, by property: errors stay small, checks never raise,
tokens cannot be edited, pages respect their bounds."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal

import pytest
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2
from eventline.segmentation.v1 import segmentation_pb2
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_status import rpc_status
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from eventline_ingestion import validation
from eventline_ingestion.stored_form import received_at_field, stored_event_bytes
from eventline_shared import paging, values
from eventline_shared.errors import FieldViolation, InvalidArgument, quote
from eventline_shared.paging import MAX_REPLY_BYTES, PageTokens

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TRAILERS_LIMIT = 8 * 1024
"""What gRPC clients accept of trailers by default (the soft limit of grpc core)."""


def stored_event(event: validation.NewEvent, received_at: timestamp_pb2.Timestamp) -> common_pb2.Event:
    """The event exactly as the storing statement stores and publishes it (its stream payload)."""
    return common_pb2.Event.FromString(
        stored_event_bytes(
            event,
            event.event_id.encode(),
            event.customer_id.encode(),
            event.name.encode(),
            received_at_field(received_at),
        )
    )


def trailer_bytes(error: InvalidArgument) -> int:
    """The size of the trailers carrying ``error`` as HPACK counts them (name + value + 32 each)."""
    status = rpc_status.to_status(error.to_status())
    metadata = [("grpc-status", "3"), ("grpc-message", status.details), *status.trailing_metadata]
    total = 0
    for name, value in metadata:
        raw = value if isinstance(value, bytes) else value.encode()
        if name.endswith("-bin"):
            raw = base64.b64encode(raw)
        elif name == "grpc-message":  # percent-encoded outside printable ASCII
            raw = b"".join(bytes([c]) if 0x20 <= c < 0x7F and c != 0x25 else b"%XX" for c in raw)
        total += len(name) + len(raw) + 32
    return total


texts = st.text(st.characters(codec="utf-8"), max_size=10_000)


@given(texts)
def test_quote_is_short_whatever_the_value(value: str) -> None:
    quoted = quote(value)
    assert len(quoted) <= 2 + 4 * 40 + 40  # the repr of 40 characters, and the length
    if len(value) <= 40:
        assert quoted == repr(value)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=300))
def test_every_bad_request_fits_the_trailers_a_client_accepts(pairs: list[tuple[str, str]]) -> None:
    error = InvalidArgument([FieldViolation(field, description) for field, description in pairs])
    assert trailer_bytes(error) < TRAILERS_LIMIT * 3 // 4
    assert error.violations[0].field[:20] in error.message or len(error.violations[0].field) > 150


seconds = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-62135596800 - 10, -62135596800 + 10),
    st.integers(253402300799 - 10, 253402300799 + 10),
    st.integers(-(10**12), 10**12),
)
nanos = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-5, 5), st.integers(10**9 - 5, 10**9 + 5))


@given(seconds, nanos)
def test_the_timestamp_check_never_raises_and_passes_only_what_converts(s: int, n: int) -> None:
    ts = timestamp_pb2.Timestamp(seconds=s, nanos=n)
    bad = values.check_timestamp(ts, "t")
    valid = -62135596800 <= s <= 253402300799 and 0 <= n < 10**9
    assert (bad is None) == valid
    if bad is None:
        assert values.timestamp_to_datetime(ts).year in range(1, 10_000)
        assert ts.ToJsonString()
    else:
        assert bad.field == "t"
    bounded = values.check_timestamp(
        ts, "t", earliest=EPOCH, latest=dt.datetime(9000, 1, 1, tzinfo=dt.UTC), bounds="in range"
    )
    assert (bounded is None) == (valid and 0 <= s < 221845392000)


@given(seconds, nanos)
def test_the_duration_check_follows_duration_proto(s: int, n: int) -> None:
    duration = duration_pb2.Duration(seconds=s, nanos=n)
    bad = values.check_duration(
        duration, "d", minimum=dt.timedelta(seconds=1), maximum=dt.timedelta(days=366)
    )
    valid = (
        abs(s) <= 315_576_000_000
        and abs(n) < 10**9
        and not (s < 0 < n or n < 0 < s)
        and 1 <= s + n / 10**9 <= 366 * 86400
    )
    assert (bad is None) == valid, (s, n, bad)
    if bad is None:
        assert duration.ToTimedelta() >= dt.timedelta(seconds=1)


def test_negative_nanos_are_refused_even_when_the_total_is_in_range() -> None:
    bad = values.check_duration(
        duration_pb2.Duration(seconds=60, nanos=-5),
        "period",
        minimum=dt.timedelta(seconds=1),
        maximum=dt.timedelta(days=1),
    )
    assert bad is not None and "opposite signs" in bad.description


def _context(**entries: str) -> values.Encoded:
    return values.encode_values({k: common_pb2.Value(string_value=v) for k, v in entries.items()}, "context")


def test_the_context_measure_is_the_documented_one_at_the_boundary() -> None:
    exactly = {chr(ord("a") + i): "x" * 4095 for i in range(8)}
    assert sum(len(k) + len(v) for k, v in exactly.items()) == 32768
    assert _context(**exactly).violations == []
    exactly["h"] += "y"  # one byte more
    [violation] = _context(**exactly).violations
    assert violation.field == "context" and "got 32769" in violation.description
    quotes = {f"q{i}": '"' * 4000 for i in range(5)}  # 20,010 bytes; 40,020 as JSON
    assert _context(**quotes).violations == []
    wide = {"a": "é" * 4096, "b": "é" * 4096, "c": "é" * 4096, "d": "é" * 4094}  # 2 bytes each
    assert sum(len(k) + len(v.encode()) for k, v in wide.items()) == 32768
    assert _context(**wide).violations == []


@given(st.text(st.characters(categories=["Nd"]), min_size=1, max_size=5))
def test_decimals_take_ascii_digits_only(digits: str) -> None:
    encoded = values.encode_values({"d": common_pb2.Value(decimal_value=digits)}, "context")
    assert (encoded.violations == []) == digits.isascii()


@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: abs(d.adjusted()) <= 60)
)
def test_ascii_decimals_in_any_notation_are_accepted(number) -> None:  # type: ignore[no-untyped-def]
    text = str(number)
    if len(number.as_tuple().digits) > 38:
        return
    assert values.encode_values({"d": common_pb2.Value(decimal_value=text)}, "context").violations == []


@given(
    st.from_regex(r"-?[0-9]{1,45}\.[0-9]{0,45}|[+-]?[0-9]{0,3}\.?[0-9]{1,40}(e-?[0-9]{1,2})?", fullmatch=True)
)
def test_decimals_as_sent_are_stored_as_decimal_would_write_them(text: str) -> None:
    # The shortcut for text already in plain notation agrees with the general rule.
    encoded = values.encode_values({"d": common_pb2.Value(decimal_value=text)}, "context")
    number = Decimal(text)
    if len(number.as_tuple().digits) > 38 or abs(number.adjusted()) > 64:
        assert encoded.violations
        return
    plain = format(number, "f")
    assert encoded.json == '{"d": ' + (plain if "." in plain else plain + ".0") + "}"


@pytest.mark.parametrize(
    "digits", ["\u0661\u0662\u0663", "\uff11\uff12\uff13", "1\u06623", "12.\u0665", "1e\u0662"]
)
def test_decimals_in_other_scripts_are_refused(digits: str) -> None:
    encoded = values.encode_values({"d": common_pb2.Value(decimal_value=digits)}, "context")
    assert [v.field for v in encoded.violations] == ['context["d"]']


# --- paging ------------------------------------------------------------------------------------------

tokens = PageTokens(b"k" * 32)
keys = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=130),
    st.integers(-(2**63), 2**63 - 1),
    st.datetimes(timezones=st.just(dt.UTC)),
)


def _kind(key: object) -> type:
    return dt.datetime if isinstance(key, dt.datetime) else type(key)


@given(st.lists(keys, max_size=3), st.text(max_size=20))
def test_a_token_reads_back_as_issued(position: list[object], bound_to: str) -> None:
    token = tokens.issue("ListX", bound_to, position)  # type: ignore[arg-type]
    assert token.isascii() and len(token) < 2000
    assert list(tokens.read(token, "ListX", bound_to, [_kind(k) for k in position])) == position


@settings(max_examples=300)
@given(st.lists(keys, min_size=1, max_size=3), st.data())
def test_an_edited_token_is_invalid_argument_on_page_token(
    position: list[object], data: st.DataObject
) -> None:
    kinds = [_kind(k) for k in position]
    token = tokens.issue("ListX", "b", position)  # type: ignore[arg-type]
    at = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters(codec="utf-8"))
    edited = token[:at] + replacement + token[at + 1 :]
    if edited == token:
        return
    with pytest.raises(InvalidArgument) as caught:
        tokens.read(edited, "ListX", "b", kinds)
    assert [v.field for v in caught.value.violations] == ["page_token"]


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (["ListX", "b", ["t253402300800000000"]], dt.datetime),  # one past year 9999
        (["ListX", "b", ["t-62135596800000001"]], dt.datetime),  # before year 1
        (["ListX", "b", ["s\x00"]], str),
        (["ListX", "b", ["i" + "9" * 30]], int),
        (["ListX", "b", ["s1"]], int),
        (["ListX", "b", [{"now": "0001-01-01T00:00:00"}]], dt.datetime),
        (["ListX", "b", []], str),
        ("not a list", str),
    ],
)
def test_even_a_signed_token_with_a_bad_position_is_refused(payload: object, kind: type) -> None:
    raw = json.dumps(payload).encode()
    token = f"{paging._b64(raw)}.{paging._b64(tokens._sign(raw))}"
    with pytest.raises(InvalidArgument):
        tokens.read(token, "ListX", "b", [kind])


def test_a_token_of_another_rpc_request_or_key_is_refused() -> None:
    token = tokens.issue("ListX", "b", ["a"])
    for rpc, bound_to, reader in (
        ("ListY", "b", tokens),
        ("ListX", "c", tokens),
        ("ListX", "b", PageTokens(b"o" * 32)),
    ):
        with pytest.raises(InvalidArgument):
            reader.read(token, rpc, bound_to, [str])


def test_a_naive_datetime_cannot_be_put_in_a_token() -> None:
    with pytest.raises(TypeError):
        tokens.issue("ListX", "b", [dt.datetime(2026, 1, 1)])


@given(st.lists(st.integers(1, 2_000_000), max_size=50), st.integers(1, 60), st.integers(1, 5_000_000))
def test_a_page_holds_at_most_its_size_and_bytes_and_at_least_one_item(
    sizes: list[int], size: int, budget: int
) -> None:
    page = paging.fill(sizes, size, lambda n: n, budget)
    assert len(page) <= size and page == sizes[: len(page)]
    if sizes:
        assert len(page) >= 1
        assert len(page) == 1 or sum(page) <= budget
        if len(page) < min(size, len(sizes)):
            assert sum(sizes[: len(page) + 1]) > budget


def test_field_bytes_is_the_encoded_size() -> None:
    for n in (0, 1, 127, 128, 16_383, 16_384, 3_000_000):
        message = segmentation_pb2.StreamCustomersResponse(customer_ids=["x" * n])  # a repeated string
        assert paging.field_bytes(n) == paging.string_bytes("x" * n) == message.ByteSize()


# --- the TrackEvents reply bound ----------------------------------------------------------------------

values_strategy = st.one_of(
    st.builds(common_pb2.Value, string_value=st.text(max_size=50)),
    st.builds(common_pb2.Value, integer_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(common_pb2.Value, decimal_value=st.sampled_from(["1e64", "-1e-60", "12.50", "3", ".5e3"])),
    st.builds(
        common_pb2.Value,
        timestamp_value=st.builds(
            timestamp_pb2.Timestamp, seconds=st.integers(0, 253402300799), nanos=st.integers(0, 10**9 - 1)
        ),
    ),
)
event_ids = st.sampled_from(["e1", "e2", "e3", "a-much-longer-event-id"])
customer_events = st.builds(
    ingestion_pb2.TrackCustomerEventRequest,
    event_id=event_ids,
    customer_id=st.sampled_from(["c1", "c2"]),
    name=st.sampled_from(["A", "Bought", "bad-name"]),
    context=st.dictionaries(st.sampled_from(["a", "b", "c", "bad-code"]), values_strategy, max_size=4),
)


def system_items(
    values: st.SearchStrategy[common_pb2.Value],
) -> st.SearchStrategy[ingestion_pb2.TrackEventsItem]:
    return st.builds(
        ingestion_pb2.TrackEventsItem,
        system_event=st.builds(
            ingestion_pb2.TrackSystemEventRequest,
            event_id=event_ids,
            name=st.just("S"),
            context=st.dictionaries(st.sampled_from(["a", "b"]), values, max_size=3),
        ),
    )


items = st.one_of(
    st.builds(ingestion_pb2.TrackEventsItem, customer_event=customer_events),
    system_items(values_strategy),
    st.just(ingestion_pb2.TrackEventsItem()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(items, min_size=1, max_size=12))
def test_the_batch_reply_bound_is_never_below_the_reply(batch: list[ingestion_pb2.TrackEventsItem]) -> None:
    """What the servicer answers (first event of each id, output fields at their largest) fits the bound."""
    request = ingestion_pb2.TrackEventsRequest(events=batch)
    arrival = validation.Arrival.now_under("")
    checked = [validation.batch_item(item, i, arrival) for i, item in enumerate(batch)]
    errors = {
        i: ingestion_pb2.TrackEventsResult(error=InvalidArgument(c).to_status())
        for i, c in enumerate(checked)
        if not isinstance(c, validation.NewEvent)
    }
    bound = validation.reply_bytes(request, checked, {i: paging.message_bytes(e) for i, e in errors.items()})
    latest = timestamp_pb2.Timestamp(seconds=253402300799, nanos=999_999_999)
    first: dict[tuple[str, str], common_pb2.Event] = {}
    results = []
    for i, c in enumerate(checked):
        if isinstance(c, validation.NewEvent):
            event = first.setdefault(c.key, stored_event(c, latest))
            results.append(ingestion_pb2.TrackEventsResult(event=event, deduplicated=True))
        else:
            results.append(errors[i])
    assert ingestion_pb2.TrackEventsResponse(results=results).ByteSize() <= bound
    assert bound < MAX_REPLY_BYTES


# --- the stored event's serialized form -----------------------------------------------------------

long_values = st.one_of(
    values_strategy,
    # Lengths of 128 bytes and more take varints of several bytes.
    st.builds(
        common_pb2.Value, string_value=st.text(min_size=100, max_size=4096).filter(lambda s: "\x00" not in s)
    ),
    # Every kind's edges as written by hand (values.encode_values' map_field): false and zero are
    # still written (a oneof's member has presence), negative numbers take ten bytes.
    st.builds(common_pb2.Value, boolean_value=st.booleans()),
    st.builds(common_pb2.Value, integer_value=st.sampled_from([0, -1, 127, 128, -(2**63), 2**63 - 1])),
    st.builds(
        common_pb2.Value, decimal_value=st.sampled_from(["0.0", "-0.5", "1e3", "007.10", "1" * 37 + ".5"])
    ),
    st.builds(
        common_pb2.Value,
        timestamp_value=st.builds(
            timestamp_pb2.Timestamp,
            seconds=st.integers(-62135596800, 253402300799) | st.just(0),
            nanos=st.integers(0, 10**9 - 1) | st.sampled_from([0, 999, 1000]),
        ),
    ),
)
stored_items = st.one_of(
    st.builds(
        ingestion_pb2.TrackEventsItem,
        customer_event=st.builds(
            ingestion_pb2.TrackCustomerEventRequest,
            event_id=st.from_regex(r"[A-Za-z0-9_.:\-]{1,128}", fullmatch=True),
            customer_id=st.from_regex(r"[A-Za-z0-9_.:@+\-]{1,128}", fullmatch=True),
            name=st.sampled_from(["A", "Bought", "x" * 64]),
            occurred_at=st.one_of(
                st.none(),
                st.builds(
                    timestamp_pb2.Timestamp,
                    seconds=st.integers(1, 1_700_000_000),
                    nanos=st.integers(0, 10**9 - 1),
                ),
            ),
            context=st.dictionaries(st.sampled_from(["a", "amount", "c" * 64]), long_values, max_size=4),
        ),
    ),
    system_items(long_values),
)


@settings(max_examples=300, deadline=None)
@given(stored_items, st.integers(0, 253402300799), st.integers(0, 999_999))
def test_the_stored_event_written_by_hand_is_the_message_the_protobuf_api_builds(
    item: ingestion_pb2.TrackEventsItem, seconds: int, micros: int
) -> None:
    """``stored_event`` parses the bytes the storing statement writes (the stream entry's payload);
    they must be the event as stored: the item with its normalized values, kind and times."""
    arrival = validation.Arrival.now_under("")
    event = validation.batch_item(item, 0, arrival)
    assume(isinstance(event, validation.NewEvent))  # a string with NUL in it is refused
    assert isinstance(event, validation.NewEvent)
    received_at = timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)
    sent = getattr(item, item.WhichOneof("event"))
    occurred_at = timestamp_pb2.Timestamp(
        seconds=arrival.now_us // 10**6, nanos=arrival.now_us % 10**6 * 1000
    )
    if sent.HasField("occurred_at"):  # stored cut to microseconds
        occurred_at = timestamp_pb2.Timestamp(
            seconds=sent.occurred_at.seconds, nanos=sent.occurred_at.nanos // 1000 * 1000
        )
    fields = ("event_id", "kind", "customer_id", "name", "context")
    expected = common_pb2.Event(
        **{field: getattr(event, field) for field in fields}, occurred_at=occurred_at, received_at=received_at
    )
    for code, value in event.normalized.items():
        expected.context[code].CopyFrom(value)
    assert stored_event(event, received_at) == expected
