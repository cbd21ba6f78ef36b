"""Periods resolved against a request's ``now`` and time zone (see the proto comments)."""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from dataclasses import dataclass

from eventline.segmentation.v1 import segmentation_pb2 as pb

from eventline_predicates.filters import PeriodSpec
from eventline_shared.errors import invalid, quote

UTC = dt.UTC


@dataclass(frozen=True)
class Interval:
    """start <= t < end (or <= end when ``end_inclusive``); None is an open side."""

    start: dt.datetime | None
    end: dt.datetime | None
    end_inclusive: bool = False

    def holds(self, t: dt.datetime) -> bool:
        if self.start is not None and t < self.start:
            return False
        if self.end is not None:
            return t <= self.end if self.end_inclusive else t < self.end
        return True


_NOT_ZONES = {"localtime", "posixrules", "Factory"}
"""Files of the zoneinfo directory that are not IANA zones: the host's own zone, a POSIX
rules template and the "Local time zone must be set" placeholder."""


@functools.cache
def iana_zones() -> frozenset[str]:
    """The IANA time zone names the server knows (read once)."""
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in _NOT_ZONES and not name.startswith(("posix/", "right/"))
    )


def time_zone(name: str, path: str = "time_zone") -> dt.tzinfo:
    if not name or name == "UTC":
        return UTC
    if name not in iana_zones():
        raise invalid(path, f"unknown time zone {quote(name)}; use an IANA name such as Europe/Berlin")
    return zoneinfo.ZoneInfo(name)


def day_start(zone: dt.tzinfo, day: dt.date) -> dt.datetime:
    """The first instant whose local date in ``zone`` is ``day`` (OverflowError beyond the calendar)."""
    # Midnight may not exist (a DST jump at 00:00) or exist twice: fold=0
    # maps it to the transition instant or to its first occurrence, which
    # is in both cases the first instant of the local day (PEP 495).
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


class Clock:
    """Day arithmetic in one time zone around one ``now`` (fixed: a clock is built per instant).

    Day starts and periods are computed once per clock: a real-time segment's batch evaluates
    thousands of customers at one clock, each resolving the same few periods (a million
    ``day_start`` calls in a benchmark's 30,000 events; docs/performance.md)."""

    def __init__(self, now: dt.datetime, zone: dt.tzinfo) -> None:
        self.now = now
        self.zone = zone
        self.today = now.astimezone(zone).date()
        self._day_starts: dict[int, dt.datetime] = {}
        self._resolved: dict[PeriodSpec, Interval] = {}

    def local_date(self, t: dt.datetime) -> dt.date:
        return t.astimezone(self.zone).date()

    def day_start(self, days_before_today: int) -> dt.datetime:
        """The first instant whose local date is today minus ``days_before_today`` days."""
        instant = self._day_starts.get(days_before_today)
        if instant is None:
            day = self.today - dt.timedelta(days=days_before_today)
            instant = self._day_starts[days_before_today] = day_start(self.zone, day)
        return instant

    def resolve(self, period: PeriodSpec) -> Interval:
        interval = self._resolved.get(period)
        if interval is None:
            interval = self._resolved[period] = self._resolve(period)
        return interval

    def _resolve(self, period: PeriodSpec) -> Interval:
        if period.kind == "absolute":
            return Interval(period.start, period.end)
        if period.kind == "hours":
            return Interval(self.now - dt.timedelta(hours=period.amount), self.now, end_inclusive=True)
        if period.kind == "days":
            return Interval(self.day_start(period.amount - 1), self.now, end_inclusive=True)
        return Interval(self.day_start(period.max_days_ago), self.day_start(period.min_days_ago - 1))

    def days_since(self, last: dt.datetime) -> int:
        return (self.today - self.local_date(last)).days

    def days_since_intervals(self, comparison: int, days: int) -> list[Interval]:
        """The times of a last event for which ``days_since <comparison> days`` holds."""
        start_of = self.day_start  # day_start(n): first instant of today - n
        if comparison == pb.COMPARISON_GREATER:
            return [Interval(None, start_of(days))]
        if comparison == pb.COMPARISON_GREATER_OR_EQUAL:
            return [Interval(None, start_of(days - 1))]
        if comparison == pb.COMPARISON_LESS:
            return [Interval(start_of(days - 1), None)]
        if comparison == pb.COMPARISON_LESS_OR_EQUAL:
            return [Interval(start_of(days), None)]
        if comparison == pb.COMPARISON_EQUAL:
            return [Interval(start_of(days), start_of(days - 1))]
        return [Interval(None, start_of(days)), Interval(start_of(days - 1), None)]


def compare(comparison: int, left: int, right: int) -> bool:
    if comparison == pb.COMPARISON_EQUAL:
        return left == right
    if comparison == pb.COMPARISON_NOT_EQUAL:
        return left != right
    if comparison == pb.COMPARISON_LESS:
        return left < right
    if comparison == pb.COMPARISON_LESS_OR_EQUAL:
        return left <= right
    if comparison == pb.COMPARISON_GREATER:
        return left > right
    return left >= right
