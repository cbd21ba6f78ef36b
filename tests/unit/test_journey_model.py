"""The journey model without sockets: split assignment, local time and quiet hours, checks."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from eventline.campaigns.v1 import campaigns_pb2

from eventline_campaigns.journey_model import (
    Quiet,
    Variant,
    assign_variant,
    check_steps,
    customer_zone,
    next_local_time,
    quiet_until,
)

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
VARIANTS = [Variant("a", 50, "", False), Variant("b", 40, "", False), Variant("control", 10, "", True)]


def test_ten_thousand_customers_split_50_40_10_within_two_points() -> None:
    counts = {"a": 0, "b": 0, "control": 0}
    for i in range(10_000):
        counts[assign_variant("campaign", "split", f"customer-{i}", VARIANTS).name] += 1
    assert abs(counts["a"] / 100 - 50) <= 2
    assert abs(counts["b"] / 100 - 40) <= 2
    assert abs(counts["control"] / 100 - 10) <= 2


def test_the_assignment_is_deterministic_per_campaign_and_customer() -> None:
    first = [assign_variant("c1", "split", f"x{i}", VARIANTS).name for i in range(200)]
    assert first == [assign_variant("c1", "split", f"x{i}", VARIANTS).name for i in range(200)]
    other = [assign_variant("c2", "split", f"x{i}", VARIANTS).name for i in range(200)]
    assert first != other, "another campaign splits its customers independently"


def test_quiet_hours_across_midnight_end_at_their_local_end_across_a_dst_change() -> None:
    quiet = Quiet(dt.time(21, 0), dt.time(9, 0), frozenset())
    # 22:30 CEST on 2026-10-24, the night Paris leaves summer time: ends 09:00 CET = 08:00 UTC.
    late = dt.datetime(2026, 10, 24, 20, 30, tzinfo=dt.UTC)
    assert quiet_until(late, PARIS, quiet) == dt.datetime(2026, 10, 25, 8, 0, tzinfo=dt.UTC)
    assert quiet_until(dt.datetime(2026, 10, 24, 12, 0, tzinfo=dt.UTC), PARIS, quiet) is None
    # Spring forward (2026-03-29): 08:00 CEST is inside, the end is 09:00 CEST = 07:00 UTC.
    assert quiet_until(dt.datetime(2026, 3, 29, 6, 0, tzinfo=dt.UTC), PARIS, quiet) == dt.datetime(
        2026, 3, 29, 7, 0, tzinfo=dt.UTC
    )


def test_a_wait_until_a_local_time_is_its_next_occurrence() -> None:
    at_ten = dt.time(10, 0)
    morning = dt.datetime(2026, 10, 24, 6, 0, tzinfo=dt.UTC)  # 08:00 CEST
    assert next_local_time(morning, PARIS, at_ten) == dt.datetime(2026, 10, 24, 8, 0, tzinfo=dt.UTC)
    evening = dt.datetime(2026, 10, 24, 18, 0, tzinfo=dt.UTC)  # 20:00 CEST: tomorrow 10:00 CET
    assert next_local_time(evening, PARIS, at_ten) == dt.datetime(2026, 10, 25, 9, 0, tzinfo=dt.UTC)


def test_a_customer_zone_falls_back_to_the_journey_default_then_utc() -> None:
    assert customer_zone({"time_zone": "Europe/Paris"}, "Asia/Tokyo") == PARIS
    assert customer_zone({"time_zone": "Nowhere/Land"}, "Asia/Tokyo") == zoneinfo.ZoneInfo("Asia/Tokyo")
    assert customer_zone({}, "") == dt.UTC


def test_step_checks_name_field_paths() -> None:
    steps = [
        campaigns_pb2.Step(
            step_id="a", wait=campaigns_pb2.WaitStep(until_local_time="25:00", next_step_id="b")
        ),
        campaigns_pb2.Step(
            step_id="b",
            split=campaigns_pb2.SplitStep(variants=[campaigns_pb2.SplitVariant(name="only", weight=0)]),
        ),
        campaigns_pb2.Step(step_id="b"),
    ]
    found = {v.field: v.description for v in check_steps(steps, "campaign.steps", lambda a, p: [])}
    assert "campaign.steps[0].wait.until_local_time" in found
    assert "campaign.steps[1].split.variants" in found
    assert "campaign.steps[1].split.variants[0].weight" in found
    assert "used twice" in found["campaign.steps[2].step_id"]
