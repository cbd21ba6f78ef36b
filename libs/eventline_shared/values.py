"""Typed values (event context, customer attributes): validation and storage form.

Storage form is JSON (a PostgreSQL ``jsonb`` column) chosen so that SQL can
filter on it without losing types:

=========  ==============================================  =======================
kind       stored as                                       example
=========  ==============================================  =======================
string     JSON string                                     ``"Blue kettle"``
integer    JSON number without a decimal point             ``42``
decimal    JSON number that always has a decimal point     ``12.50``, ``300.0``
boolean    JSON boolean                                    ``true``
timestamp  object with a fixed-width UTC text in ``ts``    ``{"ts": "2026-11-26T23:24:01.000000Z"}``
=========  ==============================================  =======================

A string therefore never equals a number, integers and decimals compare as
numbers, and timestamps compare correctly both as text and as ``timestamptz``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring as _json_string  # json.dumps(text, ensure_ascii=False)
from typing import Any, Final, final

from eventline.common.v1 import common_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from eventline_shared.errors import QUOTED_CHARS, FieldViolation, quote

CODE_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
"""Event names, context field codes and attribute codes. Never contains ``-``."""
# Used with fullmatch: "$" would also accept a trailing newline.
CODE: Final = re.compile(CODE_PATTERN[1:-1])
# Ids are checked with fullmatch too, and ASCII only: \w and \d would take any script's letters and digits.
CUSTOMER_ID: Final = re.compile(r"[A-Za-z0-9_.:@+\-]{1,128}")
EVENT_ID: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_DECIMAL: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
"""Decimal notation in ASCII digits only (Python's Decimal would take Arabic-Indic or full-width digits)."""
MAX_DECIMAL_CHARS: Final = 200

MAX_CONTEXT_KEYS: Final = 100
MAX_STRING_CHARS: Final = 4096
MAX_CONTEXT_BYTES: Final = 32 * 1024
MAX_DECIMAL_DIGITS: Final = 38
MAX_DECIMAL_EXPONENT: Final = 64

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_TS_MIN_SECONDS: Final = -62135596800  # 0001-01-01T00:00:00Z
_TS_MAX_SECONDS: Final = 253402300799  # 9999-12-31T23:59:59Z
_DURATION_MAX_SECONDS: Final = 315_576_000_000  # 10,000 years: google.protobuf.Duration's range
_NANOS: Final = 10**9


def quote_path(container: str, key: str) -> str:
    """The field path of a map entry, e.g. ``context["item-id"]`` (a long key is cut, see ``quote``)."""
    if len(key) <= QUOTED_CHARS:
        return f"{container}[{json.dumps(key, ensure_ascii=False)}]"
    return f'{container}[{json.dumps(key[:QUOTED_CHARS], ensure_ascii=False)[:-1]}…"]'


def check_code(value: str, field: str, what: str) -> FieldViolation | None:
    if not value:
        return FieldViolation(field, f"{what} is required")
    if not CODE.fullmatch(value):
        return FieldViolation(field, f"{what} {quote(value)} must match {CODE_PATTERN}")
    return None


def check_id(value: str, field: str, what: str, pattern: re.Pattern[str], rule: str) -> FieldViolation | None:
    """The one check of every id field: required, and a strict full match of ``pattern``."""
    if not value:
        return FieldViolation(field, f"{what} is required")
    if not pattern.fullmatch(value):
        return FieldViolation(field, f"{what} {quote(value)} must be {rule}")
    return None


def check_customer_id(value: str, field: str) -> FieldViolation | None:
    return check_id(value, field, "customer id", CUSTOMER_ID, "1 to 128 letters, digits or any of _.:@+-")


def check_event_id(value: str, field: str, what: str = "event id") -> FieldViolation | None:
    return check_id(value, field, what, EVENT_ID, "1 to 128 letters, digits or any of _.:-")


def timestamp_to_datetime(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    """A protobuf timestamp as an aware UTC datetime, truncated to microseconds."""
    return EPOCH + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def timestamp_micros(ts: timestamp_pb2.Timestamp) -> int:
    """A valid timestamp in microseconds since the epoch, truncated as ``timestamp_to_datetime`` does."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def datetime_to_timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    delta = value - EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=delta.microseconds * 1000)


TIMESTAMP_RANGE: Final = "timestamp must be between years 1 and 9999, with nanos from 0 to 999,999,999"


def _timestamp_in_range(ts: timestamp_pb2.Timestamp) -> bool:
    return in_timestamp_range(ts.seconds, ts.nanos)


def in_timestamp_range(seconds: int, nanos: int) -> bool:
    """``check_timestamp``'s rule for a timestamp whose fields were read already (each read of a
    protobuf field is a call)."""
    return _TS_MIN_SECONDS <= seconds <= _TS_MAX_SECONDS and 0 <= nanos < _NANOS


def check_timestamp(
    ts: timestamp_pb2.Timestamp,
    field: str,
    *,
    earliest: dt.datetime | None = None,
    latest: dt.datetime | None = None,
    bounds: str = "",
) -> FieldViolation | None:
    """The one check of every Timestamp of a request.

    A valid google.protobuf.Timestamp (years 1 to 9999, nanos 0 to
    999,999,999), and within ``earliest`` <= t < ``latest`` when given
    (``bounds`` says those bounds in words, e.g. "between 1970 and 9000").
    Only a timestamp that passes may go to ``timestamp_to_datetime``.
    """
    if not _timestamp_in_range(ts):
        return FieldViolation(field, TIMESTAMP_RANGE)
    if earliest is not None or latest is not None:
        moment = timestamp_to_datetime(ts)
        if (earliest is not None and moment < earliest) or (latest is not None and moment >= latest):
            return FieldViolation(field, f"timestamp must be {bounds}")
    return None


def check_duration(
    duration: duration_pb2.Duration, field: str, *, minimum: dt.timedelta, maximum: dt.timedelta
) -> FieldViolation | None:
    """The one check of every Duration of a request: valid, and from ``minimum`` to ``maximum``.

    Valid means what google/protobuf/duration.proto says: seconds within
    ±315,576,000,000, nanos within ±999,999,999 and of the same sign as the
    seconds. Only a duration that passes may go to ``ToTimedelta``.
    """
    seconds, nanos = duration.seconds, duration.nanos
    if abs(seconds) > _DURATION_MAX_SECONDS:
        return FieldViolation(field, "not a valid duration: seconds must be within ±315,576,000,000")
    if not -_NANOS < nanos < _NANOS:
        return FieldViolation(field, "not a valid duration: nanos must be within ±999,999,999")
    if seconds < 0 < nanos or nanos < 0 < seconds:
        return FieldViolation(field, "not a valid duration: seconds and nanos must not have opposite signs")
    total = Decimal(seconds) + Decimal(nanos) / _NANOS
    if not Decimal(minimum.total_seconds()) <= total <= Decimal(maximum.total_seconds()):
        return FieldViolation(field, f"must be from {say_duration(minimum)} to {say_duration(maximum)}")
    return None


def say_duration(span: dt.timedelta) -> str:
    """A duration in words, as the API documents its bounds ("1 second", "366 days")."""
    if span.days and not span.seconds and not span.microseconds:
        return f"{span.days:,} day{'s' if span.days != 1 else ''}"
    seconds = span.total_seconds()
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


_PLAIN_DECIMAL: Final = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
"""A decimal already in its stored form: no exponent, no leading zero, a point."""


def _decimal_text(text: str) -> str | None:
    """Plain-notation text of a decimal that always has a point, or None if invalid."""
    # What clients send nearly always ("12.34"): stored as sent, within every bound (at most
    # 38 digits, so also an exponent within ±37), without building a Decimal.
    if len(text) <= MAX_DECIMAL_DIGITS + 1 and _PLAIN_DECIMAL.fullmatch(text):
        return text
    if len(text) > MAX_DECIMAL_CHARS or not _DECIMAL.fullmatch(text):
        return None
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    digits = number.as_tuple().digits
    if len(digits) > MAX_DECIMAL_DIGITS or abs(number.adjusted()) > MAX_DECIMAL_EXPONENT:
        return None
    plain = format(number, "f")
    return plain if "." in plain else plain + ".0"


def _iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ").rjust(27, "0")


@final
class Encoded:
    """A validated map in storage form (one per event: a class with slots, whose construction
    costs less than a ``NamedTuple``'s, compiled or not)."""

    __slots__ = ("json", "normalized", "violations", "wire")

    def __init__(
        self,
        json: str,
        violations: list[FieldViolation],
        normalized: dict[str, common_pb2.Value],
        wire: bytes,
    ) -> None:
        self.json = json
        """The JSON storage text."""
        self.violations = violations
        self.normalized = normalized
        """Values whose stored form differs from what was sent (decimals in plain notation,
        timestamps cut to microseconds), by code; the others are stored exactly as sent."""
        self.wire = wire
        """The map as stored (``normalized`` applied), serialized as the field ``map_field`` of
        ``encode_values`` (empty without it), each entry in code order."""


# The serialized form of a map of values as stored, for a message written by hand (the stored
# event: eventline_ingestion.stored_form), from what validation reads of each value anyway: a
# value's SerializeToString is a call of ~0.5 µs, its bytes here a few concatenations. A map
# entry is a message of its key (field 1) and its value (field 2); a Value holds one field of its
# oneof, written even when zero or empty (a oneof's member has presence). Tags: field number << 3
# | wire type (0: varint, 2: length-delimited).
_ENTRY_KEY: Final = b"\x0a"
_ENTRY_VALUE: Final = b"\x12"
_STRING_VALUE: Final = b"\x0a"
_INTEGER_VALUE: Final = b"\x10"
_DECIMAL_VALUE: Final = b"\x1a"
_TRUE_VALUE: Final = b"\x20\x01"
_FALSE_VALUE: Final = b"\x20\x00"
_TIMESTAMP_VALUE: Final = b"\x2a"
_TIMESTAMP_SECONDS: Final = b"\x08"
_TIMESTAMP_NANOS: Final = b"\x10"
_SHORT_VARINTS: Final[list[bytes]] = [bytes((n,)) for n in range(128)]
_TWO_TO_64: Final = 1 << 64


def varint(n: int) -> bytes:
    """``n`` as a protobuf varint; a negative one (an int64) as its 64-bit two's complement."""
    if 0 <= n < 128:
        return _SHORT_VARINTS[n]
    if n < 0:
        n += _TWO_TO_64
    # Its bytes gathered in an int, little-endian: compiled, a third of appending to a bytearray.
    spread = 0
    size = 0
    while n > 0x7F:
        spread |= (n & 0x7F | 0x80) << (8 * size)
        size += 1
        n >>= 7
    return (spread | n << (8 * size)).to_bytes(size + 1, "little")


def length_delimited(key: bytes, data: bytes) -> bytes:
    """A length-delimited protobuf field (``key``: its field number and wire type) holding ``data``."""
    return key + varint(len(data)) + data


def timestamp_bytes(seconds: int, nanos: int) -> bytes:
    """A ``google.protobuf.Timestamp`` serialized, its zero fields left out as proto3 does."""
    data = _TIMESTAMP_SECONDS + varint(seconds) if seconds else b""
    return data + _TIMESTAMP_NANOS + varint(nanos) if nanos else data


def _encode_value(
    value: common_pb2.Value, code: str, normalized: dict[str, common_pb2.Value], wire: bool
) -> tuple[str, int, bytes] | str:
    """The value's storage text, its size by the documented measure (below) and, with ``wire``,
    its serialized form as stored (else empty); or why it is invalid (a text alone)."""
    # A HasField is a cheaper call than WhichOneof (which makes a text of the kind's name): the
    # kinds clients send most are asked first, each read once.
    if value.HasField("integer_value"):
        number = value.integer_value
        text = str(number)
        return text, len(text), _INTEGER_VALUE + varint(number) if wire else b""
    if value.HasField("decimal_value"):
        sent = value.decimal_value
        decimal = _decimal_text(sent)
        if decimal is None:
            return (
                f"decimal {quote(sent)} must be a finite number in ASCII digits with "
                f"at most {MAX_DECIMAL_DIGITS} significant digits"
            )
        if decimal != sent:
            normalized[code] = common_pb2.Value(decimal_value=decimal)
        return decimal, len(decimal), length_delimited(_DECIMAL_VALUE, decimal.encode()) if wire else b""
    if value.HasField("string_value"):
        text = value.string_value
        if len(text) > MAX_STRING_CHARS:
            return f"string is longer than {MAX_STRING_CHARS} characters"
        if "\x00" in text:
            return "string must not contain NUL characters"
        data = text.encode()
        return _json_string(text), len(data), length_delimited(_STRING_VALUE, data) if wire else b""
    kind = value.WhichOneof("kind")
    if kind == "boolean_value":
        return ("true", 4, _TRUE_VALUE) if value.boolean_value else ("false", 5, _FALSE_VALUE)
    if kind == "timestamp_value":
        ts = value.timestamp_value
        seconds, nanos = ts.seconds, ts.nanos
        if not in_timestamp_range(seconds, nanos):
            return TIMESTAMP_RANGE
        micros = nanos // 1000
        if nanos % 1000:
            normalized[code] = common_pb2.Value(
                timestamp_value=timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)
            )
        text = '{"ts": "' + _iso(EPOCH + dt.timedelta(seconds=seconds, microseconds=micros)) + '"}'
        stored = length_delimited(_TIMESTAMP_VALUE, timestamp_bytes(seconds, micros * 1000)) if wire else b""
        return text, _TIMESTAMP_TEXT_BYTES, stored
    return "value must have one of string, integer, decimal, boolean or timestamp set"


_TIMESTAMP_TEXT_BYTES: Final = len("2026-11-26T23:24:01.000000Z")


# A value's size by the documented measure (ingestion.proto, the context field) is its text as
# UTF-8: a string counts its own bytes (not its JSON escapes), a number the characters it is
# stored as (decimals in plain notation), a boolean 4 or 5 ("true", "false"), a timestamp the 27
# of its RFC 3339 text.

_VALID_CODES: Final[set[str]] = set()
"""Codes seen valid (codes repeat across events; bounded by ``_MAX_VALID_CODES``)."""
_MAX_VALID_CODES: Final = 10_000


def valid_code(code: str) -> bool:
    """Whether ``code`` matches ``CODE``, remembered for the codes seen most."""
    if code in _VALID_CODES:
        return True
    if not CODE.fullmatch(code):
        return False
    if len(_VALID_CODES) < _MAX_VALID_CODES:
        _VALID_CODES.add(code)
    return True


_CODE_FORMS: Final[dict[str, tuple[str, bytes]]] = {}
"""Valid codes seen, each with the start of its JSON member (``"code": ``) and its map entry's key
field (codes repeat across events; bounded by ``_MAX_VALID_CODES``)."""


def _code_forms(code: str) -> tuple[str, bytes] | None:
    """``code``'s forms in a stored map, or None if it is not a valid code."""
    forms = _CODE_FORMS.get(code)
    if forms is None:
        if not valid_code(code):
            return None
        key = code.encode()
        forms = (f'"{code}": ', _ENTRY_KEY + varint(len(key)) + key)
        if len(_CODE_FORMS) < _MAX_VALID_CODES:
            _CODE_FORMS[code] = forms
    return forms


def encode_values(
    values: Mapping[str, common_pb2.Value], field: str, what: str = "field code", map_field: bytes = b""
) -> Encoded:
    """Validate a context or attribute map and return its JSON storage text; with ``map_field``
    (a tag: the field number of a map of values and wire type 2) also the map as stored,
    serialized as that field (``Encoded.wire``)."""
    violations: list[FieldViolation] = []
    normalized: dict[str, common_pb2.Value] = {}
    count = len(values)
    if not count:
        return Encoded("{}", violations, normalized, b"")
    if count > MAX_CONTEXT_KEYS:
        violations.append(
            FieldViolation(field, f"at most {MAX_CONTEXT_KEYS} fields are allowed, got {count}")
        )
        return Encoded("", violations, normalized, b"")
    wire = bool(map_field)
    parts: list[str] = []
    entries: list[bytes] = []
    size = 0
    for code in sorted(values):  # keys, then each value: iterating a protobuf map's items is slower
        forms = _code_forms(code)
        if forms is None:
            violations.append(
                FieldViolation(quote_path(field, code), f"{what} {quote(code)} must match {CODE_PATTERN}")
            )
            continue
        encoded = _encode_value(values[code], code, normalized, wire)
        if isinstance(encoded, str):
            violations.append(FieldViolation(quote_path(field, code), encoded))
            continue
        text, measured, data = encoded
        size += len(code) + measured
        member, key_field = forms
        parts.append(member + text)
        if wire:  # the map entry: its key field, then its value's
            value_size = varint(len(data))
            entry_size = len(key_field) + len(_ENTRY_VALUE) + len(value_size) + len(data)
            entries += (map_field, varint(entry_size), key_field, _ENTRY_VALUE, value_size, data)
    if size > MAX_CONTEXT_BYTES:
        violations.append(
            FieldViolation(field, f"at most {MAX_CONTEXT_BYTES} bytes are allowed in all, got {size}")
        )
    return Encoded("{" + ", ".join(parts) + "}", violations, normalized, b"".join(entries))


class _DecimalText:
    """A JSON number that had a decimal point, kept as its exact text (not a ``str`` subclass,
    which a module compiled by mypyc cannot define without ``mypy_extensions`` at run time)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _decode_json(text: str) -> Any:
    return json.loads(text, parse_float=_DecimalText)


def decode_value(stored: Any) -> common_pb2.Value:
    if isinstance(stored, bool):
        return common_pb2.Value(boolean_value=stored)
    if isinstance(stored, _DecimalText):
        return common_pb2.Value(decimal_value=stored.text)
    if isinstance(stored, int):
        return common_pb2.Value(integer_value=stored)
    if isinstance(stored, str):
        return common_pb2.Value(string_value=stored)
    if isinstance(stored, dict) and "ts" in stored:
        parsed = dt.datetime.strptime(stored["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return common_pb2.Value(timestamp_value=datetime_to_timestamp(parsed))
    raise ValueError(f"not a stored value: {stored!r}")


def decode_values(text: str | None) -> dict[str, common_pb2.Value]:
    """The typed map stored as ``text`` (the inverse of ``encode_values``)."""
    if not text:
        return {}
    return {code: decode_value(stored) for code, stored in _decode_json(text).items()}


def python_value(value: common_pb2.Value) -> Any:
    """A value as plain Python (str, int, Decimal, bool, aware datetime), e.g. for templates."""
    kind = value.WhichOneof("kind")
    if kind == "decimal_value":
        return Decimal(value.decimal_value)
    if kind == "timestamp_value":
        return timestamp_to_datetime(value.timestamp_value)
    if kind is None:
        return None
    return getattr(value, kind)


def python_values(values: Mapping[str, common_pb2.Value]) -> dict[str, Any]:
    return {code: python_value(v) for code, v in values.items()}


def present(violations: Iterable[FieldViolation | None]) -> list[FieldViolation]:
    """The violations that are not None."""
    return [v for v in violations if v is not None]
