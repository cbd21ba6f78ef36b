"""The ingestion service as it runs in production: its own process, signals, crashes."""

from __future__ import annotations

import asyncio
import json

import grpc
import psutil
import pytest
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import service_env
from tests.processes import ServiceProcess
from tests.support import customer_event, wait_until


@pytest.fixture
def ingestion_process(db_url, stream_key, redis_client, tmp_path):  # type: ignore[no-untyped-def]
    process = ServiceProcess("ingestion", service_env(db_url, stream_key), tmp_path)
    yield process
    process.kill()


async def test_serves_health_reflection_and_json_logs(ingestion_process):
    await ingestion_process.start().serving()
    async with grpc.aio.insecure_channel(ingestion_process.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="eventline.ingestion.v1.IngestionService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for r in responses for s in r.list_services_response.service]
        assert "eventline.ingestion.v1.IngestionService" in services
        assert "grpc.health.v1.Health" in services
    ingestion_process.signal()
    assert await ingestion_process.exited() == 0
    lines = [line for line in ingestion_process.logs().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]
    assert all({"ts", "level", "service", "msg"} <= set(r) for r in records)
    assert any(r["msg"] == "ingestion serving" for r in records)


async def test_sigterm_lets_calls_in_flight_finish(ingestion_process, db):
    # The store stalls 5 s, within a grace of 60 s; SIGTERM is sent once the process says the
    # call is in the stall (not after a guessed pause, which a loaded machine can outlast).
    await ingestion_process.start(
        EVENTLINE_FAULTS="writer.before_store=5", EVENTLINE_SHUTDOWN_GRACE_S="60"
    ).serving()
    async with grpc.aio.insecure_channel(ingestion_process.address) as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        call = asyncio.ensure_future(stub.TrackCustomerEvent(customer_event("c1", "A", "inflight")))
        await wait_until(
            lambda: "fault point writer.before_store: stalling" in ingestion_process.logs(),
            60,
            "the call never reached the store",
        )
        ingestion_process.signal()
        reply = await call
        assert reply.event.event_id == "inflight"
    assert await ingestion_process.exited() == 0
    assert await db.fetchval("SELECT count(*) FROM customer_events WHERE event_id = 'inflight'") == 1


async def test_deadline_shorter_than_the_work_is_deadline_exceeded(ingestion_process, db):
    await ingestion_process.start(EVENTLINE_FAULTS="writer.before_store=0.5").serving()
    async with grpc.aio.insecure_channel(ingestion_process.address) as channel:
        stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.TrackCustomerEvent(customer_event("c1", "A", "late"), timeout=0.1)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # A retry with the same id is safe whether or not the first attempt was stored.
        reply = await stub.TrackCustomerEvent(customer_event("c1", "A", "late"), timeout=5)
        assert reply.event.event_id == "late"
    assert await db.fetchval("SELECT count(*) FROM customer_events") == 1


@pytest.mark.slow
async def test_crashes_between_commit_and_publish_lose_nothing(
    ingestion_process, db, redis_client, stream_key
):
    """Issue 6, scenario 2: ingestion dies 50 times around the commit and the publish
    (after the events commit, before the reply; after the stream append, before the
    outbox row is deleted; or by kill -9). Every committed event reaches the stream,
    every stream entry has a committed event, and every acknowledged event is committed."""
    faults = "writer.after_commit=crash@0.3,relay.after_append=crash@0.5"
    acknowledged: set[str] = set()
    for round_ in range(50):
        ingestion_process.start(EVENTLINE_FAULTS=faults)
        try:
            await ingestion_process.serving()
            async with grpc.aio.insecure_channel(ingestion_process.address) as channel:
                stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
                items = [
                    ingestion_pb2.TrackEventsItem(
                        customer_event=customer_event(f"c{i % 3}", "A", f"r{round_}-{i}")
                    )
                    for i in range(5)
                ]
                await stub.TrackEvents(ingestion_pb2.TrackEventsRequest(events=items), timeout=5)
                acknowledged |= {item.customer_event.event_id for item in items}
        except (grpc.aio.AioRpcError, RuntimeError):
            pass  # it crashed first: nothing of this round was acknowledged
        await asyncio.sleep(0.1)
        ingestion_process.kill()  # kill -9 if no fault point did
    ingestion_process.start()
    await ingestion_process.serving()
    deadline = asyncio.get_running_loop().time() + 60
    while await db.fetchval("SELECT count(*) FROM event_outbox") != 0:
        assert asyncio.get_running_loop().time() < deadline, "the relay did not drain the outbox"
        await asyncio.sleep(0.05)
    committed = {r["event_id"] for r in await db.fetch("SELECT event_id FROM customer_events")}
    streamed = {fields[b"event_id"].decode() for _, fields in await redis_client.xrange(stream_key)}
    assert acknowledged <= committed
    assert len(committed) >= 50
    assert streamed == committed
    assert "crashing" in ingestion_process.logs()


async def test_workers_serve_one_port_and_stop_together(ingestion_process, db):
    await ingestion_process.start(EVENTLINE_INGESTION_WORKERS="2").serving()
    workers = await ingestion_process.listening_workers(2)
    # Each channel is one connection, which the kernel gives to one worker or the other.
    for i in range(8):
        async with grpc.aio.insecure_channel(ingestion_process.address) as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            await stub.TrackCustomerEvent(customer_event(f"c{i}", "A", f"w{i}"))
    assert await db.fetchval("SELECT count(*) FROM customer_events WHERE event_id LIKE 'w%'") == 8
    ingestion_process.signal()
    assert await ingestion_process.exited() == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


async def test_a_worker_that_dies_stops_the_unit(ingestion_process):
    await ingestion_process.start(EVENTLINE_INGESTION_WORKERS="2").serving()
    assert ingestion_process.process is not None
    supervisor = psutil.Process(ingestion_process.process.pid)
    await wait_until(lambda: len(supervisor.children()) == 2, 60, "the workers never started")
    first, second = supervisor.children()
    first.kill()
    # Restarted whole by the orchestrator, rather than left serving with one worker short.
    assert await ingestion_process.exited() != 0
    second.wait(30)
    assert "worker 0 exited" in ingestion_process.logs() or "worker 1 exited" in ingestion_process.logs()
