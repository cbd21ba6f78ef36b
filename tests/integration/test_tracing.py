"""One event's journey in the logs: the caller's trace from the ingesting RPC to the campaign."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import grpc
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_shared.observability.logs import JsonFormatter

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


async def test_the_callers_trace_reaches_the_campaign_logs(ingestion, campaigns_server, smtp_server):  # type: ignore[no-untyped-def]
    await ingestion.UpsertCustomer(
        ingestion_pb2.UpsertCustomerRequest(
            customer=common_pb2.Customer(
                customer_id="c1", email="c1@example.com", email_consent=common_pb2.CONSENT_GRANTED
            )
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{campaigns_server.port}") as channel:
        campaigns = campaigns_pb2_grpc.CampaignServiceStub(channel)
        created = await campaigns.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(
                campaign=campaigns_pb2.Campaign(
                    display_name="Sale",
                    trigger=campaigns_pb2.Trigger(
                        system_event=campaigns_pb2.SystemEventTrigger(event_name="Sale")
                    ),
                    actions=[
                        campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Sale", text_body="x"))
                    ],
                )
            )
        )
        await campaigns.ActivateCampaign(
            campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
        )
    await campaigns_server.cache.refresh()

    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("eventline_campaigns")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        await ingestion.TrackSystemEvent(
            ingestion_pb2.TrackSystemEventRequest(event_id="sale-1", name="Sale"),
            metadata=[("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01")],
        )
        for _ in range(3000):
            if await campaigns_server.consumer.drain():
                break
            await asyncio.sleep(0.02)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    fan_out = [r for r in records if r["msg"] == "fan-out done"]
    assert fan_out, records
    assert all(r.get("trace_id") == TRACE_ID for r in fan_out)
    await smtp_server.wait_for(1)
