"""Journey benchmark: durable timers firing on time, steps per second, waits for events resumed.

Runs the campaign service in this process (``eventline_campaigns.service.running``, its
stream consumer stopped) on a database of its own, with the development file sink as the
e-mail channel, and a clock that follows the wall clock at an offset the benchmark moves
(business time; durations are measured with the wall clock). Measured:

* ``timer_lateness_p99_ms``: instances of "wait 1 h → send e-mail" entered so that their
  waits end spread over one minute; the clock is set just before the first end and then
  runs in real time while the runner (the service's own loop) fires them. Lateness of
  one timer = the business instant its wait step ran minus the instant it was due
  (``journey_steps``);
* ``steps_per_s``: instances of a second journey whose waits all end at the same instant;
  the clock jumps past it and the runner drains them: (wait steps + send steps) / wall
  time from the jump until the last send is recorded (render, ledger, file sink); with
  ``campaigns_cpu_us_per_step`` (this process's CPU over the burst, the service runs in it)
  and ``postgres_cpu_us_per_step`` (the CPU of this database's backends);
* ``wait_for_event_match_p99_ms``: instances waiting for ``order_placed`` with
  ``cart_id = $cart_id``; one matching event at a time is handed to the service's event
  handler (``Engine.handle_customer_events``, what the stream consumer calls): wall time
  from the call until its instance has moved on (recorded, its next step run). The
  stream's own latency (ingestion → Redis → consumer) is not included: see
  bench/triggers.py for it.

Data: 100,000 instances of each timer journey (``--quick``: 5,000) and 2,000 waiting
instances (``--quick``: 500, 200 of them matched). The load generator shares the
machine's cores with the service and PostgreSQL: figures are comparable only between runs
on a quiet machine of the same size; the load average is printed.

Usage: python bench/journeys.py [--quick] [--instances N]. The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

import asyncpg
import common
import grpc
from common import REDIS_URL, drop_database, fresh_database
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as seg
from google.protobuf import duration_pb2

from eventline_campaigns.model import CUSTOMER_TRIGGER, Trigger
from eventline_campaigns.service import RunningCampaigns, running
from eventline_campaigns.settings import Settings
from eventline_cli.demo_campaigns import on_customer_event
from eventline_shared.values import datetime_to_timestamp

DATABASE = "eventline_bench_journeys"
BENCH = "bench-journeys"
"""The application name of the benchmark's own connections (not counted as the service's)."""
HOUR = dt.timedelta(hours=1)


class OffsetClock:
    """The wall clock moved by an offset the benchmark sets (business time)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def set(self, instant: dt.datetime) -> None:
        self.offset = instant - dt.datetime.now(dt.UTC)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def journey(name: str, event_name: str, wait: dt.timedelta) -> campaigns_pb2.Campaign:
    action = campaigns_pb2.Action(
        email=campaigns_pb2.EmailAction(subject="Hello {{ client.customer_id }}", text_body="Hi")
    )
    waited = duration_pb2.Duration()
    waited.FromTimedelta(wait)
    return campaigns_pb2.Campaign(
        display_name=name,
        trigger=on_customer_event(event_name),
        steps=[
            campaigns_pb2.Step(
                step_id="pause", wait=campaigns_pb2.WaitStep(duration=waited, next_step_id="hello")
            ),
            campaigns_pb2.Step(step_id="hello", send=campaigns_pb2.SendStep(action=action, next_step_id="")),
        ],
    )


def cart_journey() -> campaigns_pb2.Campaign:
    predicate = seg.Predicate(
        field="cart_id", operator=seg.OPERATOR_EQUALS, value=seg.Operand(reference="$cart_id")
    )
    return campaigns_pb2.Campaign(
        display_name="Carts",
        trigger=on_customer_event("cart_updated"),
        steps=[
            campaigns_pb2.Step(
                step_id="wait_order",
                wait_for_event=campaigns_pb2.WaitForEventStep(
                    event=campaigns_pb2.EventMatch(event_name="order_placed", context_predicates=[predicate]),
                    timeout=duration_pb2.Duration(seconds=86400),
                    arrived_step_id="bought",
                ),
            ),
            campaigns_pb2.Step(step_id="bought", exit=campaigns_pb2.ExitStep()),
        ],
    )


def event(customer_id: str, name: str, at: dt.datetime, **context: str) -> common_pb2.Event:
    out = common_pb2.Event(
        event_id=uuid.uuid4().hex,
        customer_id=customer_id,
        name=name,
        kind=common_pb2.EVENT_KIND_CUSTOMER,
        context={k: common_pb2.Value(string_value=v) for k, v in context.items()},
    )
    out.occurred_at.CopyFrom(datetime_to_timestamp(at))
    out.received_at.CopyFrom(datetime_to_timestamp(dt.datetime.now(dt.UTC)))
    return out


async def enter(
    served: RunningCampaigns, trigger: str, events: list[common_pb2.Event], batch: int = 1000
) -> None:
    [campaign] = served.cache.for_trigger(CUSTOMER_TRIGGER, trigger)
    for start in range(0, len(events), batch):
        await served.journeys.enter([(campaign, Trigger.of(e)) for e in events[start : start + batch]])


async def wait_for(pool: asyncpg.Pool, campaign_id: str, timeout_s: float) -> None:
    """Until no instance of the campaign is active (its last step, the send, is recorded)."""
    deadline = time.monotonic() + timeout_s
    # One connection for all the polls: a pool's reset after each would cost the database
    # (measured with the service's backends) a statement per poll. The poll probes the
    # (campaign, status) index for one active instance: counting the recorded steps instead
    # read every step row of the campaign 50 times a second, as much work for the database
    # as the steps themselves.
    async with pool.acquire() as connection:
        while await connection.fetchval(
            "SELECT EXISTS (SELECT FROM journey_instances WHERE campaign_id = $1 AND status = 1)", campaign_id
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{campaign_id} not done within {timeout_s} s")
            await asyncio.sleep(0.02)


async def backend_cpu_s(pool: asyncpg.Pool) -> dict[int, float]:
    """CPU seconds of this benchmark database's PostgreSQL backends (same host), by pid, but
    the benchmark's own (its polls)."""
    pids = [
        r[0]
        for r in await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2", DATABASE, BENCH
        )
    ]
    return common.backend_cpu(pids)


async def main(instances: int, waiting: int, matched: int) -> dict[str, Any]:
    url = await fresh_database(DATABASE)
    sink = tempfile.mkdtemp(prefix="eventline-bench-journeys-")
    env = {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_STREAM": f"bench-journeys-{uuid.uuid4().hex[:8]}",
        "EVENTLINE_CAMPAIGNS_PORT": "0",
        "EVENTLINE_CAMPAIGNS_SINK_DIR": sink,
        "EVENTLINE_SEGMENTATION_ADDR": "127.0.0.1:9",  # no branch step: never called
        "EVENTLINE_SHUTDOWN_GRACE_S": "2",
    }
    customers = [f"b{i:06d}" for i in range(instances)]
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4, server_settings={"application_name": BENCH})
    await pool.copy_records_to_table(
        "customers",
        records=[(c, f"{c}@example.com", 1) for c in customers],
        columns=["customer_id", "email", "email_consent"],
    )
    clock = OffsetClock()
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    clock.set(start)
    result: dict[str, Any] = {"instances": instances}
    try:
        async with running(Settings.from_env({**os.environ, **env}), consume=False, clock=clock) as served:
            served.journeys.poll_s = 0.02
            async with grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
                for campaign_id, spec in (
                    ("spread", journey("Spread", "joined", HOUR)),
                    ("burst", journey("Burst", "signed_up", 2 * HOUR)),
                    ("carts", cart_journey()),
                ):
                    await stub.CreateCampaign(
                        campaigns_pb2.CreateCampaignRequest(campaign=spec, campaign_id=campaign_id)
                    )
                    await stub.ActivateCampaign(
                        campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id)
                    )

            # Entries: "spread" over one minute of business time, "burst" at one instant.
            entered = time.perf_counter()
            per_second = max(1, instances // 60)
            for second in range(60):
                clock.set(start + dt.timedelta(seconds=second))
                chunk = customers[
                    second * per_second : (second + 1) * per_second if second < 59 else instances
                ]
                await enter(served, "joined", [event(c, "joined", clock.now()) for c in chunk])
            clock.set(start + dt.timedelta(seconds=61))
            await enter(served, "signed_up", [event(c, "signed_up", clock.now()) for c in customers])
            carts = customers[:waiting]
            await enter(
                served,
                "cart_updated",
                [event(c, "cart_updated", clock.now(), cart_id=f"cart-{c}") for c in carts],
            )
            result["enter_s"] = round(time.perf_counter() - entered, 1)

            # Waits ending within one minute, fired by the service's own loop in real time.
            clock.set(start + HOUR - dt.timedelta(seconds=0.5))
            runner = asyncio.create_task(served.journeys.run())
            fired = time.perf_counter()
            await wait_for(pool, "spread", 600)
            result["spread_s"] = round(time.perf_counter() - fired, 1)
            lateness = [
                float(r[0])
                for r in await pool.fetch(
                    "SELECT extract(epoch FROM finished_at - (entered_at + interval '1 hour')) * 1000 "
                    "FROM journey_steps WHERE campaign_id = 'spread' AND step_id = 'pause'"
                )
            ]

            # Every wait of "burst" ends at the same instant: the runner's throughput.
            backends_before = await backend_cpu_s(pool)
            cpu_before = time.process_time()
            clock.set(start + dt.timedelta(seconds=61) + 2 * HOUR)
            jumped = time.perf_counter()
            await wait_for(pool, "burst", 600)
            burst_s = time.perf_counter() - jumped
            cpu_s = time.process_time() - cpu_before
            backends_after = await backend_cpu_s(pool)
            postgres_cpu_s = sum(t - backends_before.get(pid, 0.0) for pid, t in backends_after.items())
            served.journeys.shutdown()
            await runner

            # Matching events, one at a time, through the service's event handler.
            matches: list[float] = []
            for c in carts[:matched]:
                paid = event(c, "order_placed", clock.now(), cart_id=f"cart-{c}")
                began = time.perf_counter()
                await served.engine.handle_customer_events([paid])
                matches.append((time.perf_counter() - began) * 1000)
            resumed = await pool.fetchval(
                "SELECT count(*) FROM journey_steps WHERE campaign_id = 'carts' AND step_id = 'wait_order' AND outcome = 'arrived'"
            )
            if resumed != matched:
                raise SystemExit(
                    f"{resumed} of {matched} waiting instances resumed: the measurement is wrong"
                )
            sent = await pool.fetchval("SELECT count(*) FROM deliveries WHERE status = 2")
            if sent != 2 * instances:
                raise SystemExit(f"{sent} messages sent, {2 * instances} expected")
    finally:
        await pool.close()
        await drop_database(DATABASE)
    result.update(
        timer_lateness_p50_ms=round(statistics.median(lateness), 1),
        timer_lateness_p99_ms=round(p99(lateness), 1),
        timer_lateness_max_ms=round(max(lateness), 1),
        steps_per_s=round(2 * instances / burst_s),
        campaigns_cpu_us_per_step=round(cpu_s / (2 * instances) * 1e6),
        postgres_cpu_us_per_step=round(postgres_cpu_s / (2 * instances) * 1e6),
        wait_for_event_match_p50_ms=round(statistics.median(matches), 2),
        wait_for_event_match_p99_ms=round(p99(matches), 2),
        load_average=[round(x, 2) for x in os.getloadavg()],
    )
    return result


if __name__ == "__main__":
    parser = common.command_line(
        __doc__, quick="5,000 instances per timer journey, 500 waiting (200 matched)"
    )
    parser.add_argument("--instances", type=int, default=0, help="instances per timer journey")
    options = parser.parse_args()
    count = options.instances or (5000 if options.quick else 100_000)
    waiting = min(count, 500 if options.quick else 2000)
    figures = asyncio.run(main(count, waiting, min(200, waiting)))
    print(json.dumps(figures))
