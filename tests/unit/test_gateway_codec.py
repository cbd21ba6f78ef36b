"""The gateway's compiled proto3 JSON codec against ``google.protobuf.json_format`` as the oracle.

Random messages of every type the HTTP API carries, and of a test type with every scalar
kind, map, oneof, optional field and well-known type: each prints to exactly what
``MessageToDict(always_print_fields_with_no_presence=True)`` prints and parses back from it
(JSON names and proto names alike). Random edits of valid JSON (a value swapped for any
other JSON value, a name changed) are either refused with a ``JsonError`` naming a field, or
accepted by ``ParseDict`` too with the same result: the codec never accepts what
``json_format`` refuses, and never reads a document differently.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import (
    any_pb2,
    descriptor,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from eventline_gateway.backends import SERVICES
from eventline_gateway.codec import CODEC, JsonError, timestamp_text
from eventline_gateway.routes import service_bindings

FD = descriptor.FieldDescriptor
FDP = descriptor_pb2.FieldDescriptorProto


def _test_type() -> type[Message]:
    """``eventline.test.codec.Everything``: one field of each kind the mapping knows."""
    file = descriptor_pb2.FileDescriptorProto(
        name="eventline_test_codec.proto", package="eventline.test.codec", syntax="proto3"
    )
    for dependency in (
        timestamp_pb2,
        duration_pb2,
        field_mask_pb2,
        struct_pb2,
        any_pb2,
        empty_pb2,
        wrappers_pb2,
    ):
        file.dependency.append(dependency.DESCRIPTOR.name)
    color = file.enum_type.add(name="Color")
    for number, name in enumerate(("COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN")):
        color.value.add(name=name, number=number)
    message = file.message_type.add(name="Everything")
    scalars = [
        ("i32", FDP.TYPE_INT32), ("i64", FDP.TYPE_INT64), ("u32", FDP.TYPE_UINT32), ("u64", FDP.TYPE_UINT64),
        ("s32", FDP.TYPE_SINT32), ("s64", FDP.TYPE_SINT64), ("f32", FDP.TYPE_FIXED32), ("f64", FDP.TYPE_FIXED64),
        ("sf32", FDP.TYPE_SFIXED32), ("sf64", FDP.TYPE_SFIXED64), ("fl", FDP.TYPE_FLOAT), ("db", FDP.TYPE_DOUBLE),
        ("flag", FDP.TYPE_BOOL), ("text", FDP.TYPE_STRING), ("blob", FDP.TYPE_BYTES),
    ]  # fmt: skip
    number = 0

    def add(name: str, kind: int, type_name: str = "", repeated: bool = False, **extra: Any) -> FDP:
        nonlocal number
        number += 1
        label = FDP.LABEL_REPEATED if repeated else FDP.LABEL_OPTIONAL
        if type_name:
            extra["type_name"] = type_name
        return message.field.add(name=name, number=number, type=kind, label=label, **extra)

    for name, kind in scalars:
        add(name, kind)
        add("many_" + name, kind, repeated=True)
    add("color", FDP.TYPE_ENUM, ".eventline.test.codec.Color")
    add("colors", FDP.TYPE_ENUM, ".eventline.test.codec.Color", repeated=True)
    add("child", FDP.TYPE_MESSAGE, ".eventline.test.codec.Everything")
    add("children", FDP.TYPE_MESSAGE, ".eventline.test.codec.Everything", repeated=True)
    add("renamed_field", FDP.TYPE_STRING, json_name="custom")
    for name, well_known in (
        ("ts", "Timestamp"), ("du", "Duration"), ("mask", "FieldMask"), ("st", "Struct"), ("va", "Value"),
        ("lv", "ListValue"), ("an", "Any"), ("em", "Empty"), ("w_i64", "Int64Value"), ("w_u32", "UInt32Value"),
        ("w_bool", "BoolValue"), ("w_text", "StringValue"), ("w_db", "DoubleValue"), ("w_blob", "BytesValue"),
    ):  # fmt: skip
        add(name, FDP.TYPE_MESSAGE, ".google.protobuf." + well_known)
    add("many_ts", FDP.TYPE_MESSAGE, ".google.protobuf.Timestamp", repeated=True)
    # A oneof, and a proto3 optional (a synthetic oneof of one field).
    message.oneof_decl.add(name="choice")
    add("one_text", FDP.TYPE_STRING, oneof_index=0)
    add("one_child", FDP.TYPE_MESSAGE, ".eventline.test.codec.Everything", oneof_index=0)
    add("one_ts", FDP.TYPE_MESSAGE, ".google.protobuf.Timestamp", oneof_index=0)
    message.oneof_decl.add(name="_maybe")
    add("maybe", FDP.TYPE_INT32, oneof_index=1, proto3_optional=True)
    # Maps: entry types as protoc writes them.
    for name, key_type, value_type, value_type_name in (
        ("by_int", FDP.TYPE_INT64, FDP.TYPE_STRING, ""),
        ("by_flag", FDP.TYPE_BOOL, FDP.TYPE_MESSAGE, ".eventline.test.codec.Everything"),
        ("by_name", FDP.TYPE_STRING, FDP.TYPE_ENUM, ".eventline.test.codec.Color"),
        ("by_u32", FDP.TYPE_UINT32, FDP.TYPE_DOUBLE, ""),
    ):
        entry_name = "".join(part.title() for part in name.split("_")) + "Entry"
        entry = message.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key_type, label=FDP.LABEL_OPTIONAL)
        value = entry.field.add(name="value", number=2, type=value_type, label=FDP.LABEL_OPTIONAL)
        if value_type_name:
            value.type_name = value_type_name
        add(name, FDP.TYPE_MESSAGE, f".eventline.test.codec.Everything.{entry_name}", repeated=True)
    pool = descriptor_pool.Default()
    try:
        found = pool.FindMessageTypeByName("eventline.test.codec.Everything")
    except KeyError:
        pool.Add(file)
        found = pool.FindMessageTypeByName("eventline.test.codec.Everything")
    return message_factory.GetMessageClass(found)


EVERYTHING = _test_type()


def api_types() -> list[descriptor.Descriptor]:
    """The request and reply types of every RPC the gateway transcodes."""
    found: dict[str, descriptor.Descriptor] = {}
    for service in SERVICES.values():
        for binding in service_bindings(service):
            for message_type in (binding.method.input_type, binding.method.output_type):
                found[message_type.full_name] = message_type
    return list(found.values())


# --------------------------------------------------------------------------- random messages

RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1), FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1), FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}  # fmt: skip
names = st.from_regex(r"[a-z]{1,6}(_[a-z]{1,6}){0,2}", fullmatch=True)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
struct_values = st.recursive(
    json_leaves.filter(lambda v: not isinstance(v, int) or isinstance(v, bool) or abs(v) < 2**53),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def scalar_values(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in RANGES:
        return st.integers(*RANGES[kind])
    # NaN as JSON's "NaN" parses: the canonical quiet NaN, whatever the payload it was printed from.
    if kind == FD.TYPE_DOUBLE:
        return st.floats().map(lambda x: math.nan if math.isnan(x) else x)
    if kind == FD.TYPE_FLOAT:
        return st.floats(width=32).map(lambda x: math.nan if math.isnan(x) else x)
    if kind == FD.TYPE_BOOL:
        return st.booleans()
    if kind == FD.TYPE_STRING:
        return st.text(max_size=20)
    if kind == FD.TYPE_BYTES:
        return st.binary(max_size=20)
    if kind == FD.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values]) | st.integers(-5, 50)
    raise AssertionError(field.full_name)


def fill(draw: st.DrawFn, message: Message, depth: int) -> Message:
    """Set a random subset of ``message``'s fields, nested at most ``depth`` deep."""
    message_type = message.DESCRIPTOR
    name = message_type.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds = draw(st.integers(-62135596800, 253402300799))  # type: ignore[attr-defined]
        message.nanos = draw(st.integers(0, 999_999_999) | st.sampled_from([0, 5_000_000, 7_000]))  # type: ignore[attr-defined]
        return message
    if name == "google.protobuf.Duration":
        seconds = draw(st.integers(-315576000000, 315576000000))
        nanos = draw(st.integers(0, 999_999_999))
        message.seconds, message.nanos = seconds, (-nanos if seconds < 0 else nanos)  # type: ignore[attr-defined]
        return message
    if name == "google.protobuf.FieldMask":
        message.paths.extend(draw(st.lists(names, max_size=3)))  # type: ignore[attr-defined]
        return message
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        value = draw(struct_values)
        if name == "google.protobuf.Struct":
            value = draw(st.dictionaries(st.text(max_size=5), struct_values, max_size=3))
        elif name == "google.protobuf.ListValue":
            value = draw(st.lists(struct_values, max_size=3))
        json_format.ParseDict(value, message)
        return message
    if name == "google.protobuf.Any":
        if draw(st.booleans()):
            detail = error_details_pb2.BadRequest()
            for _ in range(draw(st.integers(0, 2))):
                detail.field_violations.add(field=draw(names), description=draw(st.text(max_size=10)))
            message.Pack(detail)  # type: ignore[attr-defined]
        return message
    oneofs_done: set[str] = set()
    for field in message_type.fields:
        if not draw(st.booleans()):
            continue
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in oneofs_done:
                continue
            oneofs_done.add(oneof.name)
        is_message = field.type == FD.TYPE_MESSAGE
        if is_message and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            entries = getattr(message, field.name)
            for key in draw(st.lists(scalar_values(key_field), max_size=3)):
                if value_field.type == FD.TYPE_MESSAGE:
                    if depth > 0:
                        fill(draw, entries[key], depth - 1)
                else:
                    entries[key] = draw(scalar_values(value_field))
        elif field.is_repeated:
            container = getattr(message, field.name)
            if is_message:
                if depth > 0:
                    for _ in range(draw(st.integers(0, 2))):
                        fill(draw, container.add(), depth - 1)
            else:
                container.extend(draw(st.lists(scalar_values(field), max_size=3)))
        elif is_message:
            if depth > 0:
                sub = getattr(message, field.name)
                sub.SetInParent()
                fill(draw, sub, depth - 1)
        else:
            setattr(message, field.name, draw(scalar_values(field)))
    return message


@st.composite
def messages(draw: st.DrawFn, message_class: type[Message], depth: int = 3) -> Message:
    """A new message of ``message_class`` with random fields."""
    return fill(draw, message_class(), depth)


TYPES = [EVERYTHING, *(message_factory.GetMessageClass(t) for t in api_types())]
any_message = st.sampled_from(TYPES).flatmap(messages)


def printed(message: Message, **options: Any) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True, **options)


def same(a: Message, b: Message) -> bool:
    """Equal messages, NaN included (compared as bytes with maps in one order)."""
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def printable(message: Message) -> bool:
    """Whether json_format can print it (a Struct number cannot be NaN or infinite)."""
    try:
        printed(message)
    except (json_format.SerializeToJsonError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- properties


def test_every_transcoded_type_is_covered() -> None:
    covered = {t.DESCRIPTOR.full_name for t in TYPES}
    assert "eventline.ingestion.v1.TrackEventsRequest" in covered
    assert "eventline.campaigns.v1.ListDeliveriesResponse" in covered
    assert len(covered) > 30


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message)
def test_printing_equals_json_format(message: Message) -> None:
    assume(printable(message))
    assert CODEC.to_json(message) == printed(message)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message, st.booleans())
def test_parsing_what_json_format_prints_gives_the_message_back(message: Message, proto_names: bool) -> None:
    assume(printable(message))
    document = printed(message, preserving_proto_field_name=proto_names)
    parsed = type(message)()
    CODEC.parse(document, parsed)
    assert same(parsed, message)


def edit(document: Any, path: list[Any], replacement: Any) -> Any:
    """``document`` with the value at ``path`` replaced (keys and indexes, wrapping at the ends)."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return replacement
    step, rest = path[0], path[1:]
    if isinstance(document, dict):
        key = list(document)[step % len(document)]
        return {**document, key: edit(document[key], rest, replacement)}
    index = step % len(document)
    return [*document[:index], edit(document[index], rest, replacement), *document[index + 1 :]]


def rename(document: Any, path: list[Any], new_name: str) -> Any:
    """``document`` with the key at ``path`` renamed."""
    if not isinstance(document, (dict, list)) or not document:
        return document
    if isinstance(document, list):
        index = path[0] % len(document) if path else 0
        return [*document[:index], rename(document[index], path[1:], new_name), *document[index + 1 :]]
    key = list(document)[(path[0] if path else 0) % len(document)]
    if len(path) <= 1:
        return {(new_name if k == key else k): v for k, v in document.items()}
    return {**document, key: rename(document[key], path[1:], new_name)}


edits = st.one_of(
    json_leaves,
    st.sampled_from(["NaN", "Infinity", "-1", "1e3", "1.5", "2024-01-15T09:30:00Z", "2024-02-30T00:00:00Z",
                     "2024-01-15T09:30:00.123456789+05:30", "COLOR_RED", "true", "AAEC", "1s", "a,b"]),
    st.lists(json_leaves, max_size=3),
    st.dictionaries(st.text(max_size=5), json_leaves, max_size=2),
)  # fmt: skip


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message, st.lists(st.integers(0, 50), max_size=5), edits, st.booleans(), names)
def test_edited_documents_are_refused_with_a_field_or_read_as_json_format_reads_them(
    message: Message, path: list[int], replacement: Any, renaming: bool, new_name: str
) -> None:
    assume(printable(message))
    document = printed(message)
    document = rename(document, path, new_name) if renaming else edit(document, path, replacement)
    ours = type(message)()
    try:
        CODEC.parse(document, ours)
    except JsonError as error:
        assert error.description
        return
    theirs = type(message)()
    try:
        json_format.ParseDict(document, theirs)
    except json_format.ParseError as exc:
        # The one refusal of json_format's that is its own bug: a 32-bit float it printed at
        # the type's largest magnitude (3.4028235e+38) does not parse back.
        if "Float value too" not in str(exc):  # pragma: no cover - a failure shows the case
            pytest.fail(f"the codec accepted what json_format refuses: {exc}")
        return
    assert same(ours, theirs)


# --------------------------------------------------------------------------- examples


def test_errors_name_the_field_by_its_path() -> None:
    from eventline.ingestion.v1 import ingestion_pb2

    cases = {
        "events[1].customer_event.occurred_at": {
            "events": [{}, {"customerEvent": {"occurredAt": "yesterday"}}]
        },
        'events[0].customer_event.context["total"].integer_value': {
            "events": [{"customerEvent": {"context": {"total": {"integerValue": "12.5"}}}}]
        },
        "events[0].customer_event.nme": {"events": [{"customerEvent": {"nme": "x"}}]},
        "events[0].system_event": {"events": [{"customerEvent": {}, "systemEvent": {}}]},
        "events": {"events": {"not": "a list"}},
        "events[0].customer_event.event_id": {
            "events": [{"customerEvent": {"eventId": "a", "event_id": "b"}}]
        },
    }
    for field, document in cases.items():
        with pytest.raises(JsonError) as error:
            CODEC.parse(document, ingestion_pb2.TrackEventsRequest())
        assert error.value.field == field, error.value


def test_nesting_past_the_limit_is_refused() -> None:
    document: dict[str, Any] = {}
    for _ in range(150):
        document = {"child": document}
    with pytest.raises(JsonError, match="deeper than 100"):
        CODEC.parse(document, EVERYTHING())


@given(st.integers(-62135596800, 253402300799), st.integers(0, 999_999_999))
def test_timestamps_print_as_json_format_prints_them(seconds: int, nanos: int) -> None:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert timestamp_text(stamp) == stamp.ToJsonString()


def test_special_floats_and_large_integers() -> None:
    parsed = EVERYTHING()
    CODEC.parse({"db": "NaN", "fl": "-Infinity", "u64": "18446744073709551615", "i64": -(2**63)}, parsed)
    assert math.isnan(parsed.db) and parsed.fl == -math.inf  # type: ignore[attr-defined]
    assert parsed.u64 == 2**64 - 1 and parsed.i64 == -(2**63)  # type: ignore[attr-defined]
    CODEC.parse({"fl": 3.4028235e38}, parsed)  # the largest float32, as json_format prints it
    assert parsed.fl == 3.4028234663852886e38  # type: ignore[attr-defined]
    for bad in (
        {"u32": -1},
        {"i32": 2**31},
        {"fl": 1e39},
        {"db": float("inf")},
        {"flag": "true"},
        {"i64": True},
    ):
        with pytest.raises(JsonError):
            CODEC.parse(bad, EVERYTHING())
