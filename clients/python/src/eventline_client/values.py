"""Python values to and from the API's typed values (``eventline.common.v1.Value``) and Timestamps."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping, MutableMapping

from eventline.common.v1 import common_pb2
from google.protobuf import timestamp_pb2

ContextValue = str | int | float | decimal.Decimal | bool | dt.datetime | common_pb2.Value
"""What a context field (or customer attribute) may hold.

``str`` is a string, ``bool`` a boolean, ``int`` a 64-bit integer, ``Decimal`` and ``float``
an exact decimal (a float as its shortest repr, so ``0.1`` is ``"0.1"``), an aware
``datetime`` a timestamp; a ``Value`` message is sent as it is.
"""

_INT64 = range(-(2**63), 2**63)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def set_timestamp(target: timestamp_pb2.Timestamp, moment: dt.datetime) -> None:
    """Set ``target`` to an aware datetime (a naive one is refused: its zone would be a guess)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a naive datetime has no time zone: {moment!r} (use tzinfo=datetime.UTC)")
    seconds, micros = divmod((moment - _EPOCH) // _MICROSECOND, 1_000_000)
    target.seconds = seconds
    target.nanos = micros * 1000


def to_timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp of an aware datetime (see :func:`set_timestamp`)."""
    timestamp = timestamp_pb2.Timestamp()
    set_timestamp(timestamp, moment)
    return timestamp


def from_timestamp(timestamp: timestamp_pb2.Timestamp) -> dt.datetime:
    """The aware (UTC) datetime of a Timestamp, to the microsecond."""
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=timestamp.seconds, microseconds=timestamp.nanos // 1000
    )


def set_value(target: common_pb2.Value, value: ContextValue) -> None:
    """Set ``target`` to the typed API value of a Python value (see :data:`ContextValue`)."""
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):  # before int: a bool is an int in Python
        target.boolean_value = value
    elif isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"{value} does not fit a signed 64-bit integer (send a Decimal)")
        target.integer_value = value
    elif isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a number the API can hold")
        target.decimal_value = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a number the API can hold")
        target.decimal_value = repr(value)
    elif isinstance(value, dt.datetime):
        set_timestamp(target.timestamp_value, value)
    elif isinstance(value, common_pb2.Value):
        target.CopyFrom(value)
    else:
        raise TypeError(
            f"a context value is str, int, float, Decimal, bool or datetime, not {type(value).__name__}"
        )


def to_value(value: ContextValue) -> common_pb2.Value:
    """The typed API value of a Python value (see :data:`ContextValue`)."""
    if isinstance(value, common_pb2.Value):
        return value
    target = common_pb2.Value()
    set_value(target, value)
    return target


def set_context(target: MutableMapping[str, common_pb2.Value], context: Mapping[str, ContextValue]) -> None:
    """Fill a message's context (or attributes) map from a mapping of Python values."""
    for code, value in context.items():
        set_value(target[code], value)


def to_context(context: Mapping[str, ContextValue] | None) -> dict[str, common_pb2.Value]:
    """Typed API values of a context (or attributes) mapping."""
    return {code: to_value(value) for code, value in (context or {}).items()}


def from_value(value: common_pb2.Value) -> str | int | decimal.Decimal | bool | dt.datetime | None:
    """The Python value of a typed API value (decimals as ``Decimal``); None when unset."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "integer_value":
        return value.integer_value
    if kind == "decimal_value":
        return decimal.Decimal(value.decimal_value)
    if kind == "boolean_value":
        return value.boolean_value
    if kind == "timestamp_value":
        return from_timestamp(value.timestamp_value)
    return None


def from_context(
    context: Mapping[str, common_pb2.Value],
) -> dict[str, str | int | decimal.Decimal | bool | dt.datetime | None]:
    """A stored event's context as Python values."""
    return {code: from_value(value) for code, value in context.items()}
