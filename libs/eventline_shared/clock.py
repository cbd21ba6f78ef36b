"""Where the services read "now" for business time: one clock object, passed in at wiring.

Business time is what the product reasons about: when an event was received, the "now" a
segment is evaluated at, a frequency cap's window. It comes from a ``Clock`` given to each
service's ``running(...)``: the system clock in production, a ``ManualClock`` in tests, which
set it or move it forward instead of sleeping. Timeouts, leases and backoff measure durations
and stay on the monotonic clock (``loop.time()``, ``time.monotonic()``).
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    """The source of the current instant (timezone-aware, UTC)."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    """The machine's wall clock."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


SYSTEM_CLOCK: Clock = SystemClock()
"""The clock the services use unless their wiring is given another."""


class ManualClock:
    """A clock that stands still until it is set or advanced: tests move time by calling
    ``advance`` rather than by waiting. Starts at ``start``, else at the system clock's now."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = _aware(start) if start is not None else SYSTEM_CLOCK.now()

    def now(self) -> dt.datetime:
        return self._now

    def set(self, instant: dt.datetime) -> None:
        self._now = _aware(instant)

    def advance(self, by: dt.timedelta) -> dt.datetime:
        """Move forward by ``by`` (never back: a negative duration is refused); returns the new now."""
        if by < dt.timedelta(0):
            raise ValueError(f"a clock advances, it does not go back: {by}")
        self._now += by
        return self._now


def _aware(instant: dt.datetime) -> dt.datetime:
    if instant.tzinfo is None:
        raise ValueError("a clock's instants carry a time zone")
    return instant.astimezone(dt.UTC)
