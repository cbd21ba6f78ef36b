"""Python values to and from the API's typed values (``eventline.common.v1.Value``) and Timestamps."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping

from eventline.common.v1 import common_pb2
from google.protobuf import timestamp_pb2

ContextValue = str | int | float | decimal.Decimal | bool | dt.datetime | common_pb2.Value
"""What a context field (or customer attribute) may hold.

``str`` is a string, ``bool`` a boolean, ``int`` a 64-bit integer, ``Decimal`` and ``float``
an exact decimal (a float as its shortest repr, so ``0.1`` is ``"0.1"``), an aware
``datetime`` a timestamp; a ``Value`` message is sent as it is.
"""

_INT64 = range(-(2**63), 2**63)


def to_timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp of an aware datetime (a naive one is refused: its zone would be a guess)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a naive datetime has no time zone: {moment!r} (use tzinfo=datetime.UTC)")
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    seconds, micros = divmod(delta // dt.timedelta(microseconds=1), 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def from_timestamp(timestamp: timestamp_pb2.Timestamp) -> dt.datetime:
    """The aware (UTC) datetime of a Timestamp, to the microsecond."""
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=timestamp.seconds, microseconds=timestamp.nanos // 1000
    )


def to_value(value: ContextValue) -> common_pb2.Value:
    """The typed API value of a Python value (see :data:`ContextValue`)."""
    if isinstance(value, common_pb2.Value):
        return value
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return common_pb2.Value(boolean_value=value)
    if isinstance(value, int):
        if value not in _INT64:
            raise ValueError(f"{value} does not fit a signed 64-bit integer (send a Decimal)")
        return common_pb2.Value(integer_value=value)
    if isinstance(value, str):
        return common_pb2.Value(string_value=value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a number the API can hold")
        return common_pb2.Value(decimal_value=repr(value))
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a number the API can hold")
        return common_pb2.Value(decimal_value=str(value))
    if isinstance(value, dt.datetime):
        return common_pb2.Value(timestamp_value=to_timestamp(value))
    raise TypeError(
        f"a context value is str, int, float, Decimal, bool or datetime, not {type(value).__name__}"
    )


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
