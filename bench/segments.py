"""Segmentation benchmark: five filter shapes through gRPC against hand-written SQL.

Starts the segmentation service as its own process (python -m
eventline_segmentation) on a database of its own (eventline_bench_segments,
or eventline_bench_segments_quick with --quick), kept between runs: the data
is generated only when the database is missing or was made with other
parameters. Every request pins ``now`` to the moment the data was generated,
so reruns ask the same questions of the same data.

Data (COPY, customer_events' indexes and keys dropped during the load and
rebuilt afterwards, customer_event_stats derived as ingestion maintains it,
then VACUUM ANALYZE):

* customers: 100,000 (--quick 10,000), ids c000000…; 10% never have an event;
  the others have an activity weight drawn from lognormal(0, 1.2), so a few
  customers have a hundred times the median number of events; 80% have an
  e-mail, 50% a phone, 30% a push token, consents granted with 60%;
  attributes {"tier": gold 10% / silver 30% / bronze 60%, "half": i % 2};
* customer events: 10,000,000 (--quick 500,000); 20 names E00…E19 with
  Zipf weights 1/(k+1) (E00 ≈ 28% of events, E05 ≈ 4.7%, E19 ≈ 1.4%);
  occurred_at uniform over the 90 days before generation, loaded in time
  order (as events arrive in production, so the heap follows occurred_at);
  context
  {"amount": decimal 1.00…999.99, "item_id": integer 1…999, log-uniform (so
  item 5 is ≈ 2.9% of events, item 42 ≈ 0.34%)}.

Shapes (A = E05, B = E08, C = E02, D = E11):

1. A at least 3 times in the last 30 days;
2. (1) with context item_id = 5 (a fairly popular item, so that the answer
   is not empty: 37 customers on the full data set);
3. days since last B > 14;
4. (1) AND (3);
5. all_of(any_of((1), C in the last 7 days with amount > 500),
   negation(any_of(D in the last 14 days, attribute tier = "bronze")),
   has an e-mail address) — three levels with NOT and any_of.

For each shape: CountCustomers through gRPC and, in the same run, the best
hand-written SQL for the same question over one asyncpg connection (the
floor); p50/p99 of each and their ratio. Then MatchCustomer (shape 5) for
random customers, and StreamCustomers of a 50,000-customer segment
(attribute half = 0; 5,000 with --quick).

Usage: python bench/segments.py [--quick] [--regenerate]. The last line
printed is one JSON object with flat keys.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import common
import grpc
from common import POSTGRES_URL, db_url, free_port, fresh_database, serving, start_service, stop
from eventline.common.v1 import common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc

from eventline_segmentation.service import session_dsn
from eventline_shared import values
from eventline_shared.storage import database

NAMES = [f"E{i:02d}" for i in range(20)]
A, B, C, D = "E05", "E08", "E02", "E11"
UTC = dt.UTC


# --- Data --------------------------------------------------------------------------------


def customer_rows(count: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    for i in range(count):
        tier = rng.choices(["gold", "silver", "bronze"], [1, 3, 6])[0]
        yield (
            f"c{i:06d}",
            f"c{i}@example.com" if rng.random() < 0.8 else "",
            f"+49151{i:07d}" if rng.random() < 0.5 else "",
            [f"tok{i}"] if rng.random() < 0.3 else [],
            f'{{"half": {i % 2}, "tier": "{tier}"}}',
            1 if rng.random() < 0.6 else 2,
            1 if rng.random() < 0.6 else 0,
            1 if rng.random() < 0.6 else 0,
        )


def activity_weights(count: int, rng: random.Random) -> list[float]:
    cumulative, total = [], 0.0
    for _ in range(count):
        total += 0.0 if rng.random() < 0.1 else rng.lognormvariate(0, 1.2)
        cumulative.append(total)
    return cumulative


def event_chunks(
    worker: int, workers: int, count: int, customers: int, cumulative: list[float], generated_at: dt.datetime
) -> Iterator[list[tuple[Any, ...]]]:
    """This worker's events, one chunk per day (days worker, worker + workers, …), in time order."""
    rng = random.Random(1000 + worker)
    name_weights = list(itertools.accumulate(1 / (k + 1) for k in range(20)))
    day_us = 86400 * 10**6
    start = generated_at - dt.timedelta(days=90)
    ids = [f"c{i:06d}" for i in range(customers)]
    log_items = math.log(1000)
    for day in range(worker, 90, workers):
        n = count // 90 + (1 if day < count % 90 else 0)
        who = rng.choices(range(customers), cum_weights=cumulative, k=n)
        names = rng.choices(NAMES, cum_weights=name_weights, k=n)
        offsets = sorted(rng.randrange(day_us) for _ in range(n))
        rows = []
        for j in range(n):
            at = start + dt.timedelta(days=day, microseconds=offsets[j])
            item = int(math.exp(rng.random() * log_items))
            amount = f"{rng.randrange(1, 1000)}.{rng.randrange(100):02d}"
            context = f'{{"amount": {amount}, "item_id": {item}}}'
            rows.append((ids[who[j]], f"e{day}-{j}", names[j], at, at, context))
        yield rows


async def generate(url: str, customers: int, events: int) -> dt.datetime:
    generated_at = dt.datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(7)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.copy_records_to_table(
            "customers",
            records=list(customer_rows(customers, rng)),
            columns=[
                "customer_id",
                "email",
                "phone",
                "push_tokens",
                "attributes",
                "email_consent",
                "sms_consent",
                "push_consent",
            ],
        )
        # Load without indexes and keys, then build them in one pass each.
        rebuild = [
            f"ALTER TABLE customer_events ADD CONSTRAINT {r['conname']} {r['def']}"
            for r in await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
                "WHERE conrelid = 'customer_events'::regclass ORDER BY contype DESC"
            )
        ]
        rebuild += [
            r["def"]
            for r in await conn.fetch(
                "SELECT indexdef AS def FROM pg_indexes WHERE tablename = 'customer_events' "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'customer_events'::regclass)"
            )
        ]
        for r in await conn.fetch(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'customer_events'::regclass ORDER BY contype"
        ):
            await conn.execute(f"ALTER TABLE customer_events DROP CONSTRAINT {r['conname']}")
        for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'customer_events'"):
            await conn.execute(f"DROP INDEX {r['indexname']}")
    finally:
        await conn.close()

    cumulative = activity_weights(customers, rng)
    workers = 2

    async def load(worker: int) -> None:
        c = await asyncpg.connect(url)
        try:
            for rows in event_chunks(worker, workers, events, customers, cumulative, generated_at):
                await c.copy_records_to_table(
                    "customer_events",
                    records=rows,
                    columns=["customer_id", "event_id", "name", "occurred_at", "received_at", "context"],
                )
        finally:
            await c.close()

    started = time.perf_counter()
    await asyncio.gather(*(load(w) for w in range(workers)))
    print(f"  copied {events:,} events in {time.perf_counter() - started:.0f} s", flush=True)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 2")
        for sql in rebuild:
            started = time.perf_counter()
            await conn.execute(sql)
            print(f"  {sql[:90]}… {time.perf_counter() - started:.0f} s", flush=True)
        await conn.execute(
            """INSERT INTO customer_event_stats (customer_id, name, first_at, last_at, count)
               SELECT customer_id, name, min(occurred_at), max(occurred_at), count(*)
               FROM customer_events GROUP BY customer_id, name"""
        )
        await conn.execute("VACUUM ANALYZE customers, customer_events, customer_event_stats")
        await conn.execute("CREATE TABLE bench_meta (customers int, events bigint, generated_at timestamptz)")
        await conn.execute("INSERT INTO bench_meta VALUES ($1, $2, $3)", customers, events, generated_at)
    finally:
        await conn.close()
    return generated_at


async def prepare(name: str, customers: int, events: int, regenerate: bool) -> tuple[str, dt.datetime]:
    url = db_url(name)
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await admin.close()
    if exists and not regenerate:
        conn = await asyncpg.connect(url)
        try:
            meta = (
                await conn.fetchrow("SELECT * FROM bench_meta")
                if await conn.fetchval("SELECT to_regclass('bench_meta') IS NOT NULL")
                else None
            )
        finally:
            await conn.close()
        if meta and (meta["customers"], meta["events"]) == (customers, events):
            await database.migrate_url(url)
            print(
                f"reusing {name}: {customers:,} customers, {events:,} events, generated {meta['generated_at']}"
            )
            return url, meta["generated_at"]
    url = await fresh_database(name)
    print(f"generating {name}: {customers:,} customers, {events:,} events", flush=True)
    started = time.perf_counter()
    generated_at = await generate(url, customers, events)
    print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)
    return url, generated_at


# --- Shapes --------------------------------------------------------------------------------


def ev(name: str, *predicates: pb.Predicate, **test: Any) -> pb.Filter:
    return pb.Filter(event=pb.EventCondition(name=name, predicates=predicates, **test))


def last_days(n: int) -> pb.Period:
    return pb.Period(last=pb.RecentPeriod(amount=n, unit=pb.TIME_UNIT_DAY))


SHAPE1 = ev(A, count=pb.CountTest(period=last_days(30), at_least=3))
SHAPE2 = ev(
    A,
    pb.Predicate(
        field="item_id",
        operator=pb.OPERATOR_EQUALS,
        value=pb.Operand(literal=common_pb2.Value(integer_value=5)),
    ),
    count=pb.CountTest(period=last_days(30), at_least=3),
)
SHAPE3 = ev(B, days_since_last=pb.DaysSinceTest(comparison=pb.COMPARISON_GREATER, days=14))
SHAPE4 = pb.Filter(all_of=pb.FilterList(filters=[SHAPE1, SHAPE3]))
SHAPE5 = pb.Filter(
    all_of=pb.FilterList(
        filters=[
            pb.Filter(
                any_of=pb.FilterList(
                    filters=[
                        SHAPE1,
                        ev(
                            C,
                            pb.Predicate(
                                field="amount",
                                operator=pb.OPERATOR_GREATER,
                                value=pb.Operand(literal=common_pb2.Value(integer_value=500)),
                            ),
                            count=pb.CountTest(period=last_days(7)),
                        ),
                    ]
                )
            ),
            pb.Filter(
                negation=pb.Filter(
                    any_of=pb.FilterList(
                        filters=[
                            ev(D, count=pb.CountTest(period=last_days(14))),
                            pb.Filter(
                                customer=pb.CustomerCondition(
                                    attribute=pb.Predicate(
                                        field="tier",
                                        operator=pb.OPERATOR_EQUALS,
                                        value=pb.Operand(literal=common_pb2.Value(string_value="bronze")),
                                    )
                                )
                            ),
                        ]
                    )
                )
            ),
            pb.Filter(customer=pb.CustomerCondition(has_address=pb.CHANNEL_EMAIL)),
        ]
    )
)
HALF = pb.Filter(
    customer=pb.CustomerCondition(
        attribute=pb.Predicate(
            field="half",
            operator=pb.OPERATOR_EQUALS,
            value=pb.Operand(literal=common_pb2.Value(integer_value=0)),
        )
    )
)


def floors(now: dt.datetime) -> dict[int, tuple[str, list[Any]]]:
    """The hand-written SQL for each shape, with the same bounds (UTC days)."""
    today = dt.datetime(now.year, now.month, now.day, tzinfo=UTC)
    d30, d7, d14 = today - dt.timedelta(days=29), today - dt.timedelta(days=6), today - dt.timedelta(days=13)
    b_bound = today - dt.timedelta(days=14)  # days since > 14 <=> last < start of (today - 14)
    s1 = (
        "SELECT customer_id FROM customer_events WHERE name = $1 AND occurred_at >= $2 AND occurred_at <= $3 "
        "GROUP BY customer_id HAVING count(*) >= 3"
    )
    s2 = (
        "SELECT customer_id FROM customer_events WHERE name = $1 AND occurred_at >= $2 AND occurred_at <= $3 "
        'AND eventline_named_context(name, context) @> \'{"E05": {"item_id": 5}}\' '
        "GROUP BY customer_id HAVING count(*) >= 3"
    )
    return {
        1: (f"SELECT count(*) FROM ({s1}) s", [A, d30, now]),
        2: (f"SELECT count(*) FROM ({s2}) s", [A, d30, now]),
        3: ("SELECT count(*) FROM customer_event_stats WHERE name = $1 AND last_at < $2", [B, b_bound]),
        4: (
            f"SELECT count(*) FROM ({s1}) s JOIN customer_event_stats st "
            "ON st.customer_id = s.customer_id AND st.name = $4 AND st.last_at < $5",
            [A, d30, now, B, b_bound],
        ),
        5: (
            f"""WITH a AS ({s1}),
                c AS (SELECT DISTINCT customer_id FROM customer_events WHERE name = $4 AND occurred_at >= $5
                      AND occurred_at <= $3 AND jsonb_typeof(context -> 'amount') = 'number'
                      AND context -> 'amount' > '500'::jsonb),
                d AS (SELECT DISTINCT customer_id FROM customer_events WHERE name = $6 AND occurred_at >= $7
                      AND occurred_at <= $3)
            SELECT count(*) FROM customers cu
            WHERE cu.email <> '' AND NOT cu.attributes @> '{{"tier": "bronze"}}'
              AND (cu.customer_id IN (SELECT customer_id FROM a) OR cu.customer_id IN (SELECT customer_id FROM c))
              AND NOT EXISTS (SELECT 1 FROM d WHERE d.customer_id = cu.customer_id)""",
            [A, d30, now, C, d7, D, d14],
        ),
    }


# --- Service and measurement -------------------------------------------------------------------


class Service:
    def __init__(self, url: str) -> None:
        self.port = free_port()
        env = {
            "EVENTLINE_DATABASE_URL": url,
            "EVENTLINE_SEGMENTATION_PORT": str(self.port),
            "EVENTLINE_LOG_LEVEL": "WARNING",
        }
        self.process = start_service("segmentation", env)

    def stop(self) -> None:
        stop(self.process)


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return (time.perf_counter() - started) * 1000, result


async def main(quick: bool, regenerate: bool) -> dict[str, float]:
    customers, events = (10_000, 500_000) if quick else (100_000, 10_000_000)
    name = "eventline_bench_segments_quick" if quick else "eventline_bench_segments"
    url, generated_at = await prepare(name, customers, events, regenerate)
    now = values.datetime_to_timestamp(generated_at)
    rounds = 15 if quick else 40
    result: dict[str, float] = {}
    service = Service(url)
    # The floor runs with the service's session settings (see session_dsn).
    floor_conn = await asyncpg.connect(session_dsn(url, 64))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            await serving(service.port)
            stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
            floor_sql = floors(generated_at)
            print(
                f"{'shape':>6} {'count':>8} {'p50 ms':>8} {'p99 ms':>8} {'floor p50':>10} {'floor p99':>10} {'ratio':>6}"
            )
            for shape, flt in enumerate([SHAPE1, SHAPE2, SHAPE3, SHAPE4, SHAPE5], start=1):
                request = pb.CountCustomersRequest(filter=flt, now=now)
                sql, args = floor_sql[shape]
                api, floor = [], []
                counted = floored = -1
                for i in range(rounds + 3):
                    ms, reply = await timed(lambda request=request: stub.CountCustomers(request))
                    fms, fcount = await timed(lambda sql=sql, args=args: floor_conn.fetchval(sql, *args))
                    counted, floored = reply.count, fcount
                    if i >= 3:  # warm-up
                        api.append(ms)
                        floor.append(fms)
                if counted != floored:
                    raise SystemExit(f"shape {shape}: the service counted {counted}, the floor SQL {floored}")
                p50, p99, f50, f99 = pct(api, 50), pct(api, 99), pct(floor, 50), pct(floor, 99)
                print(
                    f"{shape:>6} {counted:>8} {p50:>8.1f} {p99:>8.1f} {f50:>10.1f} {f99:>10.1f} {p50 / f50:>6.2f}",
                    flush=True,
                )
                result[f"shape{shape}_p50_ms"] = round(p50, 2)
                result[f"shape{shape}_p99_ms"] = round(p99, 2)
                result[f"shape{shape}_floor_p50_ms"] = round(f50, 2)
                result[f"shape{shape}_floor_p99_ms"] = round(f99, 2)
                result[f"shape{shape}_ratio"] = round(p50 / f50, 2)
                result[f"shape{shape}_count"] = counted

            rng = random.Random(3)
            matches: list[float] = []
            matched = 0
            members: set[str] = set()
            async for chunk in stub.StreamCustomers(pb.StreamCustomersRequest(filter=SHAPE5, now=now)):
                members.update(chunk.customer_ids)
            for i in range(300 if quick else 1000):
                request = pb.MatchCustomerRequest(
                    filter=SHAPE5, now=now, customer_id=f"c{rng.randrange(customers):06d}"
                )
                ms, reply = await timed(lambda request=request: stub.MatchCustomer(request))
                matched += reply.matched
                if reply.matched != (request.customer_id in members):
                    raise SystemExit(
                        f"MatchCustomer disagrees with StreamCustomers for {request.customer_id}"
                    )
                if i >= 10:
                    matches.append(ms)
            result["match_p50_ms"] = round(pct(matches, 50), 2)
            result["match_p99_ms"] = round(pct(matches, 99), 2)
            print(
                f"match (shape 5): p50 {pct(matches, 50):.2f} ms, p99 {pct(matches, 99):.2f} ms ({matched} matched)"
            )

            rates = []
            for _ in range(3):
                started = time.perf_counter()
                streamed = 0
                async for chunk in stub.StreamCustomers(pb.StreamCustomersRequest(filter=HALF, now=now)):
                    streamed += len(chunk.customer_ids)
                rates.append(streamed / (time.perf_counter() - started))
            result["stream_ids_per_s"] = round(statistics.median(rates))
            result["stream_segment_size"] = streamed
            print(f"stream: {streamed:,} ids at {statistics.median(rates):,.0f} ids/s (median of 3)")
    finally:
        await floor_conn.close()
        service.stop()
    result["customers"] = customers
    result["events"] = events
    return result


if __name__ == "__main__":
    parser = common.command_line(__doc__, quick="the same shapes on 10k customers / 500k events")
    parser.add_argument("--regenerate", action="store_true", help="generate the data again even if it exists")
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.quick, options.regenerate))))
