"""The shared clock: the system's in production, a manual one that tests move."""

from __future__ import annotations

import datetime as dt

import pytest

from eventline_shared.clock import SYSTEM_CLOCK, ManualClock


def test_the_system_clock_reads_aware_utc_now() -> None:
    before = dt.datetime.now(dt.UTC)
    now = SYSTEM_CLOCK.now()
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)
    assert before <= now <= dt.datetime.now(dt.UTC)


def test_a_manual_clock_stands_still_until_set_or_advanced() -> None:
    start = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    clock = ManualClock(start)
    assert clock.now() == start and clock.now().tzinfo == dt.UTC
    assert clock.now() == clock.now()
    assert clock.advance(dt.timedelta(days=1, seconds=1)) == start + dt.timedelta(days=1, seconds=1)
    clock.set(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert clock.now() == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def test_a_manual_clock_refuses_naive_instants_and_going_back() -> None:
    with pytest.raises(ValueError, match="time zone"):
        ManualClock(dt.datetime(2026, 1, 1))
    clock = ManualClock()
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(dt.timedelta(seconds=-1))
