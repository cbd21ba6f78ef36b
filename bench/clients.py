"""Python client benchmark: track_many through eventline_client against raw TrackEvents calls.

Starts the ingestion service as its own process on a database of its own, then sends the
same events (customers from a pool of 10,000, 20 names, contexts like {"item_id": 123,
"amount": Decimal("12.34")}) two ways, alternating rounds so that both see the same
machine:

* raw: TrackEventsRequest messages of 1,000 events built with the generated code from the
  same Python values, 4 calls in flight, ids made by the caller;
* client: ``AsyncClient.track_many`` of ``CustomerEvent``s (generated ids, batching under
  the count and byte limits, outcome objects, retries armed), 4 batches in flight.

The clock of each round runs from the first message built to the last reply in (every
reply means committed). The ratio client/raw is what the convenience costs (target >= 0.9).

Usage: python bench/clients.py [--quick]. The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import os
import random
import time
import uuid

import common
import grpc
import redis.asyncio as redis
from common import REDIS_URL, free_port, fresh_database, serving, start_service, stop
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_client import AsyncClient, CustomerEvent, Tracked, to_timestamp

NAMES = [f"Event{i:02d}" for i in range(20)]
BATCH = 1000
IN_FLIGHT = 4

Row = tuple[str, str, dt.datetime, dict[str, int | decimal.Decimal]]


def make_events(count: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return [
        (
            f"c{int(rng.paretovariate(1.2)) % 10_000}",
            rng.choice(NAMES),
            start + dt.timedelta(seconds=rng.randrange(86_400 * 90)),
            {
                "item_id": rng.randrange(1, 10_000),
                "amount": decimal.Decimal(rng.randrange(100, 100_000)) / 100,
            },
        )
        for _ in range(count)
    ]


async def raw_round(stub: ingestion_pb2_grpc.IngestionServiceStub, rows: list[Row]) -> float:
    """Seconds to send ``rows`` as hand-built TrackEvents calls."""
    started = time.perf_counter()
    chunks = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]

    def request(chunk: list[Row]) -> ingestion_pb2.TrackEventsRequest:
        items = []
        for customer, name, occurred, context in chunk:
            event = ingestion_pb2.TrackCustomerEventRequest(
                event_id=uuid.uuid4().hex, customer_id=customer, name=name, occurred_at=to_timestamp(occurred)
            )
            event.context["item_id"].integer_value = int(context["item_id"])
            event.context["amount"].decimal_value = str(context["amount"])
            items.append(ingestion_pb2.TrackEventsItem(customer_event=event))
        return ingestion_pb2.TrackEventsRequest(events=items)

    async def worker() -> None:
        while chunks:
            reply = await stub.TrackEvents(request(chunks.pop(0)), timeout=60)
            assert all(result.WhichOneof("result") == "event" for result in reply.results)

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


async def client_round(client: AsyncClient, rows: list[Row]) -> float:
    """Seconds to send ``rows`` through ``track_many``."""
    started = time.perf_counter()
    outcomes = await client.track_many(
        CustomerEvent(customer, name, context, occurred) for customer, name, occurred, context in rows
    )
    elapsed = time.perf_counter() - started
    assert len(outcomes) == len(rows) and all(isinstance(outcome, Tracked) for outcome in outcomes)
    return elapsed


async def main(quick: bool) -> dict[str, float]:
    total = 20_000 if quick else 200_000
    rounds = 4 if quick else 10  # per side, alternating: the machine changes less within a pair
    rows = make_events(total, seed=1)
    per_round = [rows[i::rounds] for i in range(rounds)]
    url = await fresh_database("eventline_bench_clients")
    port = free_port()
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"
    process = start_service(
        "ingestion",
        {
            "EVENTLINE_DATABASE_URL": url,
            "EVENTLINE_REDIS_URL": REDIS_URL,
            "EVENTLINE_STREAM": stream,
            "EVENTLINE_INGESTION_PORT": str(port),
            "EVENTLINE_INGESTION_DB_POOL_SIZE": "16",
            "EVENTLINE_LOG_LEVEL": "WARNING",
        },
    )
    raw_s = client_s = 0.0
    try:
        await serving(port)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            AsyncClient(f"127.0.0.1:{port}", max_batch_events=BATCH, concurrency=IN_FLIGHT) as client,
        ):
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            await raw_round(stub, make_events(BATCH, seed=2))  # warm both paths up
            await client_round(client, make_events(BATCH, seed=3))
            for index, part in enumerate(per_round):
                # Alternate which side goes first so that neither always meets a warmer database.
                if index % 2 == 0:
                    raw_s += await raw_round(stub, part)
                    client_s += await client_round(client, part)
                else:
                    client_s += await client_round(client, part)
                    raw_s += await raw_round(stub, part)
    finally:
        stop(process)
        connection = redis.Redis.from_url(REDIS_URL)
        await connection.delete(stream)
        await connection.aclose()
    raw_per_s, client_per_s = total / raw_s, total / client_s
    return {
        "events_per_side": total,
        "client_events_per_s": round(client_per_s),
        "raw_events_per_s": round(raw_per_s),
        "client_to_raw_ratio": round(client_per_s / raw_per_s, 3),
        "cpus": os.cpu_count() or 0,
    }


if __name__ == "__main__":
    parser = common.command_line(__doc__, quick="20,000 events per side instead of 200,000")
    result = asyncio.run(main(parser.parse_args().quick))
    print(
        f"track_many: {result['client_events_per_s']} events/s, raw TrackEvents: {result['raw_events_per_s']} events/s, "
        f"ratio {result['client_to_raw_ratio']} (target >= 0.9)"
    )
    print(json.dumps(result))
