"""Real-time segments when segmentation is killed (exit 137, as after kill -9) mid-way: the
transition is recorded once, by the replica that takes over the stream entry."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import grpc
import pytest
from eventline.ingestion.v1 import ingestion_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as pb
from eventline.segmentation.v1 import segmentation_pb2_grpc

from eventline_shared.streams import stream
from tests.conftest import service_env
from tests.processes import ServiceProcess
from tests.support import customer_event, eventually


@pytest.mark.parametrize(
    ("point", "recorded_before_restart"),
    [("segmentation.before_commit", 0), ("campaigns.before_ack", 1)],
)
async def test_a_killed_replica_leaves_one_transition_after_another_takes_over(
    point: str,
    recorded_before_restart: int,
    db_url: str,
    stream_key: str,
    redis_url: str,
    redis_client: stream.Client,
    db: asyncpg.Connection,
    ingestion: ingestion_pb2_grpc.IngestionServiceStub,
    tmp_path: Path,
) -> None:
    env = service_env(db_url, stream_key, EVENTLINE_REDIS_URL=redis_url)
    first = ServiceProcess("segmentation", env, tmp_path).start(EVENTLINE_FAULTS=f"{point}=crash#1")
    second = ServiceProcess("segmentation", env, tmp_path)
    try:
        await first.serving()
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = segmentation_pb2_grpc.SegmentationServiceStub(channel)
            await stub.CreateSegment(
                pb.CreateSegmentRequest(
                    segment_id="k",
                    segment=pb.Segment(
                        display_name="K",
                        filter=pb.Filter(event=pb.EventCondition(name="purchase")),
                        realtime=True,
                    ),
                )
            )

            async def backfilled() -> bool:
                reply = await stub.ListSegmentMembers(pb.ListSegmentMembersRequest(segment_id="k"))
                return not reply.backfilling

            await eventually(backfilled, 60, "the backfill did not end")
        await ingestion.TrackCustomerEvent(customer_event("c1", "purchase"))
        assert await first.exited(60) == 137
        count = "SELECT count(*) FROM segment_transitions"
        assert await db.fetchval(count) == recorded_before_restart
        second.start()
        await second.serving()

        async def acknowledged() -> bool:
            pending = await redis_client.xpending(stream_key, "segmentation")
            return bool(await db.fetchval(count)) and pending["pending"] == 0

        await eventually(acknowledged, 120, "the other replica did not take the entry over")
        assert await db.fetchval(count) == 1
        assert await db.fetchval("SELECT count(*) FROM customer_events WHERE name = 'segment_entered'") == 1
        assert [r[0] for r in await db.fetch("SELECT customer_id FROM segment_members")] == ["c1"]
    finally:
        first.kill()
        second.kill()
