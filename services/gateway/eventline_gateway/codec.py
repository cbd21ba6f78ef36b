"""proto3 JSON for the gateway: the mapping ``google.protobuf.json_format`` implements, compiled.

``json_format`` walks every field of every message through generic code on each call. Here
each message type gets a parser and a printer written for it once, from its descriptor (Python
source generated and compiled at first use), that read and set its fields one by one. On a
500-event TrackEvents batch, counted with callgrind (instructions do not depend on the load of
the machine): ``json.loads`` + ``ParseDict`` 347,000 instructions per event, ``orjson.loads`` +
this parser 67,000; ``MessageToDict`` + ``json.dumps`` 242,000, this printer + ``orjson.dumps``
57,000. The property tests (``tests/unit/test_gateway_codec.py``) hold it to ``json_format`` as
the oracle: every message prints to what ``MessageToDict`` prints (with
``always_print_fields_with_no_presence``), and whatever JSON this parser accepts, ``ParseDict``
accepts and builds the same message from.

Deliberate differences: refusals of what ``json_format`` lets through (a field given
twice, by its JSON and its proto name; numbers spelled in ways JSON does not spell them,
``"1_000"``, ``"١٢"``); a 32-bit float printed at its largest value (``3.4028235e+38``)
parses back, where ``json_format`` refuses its own output. And one gain: an error names the
offending field by its path, the way the services do
(``events[3].customer_event.context["total"]``).

The well-known types other than Timestamp and the wrappers (Duration, FieldMask, Struct,
Value, ListValue, Any, Empty) are rare in this API and delegated to ``json_format``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import keyword
import math
import re
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor, json_format
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

MAX_DEPTH = 100
"""Messages nested deeper than this are refused, as ``json_format`` (and protobuf) do."""

_FD = descriptor.FieldDescriptor
_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**32 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)
_INT_RANGES = {
    _FD.TYPE_INT32: _INT32,
    _FD.TYPE_SINT32: _INT32,
    _FD.TYPE_SFIXED32: _INT32,
    _FD.TYPE_UINT32: _UINT32,
    _FD.TYPE_FIXED32: _UINT32,
    _FD.TYPE_INT64: _INT64,
    _FD.TYPE_SINT64: _INT64,
    _FD.TYPE_SFIXED64: _INT64,
    _FD.TYPE_UINT64: _UINT64,
    _FD.TYPE_FIXED64: _UINT64,
}
_INT64_TYPES = {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64}
_FLOAT32 = struct.Struct("<f")
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))"
)
_TIMESTAMP_MIN = -62135596800
_TIMESTAMP_MAX = 253402300799
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

TIMESTAMP = "google.protobuf.Timestamp"
WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
SCALAR_JSON = {TIMESTAMP, "google.protobuf.Duration", "google.protobuf.FieldMask", *WRAPPERS}
"""Messages whose JSON form is one scalar (a string, number or boolean): what a query parameter can hold."""
DELEGATED = {
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Any",
    "google.protobuf.Empty",
}


def message_type_of(field: descriptor.FieldDescriptor) -> descriptor.Descriptor:
    """The message type of a message field."""
    found = field.message_type
    assert found is not None, field.full_name
    return found


def enum_type_of(field: descriptor.FieldDescriptor) -> descriptor.EnumDescriptor:
    found = field.enum_type
    assert found is not None, field.full_name
    return found


def is_map(field: descriptor.FieldDescriptor) -> bool:
    return field.type == _FD.TYPE_MESSAGE and bool(message_type_of(field).GetOptions().map_entry)


class JsonError(ValueError):
    """JSON that does not fit the message; ``field`` is the offending field's path in it."""

    def __init__(self, description: str, field: str = "") -> None:
        super().__init__(description)
        self.description = description
        self.field = field

    def under(self, segment: str) -> JsonError:
        """The same error one level up: ``segment`` is the field (``.name``, ``[3]``, ``["k"]``)."""
        if not self.field:
            self.field = segment.lstrip(".")
        elif self.field.startswith("["):
            self.field = segment.lstrip(".") + self.field
        else:
            self.field = segment.lstrip(".") + "." + self.field
        return self


def _quote(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 42 else text[:40] + "…"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --------------------------------------------------------------------------- scalars, parsing

Convert = Callable[[Any], Any]


def _integer(low: int, high: int) -> Convert:
    def convert(value: Any) -> int:
        kind = type(value)
        number: int
        if kind is int:
            number = value
        elif kind is str and _INTEGER.fullmatch(value):
            number = int(value)
        elif kind is float and value.is_integer():
            number = int(value)
        else:
            raise JsonError(f"must be an integer, got {_kind(value)} {_quote(value)}")
        if not low <= number <= high:
            raise JsonError(f"must be an integer from {low} to {high}, got {number}")
        return number

    return convert


def _floating(single: bool) -> Convert:
    def convert(value: Any) -> float:
        kind = type(value)
        if kind is float or kind is int:
            try:
                number = float(value)
            except OverflowError:
                raise JsonError(f"is out of range: {_quote(value)}") from None
            if math.isinf(number) or math.isnan(number):
                raise JsonError('must be finite; "NaN", "Infinity" and "-Infinity" are written as strings')
        elif kind is str:
            if value == "NaN":
                return math.nan
            if value == "Infinity":
                return math.inf
            if value == "-Infinity":
                return -math.inf
            if not _NUMBER.fullmatch(value):
                raise JsonError(f"must be a number, got {_quote(value)}")
            number = float(value)
            if math.isinf(number):
                raise JsonError(f"is out of range: {_quote(value)}")
        else:
            raise JsonError(f"must be a number, got {_kind(value)} {_quote(value)}")
        if single and not math.isinf(number):
            try:
                _FLOAT32.pack(number)  # rounds to the nearest 32-bit float, or overflows
            except OverflowError:
                raise JsonError(f"is out of the range of a 32-bit float: {_quote(value)}") from None
        return number

    return convert


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise JsonError(f"must be true or false, got {_kind(value)} {_quote(value)}")
    return bool(value)


def _string(value: Any) -> str:
    if type(value) is not str:
        raise JsonError(f"must be a string, got {_kind(value)} {_quote(value)}")
    return str(value)


def _bytes(value: Any) -> bytes:
    if type(value) is not str:
        raise JsonError(f"must be a base64 string, got {_kind(value)} {_quote(value)}")
    encoded = value.encode("utf-8")
    try:
        return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise JsonError(f"must be base64, got {_quote(value)}") from None


def _enum(enum: descriptor.EnumDescriptor) -> Convert:
    numbers = {value.name: value.number for value in enum.values}
    known = ", ".join(list(numbers)[:12])
    check = _integer(*_INT32)

    def convert(value: Any) -> int:
        if type(value) is str:
            named = numbers.get(value)
            if named is None:
                raise JsonError(f"must be one of {known}; got {_quote(value)}")
            return named
        if type(value) is int:
            number: int = check(value)
            if enum.is_closed and number not in enum.values_by_number:
                raise JsonError(f"must be one of {known}; got {number}")
            return number
        raise JsonError(f"must be the name of a {enum.name}, got {_kind(value)} {_quote(value)}")

    return convert


def _scalar_converter(field: descriptor.FieldDescriptor) -> Convert:
    kind = field.type
    if kind in _INT_RANGES:
        return _integer(*_INT_RANGES[kind])
    if kind == _FD.TYPE_DOUBLE:
        return _floating(single=False)
    if kind == _FD.TYPE_FLOAT:
        return _floating(single=True)
    if kind == _FD.TYPE_BOOL:
        return _boolean
    if kind == _FD.TYPE_STRING:
        return _string
    if kind == _FD.TYPE_BYTES:
        return _bytes
    if kind == _FD.TYPE_ENUM:
        return _enum(enum_type_of(field))
    raise TypeError(f"{field.full_name}: not a scalar")


def _map_key_converter(field: descriptor.FieldDescriptor) -> Convert:
    """Map keys are JSON strings whatever their type."""
    kind = field.type
    if kind == _FD.TYPE_STRING:
        return _string
    if kind == _FD.TYPE_BOOL:

        def boolean_key(key: str) -> bool:
            if key not in ("true", "false"):
                raise JsonError(f"a map key must be true or false, got {_quote(key)}")
            return key == "true"

        return boolean_key
    low, high = _INT_RANGES[kind]
    integer = _integer(low, high)

    def integer_key(key: str) -> int:
        if not _INTEGER.fullmatch(key):
            raise JsonError(f"a map key must be an integer, got {_quote(key)}")
        number: int = integer(key)
        return number

    return integer_key


# --------------------------------------------------------------------------- timestamps


@functools.lru_cache(maxsize=4096)
def _days(year: str, month: str, day: str) -> int:
    """Days from 1970-01-01 to a date (ValueError for a date that does not exist)."""
    return dt.date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL


def parse_timestamp(value: Any, message: Message) -> None:
    """RFC 3339 with an upper-case ``T`` and ``Z`` or an offset, up to nanoseconds."""
    if type(value) is not str:
        raise JsonError(f"must be an RFC 3339 timestamp string, got {_kind(value)} {_quote(value)}")
    found = _TIMESTAMP.fullmatch(value)
    if found is None:
        raise JsonError(f"must be an RFC 3339 timestamp such as 2024-01-15T09:30:00Z, got {_quote(value)}")
    year, month, day, hour, minute, second, fraction, _, sign, offset_h, offset_m = found.groups()
    try:
        days = _days(year, month, day)
    except ValueError:
        raise JsonError(f"is not a valid date: {_quote(value)}") from None
    hours, minutes, seconds = int(hour), int(minute), int(second)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise JsonError(f"is not a valid time of day: {_quote(value)}")
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if sign is not None:
        offset = (int(offset_h) * 60 + int(offset_m)) * 60
        total += -offset if sign == "+" else offset
    if not _TIMESTAMP_MIN <= total <= _TIMESTAMP_MAX:
        raise JsonError(f"must be from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, got {_quote(value)}")
    message.seconds = total  # type: ignore[attr-defined]
    message.nanos = int(fraction.ljust(9, "0")) if fraction else 0  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4096)
def _date_text(days: int) -> str:
    return dt.date.fromordinal(_EPOCH_ORDINAL + days).isoformat()


_TWO_DIGITS = [f"{n:02d}" for n in range(100)]


def timestamp_text(message: Any) -> str:
    """A Timestamp as ``Timestamp.ToJsonString`` writes it (0, 3, 6 or 9 fractional digits)."""
    seconds, nanos = message.seconds, message.nanos
    if not _TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX or not 0 <= nanos < 1_000_000_000:
        return str(message.ToJsonString())  # raises its own error
    days, rest = divmod(seconds, 86400)
    # No format specifications: they cost more than the rest together.
    text = f"{_date_text(days)}T{_TWO_DIGITS[rest // 3600]}:{_TWO_DIGITS[rest // 60 % 60]}:{_TWO_DIGITS[rest % 60]}"
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{str(nanos // 1_000_000).zfill(3)}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{str(nanos // 1_000).zfill(6)}Z"
    return f"{text}.{str(nanos).zfill(9)}Z"


# --------------------------------------------------------------------------- messages

Parse = Callable[[Any, Message, int], None]
"""Merges a JSON value into a message, at a nesting depth."""
Print = Callable[[Message], Any]


class Codec:
    """Parsers and printers of message types, compiled on first use and kept."""

    def __init__(self) -> None:
        self._parsers: dict[str, Parse] = {}
        self._printers: dict[str, Print] = {}

    def parse(self, data: Any, message: Message) -> None:
        """Merge the JSON value ``data`` into ``message``; ``JsonError`` names the bad field."""
        try:
            self.parser(message.DESCRIPTOR)(data, message, 0)  # type: ignore[arg-type]
        except RecursionError:
            raise JsonError(f"nests deeper than {MAX_DEPTH} messages") from None

    def to_json(self, message: Message) -> Any:
        """``message`` as ``json_format.MessageToDict(message, always_print_fields_with_no_presence=True)``."""
        return self.printer(message.DESCRIPTOR)(message)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- parsing

    def parser(self, message_type: descriptor.Descriptor) -> Parse:
        found = self._parsers.get(message_type.full_name)
        if found is None:
            # A recursive type (a filter nests filters) finds itself through this stand-in.
            self._parsers[message_type.full_name] = lambda data, message, depth: self.parser(message_type)(
                data, message, depth
            )
            found = self._parsers[message_type.full_name] = self._compile_parser(message_type)
        return found

    def _compile_parser(self, message_type: descriptor.Descriptor) -> Parse:
        name = message_type.full_name
        if name == TIMESTAMP:
            return lambda data, message, depth: parse_timestamp(data, message)
        if name in WRAPPERS:
            convert = _scalar_converter(message_type.fields_by_name["value"])

            def wrapper(data: Any, message: Message, depth: int) -> None:
                message.value = convert(data)  # type: ignore[attr-defined]

            return wrapper
        if name in DELEGATED:

            def delegated(data: Any, message: Message, depth: int) -> None:
                try:
                    json_format.ParseDict(data, message, max_recursion_depth=MAX_DEPTH - depth)
                except json_format.ParseError as exc:
                    raise JsonError(str(exc)) from None

            return delegated
        return self._compile_message_parser(message_type)

    def _compile_message_parser(self, message_type: descriptor.Descriptor) -> Parse:
        """A function written for the message type (see ``_generate_printer`` for why).

        Each field's code is written out in it (``_field_parser_lines``); an error inside a
        field gets the field's name in its path.
        """
        namespace: dict[str, Any] = {
            "JsonError": JsonError,
            "MAX_DEPTH": MAX_DEPTH,
            "kind_of": _kind,
            "quote": _quote,
            "parse_timestamp": parse_timestamp,
            "json_key": lambda key: f"[{json.dumps(key, ensure_ascii=False)}]",
        }

        bind = _binder(namespace)
        fields = list(message_type.fields)
        indexes = {}
        for index, field in enumerate(fields):
            indexes[field.json_name] = index
            indexes[field.name] = index
        names = [field.name for field in fields]
        type_name = message_type.name
        lines = [
            "def parse(data, message, depth):",
            "    if type(data) is not dict:",
            f"        raise JsonError(f'must be a JSON object ({type_name}), got {{kind_of(data)}}')",
            "    if depth >= MAX_DEPTH:",
            "        raise JsonError(f'nests deeper than {MAX_DEPTH} messages')",
        ]
        if message_type.oneofs:
            lines.append("    oneofs = set()")
        lines += [
            "    for key, value in data.items():",
            f"        index = {bind(indexes)}.get(key)",
            "        if index is None:",
            f"            raise JsonError(f'{type_name} has no field {{quote(key)}}', str(key))",
            "        try:",
        ]
        for index, field in enumerate(fields):
            lines.append(f"            {'if' if index == 0 else 'elif'} index == {index}:")
            body = []
            if field.json_name != field.name:
                body += [
                    f"if {field.json_name!r} in data and {field.name!r} in data:",
                    "    raise JsonError('is given twice (by its JSON and its proto name)')",
                ]
            oneof = field.containing_oneof
            if oneof is not None:
                body += [
                    "if value is not None:",
                    f"    if {oneof.name!r} in oneofs:",
                    f"        raise JsonError('is one of {oneof.name}, of which another field is set')",
                    f"    oneofs.add({oneof.name!r})",
                ]
            body += self._field_parser_lines(field, bind)
            lines += [" " * 16 + line for line in body]
        if not fields:
            lines.append("            pass  # no field: every key was refused above")
        lines += [
            "        except JsonError as error:",
            f"            raise error.under({bind(names)}[index]) from None",
            "        except (ValueError, TypeError) as exc:  # protobuf refused it: a lone surrogate, say",
            f"            raise JsonError(f'cannot be stored: {{exc}}', {bind(names)}[index]) from None",
        ]
        exec(compile("\n".join(lines), f"<parser of {message_type.full_name}>", "exec"), namespace)
        parse: Parse = namespace["parse"]
        return parse

    def _field_parser_lines(self, field: descriptor.FieldDescriptor, bind: Callable[[Any], str]) -> list[str]:
        """The lines that set ``field`` of ``message`` from the JSON ``value``.

        ``null`` clears a field (a ``google.protobuf.Value`` becomes JSON null, a NullValue
        0), as ``json_format`` does; it is refused inside an array or as a map value.
        """
        name = field.name
        attribute = f"getattr(message, {name!r})" if keyword.iskeyword(name) else f"message.{name}"
        clear = ["if value is None:", f"    message.ClearField({name!r})"]
        if is_map(field):
            entry = message_type_of(field)
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            key = (
                "entry_key"
                if key_field.type == _FD.TYPE_STRING
                else f"{bind(_map_key_converter(key_field))}(entry_key)"
            )
            if value_field.type == _FD.TYPE_MESSAGE:
                store = f"{bind(self.parser(message_type_of(value_field)))}(item, entries[{key}], depth + 1)"
            else:
                store = f"entries[{key}] = {bind(_scalar_converter(value_field))}(item)"
            return [
                *clear,
                "else:",
                "    if type(value) is not dict:",
                "        raise JsonError(f'must be a JSON object (a map), got {kind_of(value)}')",
                f"    message.ClearField({name!r})",
                f"    entries = {attribute}",
                "    for entry_key, item in value.items():",
                "        try:",
                "            if item is None:",
                "                raise JsonError('null is not allowed as a map value')",
                f"            {store}",
                "        except JsonError as error:",
                "            raise error.under(json_key(entry_key)) from None",
            ]
        is_message = field.type == _FD.TYPE_MESSAGE
        is_value = is_message and message_type_of(field).full_name == "google.protobuf.Value"
        if field.is_repeated:
            if is_message:
                item_lines = [
                    f"{bind(self.parser(message_type_of(field)))}(item, container.add(), depth + 1)"
                ]
            else:
                item_lines = [f"container.append({bind(_scalar_converter(field))}(item))"]
            null_check = (
                []
                if is_value
                else ["if item is None:", "    raise JsonError('null is not allowed in an array')"]
            )
            return [
                *clear,
                "else:",
                "    if type(value) is not list:",
                "        raise JsonError(f'must be an array, got {kind_of(value)}')",
                f"    message.ClearField({name!r})",
                f"    container = {attribute}",
                "    for position, item in enumerate(value):",
                "        try:",
                *(" " * 12 + line for line in [*null_check, *item_lines]),
                "        except JsonError as error:",
                "            raise error.under(f'[{position}]') from None",
            ]
        if is_value:  # null is a value here
            return [f"{bind(self.parser(message_type_of(field)))}(value, {attribute}, depth + 1)"]
        if is_message:
            if message_type_of(field).full_name == TIMESTAMP:
                return [*clear, "else:", f"    parse_timestamp(value, {attribute})"]
            return [
                *clear,
                "else:",
                f"    sub = {attribute}",
                "    if not value:  # {} sets the field; any field set inside it does too",
                "        sub.SetInParent()",
                f"    {bind(self.parser(message_type_of(field)))}(value, sub, depth + 1)",
            ]
        check = []
        converted = "value"
        if field.type == _FD.TYPE_STRING:
            check = [
                "    if type(value) is not str:",
                "        raise JsonError(f'must be a string, got {kind_of(value)} {quote(value)}')",
            ]
        else:
            converted = f"{bind(_scalar_converter(field))}(value)"
        if field.type == _FD.TYPE_ENUM and enum_type_of(field).full_name == "google.protobuf.NullValue":
            clear = ["if value is None:", f"    setattr(message, {name!r}, 0)"]
        store = (
            f"setattr(message, {name!r}, {converted})"
            if keyword.iskeyword(name)
            else f"message.{name} = {converted}"
        )
        return [*clear, "else:", *check, f"    {store}"]

    # ----------------------------------------------------------------- printing

    def printer(self, message_type: descriptor.Descriptor) -> Print:
        found = self._printers.get(message_type.full_name)
        if found is None:
            self._printers[message_type.full_name] = lambda message: self.printer(message_type)(message)
            found = self._printers[message_type.full_name] = self._compile_printer(message_type)
        return found

    def _compile_printer(self, message_type: descriptor.Descriptor) -> Print:
        name = message_type.full_name
        if name == TIMESTAMP:
            return timestamp_text
        if name in WRAPPERS:
            show_wrapped = self._value_printer(message_type.fields_by_name["value"])
            return lambda message: show_wrapped(message.value)  # type: ignore[attr-defined]
        if name in DELEGATED:
            return lambda message: json_format.MessageToDict(
                message, always_print_fields_with_no_presence=True
            )
        return self._generate_printer(message_type)

    def _generate_printer(self, message_type: descriptor.Descriptor) -> Print:
        """A function written for the message type: its fields read one by one, no loop.

        Fields without presence are always printed (their value, default or not), fields with
        presence when set, a oneof's member when it is the one set. Generated source rather
        than a loop over the fields: the loop's bookkeeping cost as much as the reads
        themselves; and ListFields() builds a wrapper for every field, which costs more
        still. Field names come from the descriptor (identifiers; keywords are read with
        getattr), JSON names are written as string literals.
        """
        namespace: dict[str, Any] = {}

        bind = _binder(namespace)

        def value_of(field: descriptor.FieldDescriptor) -> str:
            """An expression of the field's JSON value."""
            read = (
                f"getattr(message, {field.name!r})"
                if keyword.iskeyword(field.name)
                else f"message.{field.name}"
            )
            if is_map(field):
                entry = message_type_of(field)
                key = (
                    "('true' if k else 'false')"
                    if entry.fields_by_name["key"].type == _FD.TYPE_BOOL
                    else "str(k)"
                )
                show = self._value_printer(entry.fields_by_name["value"])
                item = "v" if show is _identity else f"{bind(show)}(v)"
                return f"{{{key}: {item} for k, v in {read}.items()}}"
            show = self._value_printer(field)
            if field.is_repeated:
                return f"list({read})" if show is _identity else f"[{bind(show)}(v) for v in {read}]"
            return read if show is _identity else f"{bind(show)}({read})"

        lines = ["def show(message):", "    js = {}"]
        for field in message_type.fields:
            if field.containing_oneof is not None:
                continue
            if field.has_presence:
                lines.append(f"    if message.HasField({field.name!r}):")
                lines.append(f"        js[{field.json_name!r}] = {value_of(field)}")
            else:
                lines.append(f"    js[{field.json_name!r}] = {value_of(field)}")
        for oneof in message_type.oneofs:
            lines.append(f"    which = message.WhichOneof({oneof.name!r})")
            for index, member in enumerate(oneof.fields):
                lines.append(f"    {'if' if index == 0 else 'elif'} which == {member.name!r}:")
                lines.append(f"        js[{member.json_name!r}] = {value_of(member)}")
        lines.append("    return js")
        exec(compile("\n".join(lines), f"<printer of {message_type.full_name}>", "exec"), namespace)
        show: Print = namespace["show"]
        return show

    def _value_printer(self, field: descriptor.FieldDescriptor) -> Callable[[Any], Any]:
        kind = field.type
        if kind == _FD.TYPE_MESSAGE:
            return self.printer(message_type_of(field))
        if kind == _FD.TYPE_ENUM:
            if enum_type_of(field).full_name == "google.protobuf.NullValue":
                return lambda value: None
            names = {value.number: value.name for value in enum_type_of(field).values}
            return lambda value: names.get(value, value)
        if kind == _FD.TYPE_BYTES:
            return lambda value: base64.b64encode(value).decode("utf-8")
        if kind in _INT64_TYPES:
            return str
        if kind in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
            single = kind == _FD.TYPE_FLOAT
            return lambda value: _float_text(value, single)
        return _identity


def _binder(namespace: dict[str, Any]) -> Callable[[Any], str]:
    """A function that puts a value in the namespace of generated code and returns its name there."""

    def bind(value: Any) -> str:
        name = f"v{len(namespace)}"
        namespace[name] = value
        return name

    return bind


def _identity(value: Any) -> Any:
    return value


def _float_text(value: float, single: bool) -> Any:
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if math.isnan(value):
        return "NaN"
    if single:
        return type_checkers.ToShortestFloat(value)
    return value


CODEC = Codec()
"""The gateway's one codec: its compiled types are shared by every route."""
