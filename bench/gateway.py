"""HTTP/JSON gateway benchmark: JSON batch ingest through the gateway against gRPC TrackEvents.

Starts the ingestion service and the gateway as their own processes on a database of their
own, then sends the same kind of events (customers from a pool of 10,000, 20 names,
contexts like {"item_id": 123, "amount": "12.34"}, explicit occurred_at) two ways,
alternating rounds so that both see the same machine:

* gRPC: TrackEventsRequest messages of 500 events straight to ingestion, 4 calls in flight;
* JSON: the same batches as proto3 JSON bodies, POST /v1/events:batchTrack to the gateway
  (which transcodes them to the same TrackEvents call), 4 requests in flight.

Both sides build their requests before the clock starts (the figure is the server side's,
not the benchmark's own encoding), and both read every reply and check that each event was
stored. The clock runs from the first request sent to the last reply read (every reply
means committed). The ratio JSON/gRPC is what the HTTP edge costs (target >= 0.7).

``callbacks_per_s`` (provider status callbacks, target >= 2,000): afterwards the campaign
service is started too, the ledger is given one sent e-mail delivery per callback, and
Mailgun webhooks (one "delivered" event each, as Mailgun sends them, each with its own
token, signed with the signing key) are POSTed to /v1/callbacks/mailgun, ``CALLBACKS_IN_FLIGHT``
at a time, each on a keep-alive HTTP/1.1 connection of its own (``Poster``: the request
bytes a provider sends, each reply read and checked, without a general client's per-request
objects, which cost as much CPU as the gateway on the cores they share). Each is verified,
checked against replays and recorded on the ledger through the campaign service's
RecordDeliveryEvents (the callbacks that arrive while a call is in flight share the next call
and one PostgreSQL statement, each answered with its own outcome); every reply must say
recorded 1, and the ledger must hold one report per delivery at the end.

Beside the rate, the CPU each callback cost (read from the kernel around the measured round,
less moved by a shared machine's load than the rate): ``gateway_cpu_us_per_callback``,
``campaigns_cpu_us_per_callback``, ``database_cpu_us_per_callback`` (the PostgreSQL backends
of the run's database) and ``client_cpu_us_per_callback`` (this process, the load generator,
which shares the machine), and ``callbacks_per_recording_call`` (callbacks per
RecordDeliveryEvents call, from the campaign service's /metrics: each call's fixed cost is
spread over them). Then the floor: the same bodies, client and concurrency against a bare
aiohttp server that reads each body and answers without verifying or recording anything
(``bare_http_callbacks_per_s``, ``bare_http_cpu_us_per_callback``): what HTTP alone costs on
the machine at that moment. ``--callbacks-only`` runs only this phase.

Both gateways run ``--gateway-workers`` processes on their port (``EVENTLINE_GATEWAY_WORKERS``,
SO_REUSEPORT; default 1): one Python process serves HTTP on about one core, so on a host
with idle cores more workers take more callbacks; on a 2-core machine already busy they
gained nothing measurable (docs/performance.md), hence the default.

Usage: python bench/gateway.py [--quick] [--gateway-workers N] [--callbacks-only]. The last
line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
import urllib.parse
import uuid
from typing import Any

import aiohttp
import asyncpg
import common
import grpc
import orjson
import psutil
import redis.asyncio as redis
from aiohttp import web
from common import REDIS_URL, drop_database, free_port, fresh_database, serving, start_service, stop
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from google.protobuf import json_format

from eventline_shared.dev import harness

NAMES = [f"Event{i:02d}" for i in range(20)]
BATCH = 500
IN_FLIGHT = 4
CALLBACKS_IN_FLIGHT = 32
MAILGUN_KEY = "bench-mailgun-signing-key"
DATABASE = "eventline_bench_gateway"


def make_batches(count: int, seed: int) -> list[ingestion_pb2.TrackEventsRequest]:
    """``count`` events in TrackEventsRequests of ``BATCH``, every event id new."""
    rng = random.Random(seed)
    start = 1_704_067_200  # 2024-01-01T00:00:00Z
    batches = []
    for first in range(0, count, BATCH):
        request = ingestion_pb2.TrackEventsRequest()
        for _ in range(min(BATCH, count - first)):
            event = request.events.add().customer_event
            event.event_id = uuid.uuid4().hex
            event.customer_id = f"c{int(rng.paretovariate(1.2)) % 10_000}"
            event.name = rng.choice(NAMES)
            event.occurred_at.seconds = start + rng.randrange(86_400 * 90)
            event.context["item_id"].integer_value = rng.randrange(1, 10_000)
            event.context["amount"].decimal_value = f"{rng.randrange(100, 100_000) / 100:.2f}"
        batches.append(request)
    return batches


async def grpc_round(stub: Any, batches: list[ingestion_pb2.TrackEventsRequest]) -> float:
    """Seconds to send ``batches`` as TrackEvents calls, ``IN_FLIGHT`` at a time."""
    queue = list(batches)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            reply = await stub.TrackEvents(queue.pop(), timeout=60)
            assert all(result.WhichOneof("result") == "event" for result in reply.results)

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


async def json_round(
    session: aiohttp.ClientSession, url: str, bodies: list[bytes], sizes: list[int]
) -> float:
    """Seconds to POST ``bodies`` to the gateway, ``IN_FLIGHT`` at a time."""
    queue = list(zip(bodies, sizes, strict=True))
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            body, size = queue.pop()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                reply = orjson.loads(await response.read())
                assert response.status == 200, reply
            results = reply["results"]
            assert len(results) == size and all("event" in result for result in results)

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


async def seed_deliveries(url: str, count: int) -> list[int]:
    """``count`` customers with one sent e-mail delivery each (what callbacks report on)."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "INSERT INTO customers (customer_id, email, email_consent)"
            " SELECT 'cb' || i, 'cb' || i || '@example.com', 1 FROM generate_series(1, $1) AS i",
            count,
        )
        await connection.execute(
            "INSERT INTO campaigns (campaign_id, display_name, state, spec) VALUES ('bench', 'bench', 4, '')"
        )
        rows = await connection.fetch(
            "INSERT INTO deliveries (customer_id, campaign_id, event_id, channel, status)"
            " SELECT 'cb' || i, 'bench', 'e' || i, 1, 2 FROM generate_series(1, $1) AS i RETURNING delivery_id",
            count,
        )
        return [r[0] for r in rows]
    finally:
        await connection.close()


def mailgun_webhook(delivery_id: int, token: str) -> bytes:
    """A Mailgun "delivered" webhook for a delivery, signed as Mailgun signs them."""
    stamp = str(int(time.time()))
    signature = hmac.new(MAILGUN_KEY.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return orjson.dumps(
        {
            "signature": {"timestamp": stamp, "token": token, "signature": signature},
            "event-data": {
                "event": "delivered",
                "id": token,
                "timestamp": time.time(),
                "recipient": f"cb{delivery_id}@example.com",
                "message": {"headers": {"message-id": f"delivery-{delivery_id}@eventline.local"}},
            },
        }
    )


def bare_http_server(port: int) -> None:
    """The floor of the callback path: aiohttp serving the callback route as the gateway does
    (access log off), with a handler that reads the body and answers as a recorded callback
    does, verifying and recording nothing."""
    reply = orjson.dumps({"recorded": 1, "unmatched": 0, "duplicates": 0})

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/callbacks/{provider}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def bare_http_round(bodies: list[bytes]) -> tuple[float, float]:
    """Callbacks per second and server CPU µs per callback of ``bare_http_server`` on the same
    bodies, same concurrency and same client: what HTTP alone costs on this machine now."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--bare-http-server", str(port)])
    try:
        requests = callback_requests(f"http://127.0.0.1:{port}/v1/callbacks/mailgun", bodies)
        connections = await posters(f"http://127.0.0.1:{port}", wait_s=10)
        await callbacks_round(connections, requests[:500])  # warm-up
        cpu = common.cpu_seconds(server.pid)
        seconds = await callbacks_round(connections, requests[500:])
        cpu = common.cpu_seconds(server.pid) - cpu
        close(connections)
    finally:
        stop(server)
    count = len(bodies) - 500
    return count / seconds, cpu * 1e6 / count


class Poster(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that POSTs one request at a time and reads each reply
    (status line, headers, a ``Content-Length`` body). The callbacks' load generator: the
    requests are the bytes a provider sends, over TCP on loopback, and every reply is read and
    checked; it only skips what a general client does per request (a request object, header
    multidicts, cookie handling, a response object), which cost about as much CPU per callback
    as the gateway itself and share the machine's cores with the processes being measured."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.reply: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.reply is None or self.reply.done():
            return
        end = self.received.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.received[:end]).lower()
        start = head.find(b"\r\ncontent-length:")
        if start < 0:
            self.reply.set_exception(ConnectionError(f"a reply without Content-Length: {head!r}"))
            return
        line_end = head.find(b"\r\n", start + 2)
        length = int(head[start + 17 : line_end if line_end > 0 else len(head)])
        if len(self.received) < end + 4 + length:
            return
        body = bytes(self.received[end + 4 : end + 4 + length])
        del self.received[: end + 4 + length]
        self.reply.set_result((int(head[9:12]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError(f"the connection closed: {exc}"))

    async def post(self, request: bytes) -> tuple[int, bytes]:
        """The status and body of the reply to ``request`` (a whole HTTP/1.1 request)."""
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.reply


async def posters(url: str, wait_s: float = 0.0) -> list[Poster]:
    """``CALLBACKS_IN_FLIGHT`` connections to the host of ``url`` (retrying for up to ``wait_s``
    while nothing listens there yet)."""
    address = urllib.parse.urlsplit(url)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            connected = [
                await loop.create_connection(Poster, address.hostname, address.port)
                for _ in range(CALLBACKS_IN_FLIGHT)
            ]
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        return [protocol for _, protocol in connected]


def close(connections: list[Poster]) -> None:
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()


def callback_requests(url: str, bodies: list[bytes]) -> list[bytes]:
    """Each webhook as the HTTP/1.1 request a provider sends to ``url``."""
    address = urllib.parse.urlsplit(url)
    return [
        (
            f"POST {address.path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
            f"User-Agent: eventline-bench\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]


async def callbacks_round(connections: list[Poster], requests: list[bytes]) -> float:
    """Seconds to POST every webhook, one at a time on each connection; each must be recorded."""
    queue = list(requests)
    started = time.perf_counter()

    async def worker(connection: Poster) -> None:
        while queue:
            status, body = await connection.post(queue.pop())
            reply = orjson.loads(body)
            assert status == 200 and reply["recorded"] == 1, (status, reply)

    await asyncio.gather(*(worker(connection) for connection in connections))
    return time.perf_counter() - started


async def recording_calls(metrics_port: int) -> float:
    """RecordDeliveryEvents calls the campaign service has answered, from its /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{metrics_port}/metrics") as reply,
    ):
        text = await reply.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("eventline_rpcs_total{") and 'grpc_method="RecordDeliveryEvents"' in line
    )


async def database_backends(url: str) -> list[int]:
    """The pids of the PostgreSQL backends connected to the database of ``url``."""
    admin = await asyncpg.connect(common.POSTGRES_URL)
    try:
        rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", url.rsplit("/", 1)[1])
    finally:
        await admin.close()
    return [row["pid"] for row in rows]


async def measure_callbacks(
    url: str, env: dict[str, str], count: int, gateway_workers: int
) -> dict[str, float]:
    """Provider callbacks per second through a gateway before the campaign service, and the
    CPU each callback cost the gateway, the campaign service and PostgreSQL (read from the
    kernel around the measured round: less moved by a shared machine's load than the rate)."""
    delivery_ids = await seed_deliveries(url, count + 500)
    campaigns_port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    campaigns = start_service(
        "campaigns",
        {
            **env,
            "EVENTLINE_CAMPAIGNS_PORT": str(campaigns_port),
            "EVENTLINE_SEGMENTATION_ADDR": f"127.0.0.1:{free_port()}",
            "EVENTLINE_CAMPAIGNS_DB_POOL_SIZE": "16",
            "EVENTLINE_CAMPAIGNS_RENDER_WORKERS": "1",
            "EVENTLINE_CAMPAIGNS_METRICS_PORT": str(metrics_port),
        },
    )
    gateway = start_service(
        "gateway",
        {
            **env,
            "EVENTLINE_GATEWAY_PORT": str(gateway_port),
            "EVENTLINE_CAMPAIGNS_ADDR": f"127.0.0.1:{campaigns_port}",
            "EVENTLINE_GATEWAY_REQUIRED_BACKENDS": "campaigns",
            "EVENTLINE_MAILGUN_SIGNING_KEY": MAILGUN_KEY,
            "EVENTLINE_GATEWAY_WORKERS": str(gateway_workers),
        },
    )
    try:
        await serving(campaigns_port)
        endpoint = f"http://127.0.0.1:{gateway_port}"
        await harness.wait_http_ready(endpoint + "/readyz", interval_s=0.1)
        bodies = [mailgun_webhook(d, uuid.uuid4().hex) for d in delivery_ids]
        requests = callback_requests(endpoint + "/v1/callbacks/mailgun", bodies)
        connections = await posters(endpoint)
        await callbacks_round(connections, requests[:500])  # warm-up
        backends = await database_backends(url)
        calls = await recording_calls(metrics_port)
        client = psutil.Process()
        client_cpu = sum(client.cpu_times()[:2])
        before = (
            common.cpu_seconds(gateway.pid),
            common.cpu_seconds(campaigns.pid),
            common.backend_cpu(backends),
        )
        seconds = await callbacks_round(connections, requests[500:])
        # Backends opened during the round count whole (they had no CPU before it).
        after = (
            common.cpu_seconds(gateway.pid),
            common.cpu_seconds(campaigns.pid),
            common.backend_cpu(await database_backends(url)),
        )
        client_cpu = sum(client.cpu_times()[:2]) - client_cpu
        calls = await recording_calls(metrics_port) - calls
        close(connections)
        connection = await asyncpg.connect(url)
        try:
            stored = await connection.fetchval("SELECT count(DISTINCT delivery_id) FROM delivery_events")
        finally:
            await connection.close()
        assert stored == len(delivery_ids), f"{stored} deliveries have a report, expected {len(delivery_ids)}"
    finally:
        stop(gateway, campaigns)
    bare_per_s, bare_cpu_us = await bare_http_round(bodies)
    database_s = sum(t - before[2].get(pid, 0.0) for pid, t in after[2].items())
    return {
        "callbacks_per_s": count / seconds,
        "gateway_cpu_us_per_callback": (after[0] - before[0]) * 1e6 / count,
        "campaigns_cpu_us_per_callback": (after[1] - before[1]) * 1e6 / count,
        "database_cpu_us_per_callback": database_s * 1e6 / count,
        "client_cpu_us_per_callback": client_cpu * 1e6 / count,
        "callbacks_per_recording_call": count / calls,
        "bare_http_callbacks_per_s": bare_per_s,
        "bare_http_cpu_us_per_callback": bare_cpu_us,
    }


def rounded(figures: dict[str, float]) -> dict[str, float]:
    return {
        name: round(value) if name.endswith("_per_s") else round(value, 1) for name, value in figures.items()
    }


async def callbacks_only(quick: bool, gateway_workers: int) -> dict[str, Any]:
    """Only the callbacks phase, on a fresh database (what a change to that path is measured by)."""
    url = await fresh_database(DATABASE)
    env = {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_LOG_LEVEL": "WARNING",
    }
    try:
        figures = await measure_callbacks(url, env, 5_000 if quick else 30_000, gateway_workers)
    finally:
        await drop_database(DATABASE)
    return {**rounded(figures), "gateway_workers": gateway_workers, "cpus": os.cpu_count() or 0}


async def main(quick: bool, gateway_workers: int) -> dict[str, Any]:
    total = 20_000 if quick else 200_000
    rounds = 4 if quick else 10  # per side, alternating: the machine changes less within a pair
    url = await fresh_database(DATABASE)
    ingestion_port, gateway_port = free_port(), free_port()
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"
    env = {
        "EVENTLINE_DATABASE_URL": url,
        "EVENTLINE_REDIS_URL": REDIS_URL,
        "EVENTLINE_STREAM": stream,
        "EVENTLINE_LOG_LEVEL": "WARNING",
    }
    ingestion = start_service(
        "ingestion",
        {**env, "EVENTLINE_INGESTION_PORT": str(ingestion_port), "EVENTLINE_INGESTION_DB_POOL_SIZE": "16"},
    )
    gateway = start_service(
        "gateway",
        {
            **env,
            "EVENTLINE_GATEWAY_PORT": str(gateway_port),
            "EVENTLINE_INGESTION_ADDR": f"127.0.0.1:{ingestion_port}",
            "EVENTLINE_GATEWAY_WORKERS": str(gateway_workers),
        },
    )
    grpc_s = json_s = 0.0
    try:
        await serving(ingestion_port)
        endpoint = f"http://127.0.0.1:{gateway_port}"
        connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{ingestion_port}") as channel,
            aiohttp.ClientSession(connector=connector) as session,
        ):
            await harness.wait_http_ready(endpoint + "/readyz", interval_s=0.1)
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            track = endpoint + "/v1/events:batchTrack"

            def as_json(batches: list[ingestion_pb2.TrackEventsRequest]) -> tuple[list[bytes], list[int]]:
                bodies = [json.dumps(json_format.MessageToDict(b)).encode() for b in batches]
                return bodies, [len(b.events) for b in batches]

            # Warm both paths up (connections, the database's caches, the gateway's routes).
            await grpc_round(stub, make_batches(2 * BATCH * IN_FLIGHT, seed=2))
            await json_round(session, track, *as_json(make_batches(2 * BATCH * IN_FLIGHT, seed=3)))
            per_round = total // rounds
            for index in range(rounds):
                grpc_batches = make_batches(per_round, seed=10 + 2 * index)
                json_bodies = as_json(make_batches(per_round, seed=11 + 2 * index))
                # Alternate which side goes first so that neither always meets a warmer database.
                if index % 2 == 0:
                    grpc_s += await grpc_round(stub, grpc_batches)
                    json_s += await json_round(session, track, *json_bodies)
                else:
                    json_s += await json_round(session, track, *json_bodies)
                    grpc_s += await grpc_round(stub, grpc_batches)
            events = per_round * rounds
        callbacks = await measure_callbacks(url, env, 5_000 if quick else 30_000, gateway_workers)
    finally:
        stop(gateway, ingestion)
        connection = redis.Redis.from_url(REDIS_URL)
        await connection.delete(stream)
        await connection.aclose()
        await drop_database(DATABASE)
    grpc_per_s, json_per_s = events / grpc_s, events / json_s
    return {
        "events_per_side": events,
        "batch_events": BATCH,
        "json_batch_events_per_s": round(json_per_s),
        "grpc_batch_events_per_s": round(grpc_per_s),
        "json_to_grpc_ratio": round(json_per_s / grpc_per_s, 3),
        **rounded(callbacks),
        "gateway_workers": gateway_workers,
        "cpus": os.cpu_count() or 0,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-http-server"]:
        bare_http_server(int(sys.argv[2]))
        raise SystemExit(0)
    parser = common.command_line(__doc__, quick="20,000 events per side instead of 200,000")
    parser.add_argument(
        "--gateway-workers", type=int, default=1, help="EVENTLINE_GATEWAY_WORKERS of the gateways (default 1)"
    )
    parser.add_argument(
        "--callbacks-only", action="store_true", help="only the callbacks phase (no JSON/gRPC ingest rounds)"
    )
    arguments = parser.parse_args()
    if arguments.callbacks_only:
        result = asyncio.run(callbacks_only(arguments.quick, arguments.gateway_workers))
        print(
            f"provider callbacks: {result['callbacks_per_s']}/s (target >= 2,000); CPU per callback: "
            f"gateway {result['gateway_cpu_us_per_callback']} µs, campaigns {result['campaigns_cpu_us_per_callback']} µs, "
            f"PostgreSQL {result['database_cpu_us_per_callback']} µs"
        )
        print(json.dumps(result))
        raise SystemExit(0)
    result = asyncio.run(main(arguments.quick, arguments.gateway_workers))
    print(
        f"JSON through the gateway: {result['json_batch_events_per_s']} events/s, "
        f"gRPC TrackEvents: {result['grpc_batch_events_per_s']} events/s, "
        f"ratio {result['json_to_grpc_ratio']} (target >= 0.7); "
        f"provider callbacks: {result['callbacks_per_s']}/s (target >= 2,000)"
    )
    print(json.dumps(result))
