"""A journey worker killed with kill -9 at every step kind: no step repeated, none lost.

The campaign service runs as a real process; the fault point ``journeys.before_advance``
(a step's work done - its message recorded and sent, its branch evaluated - its outcome not
yet recorded) crashes it the second time it is reached, so each run finishes the step the
previous run died in and dies in the next one: every step kind of the journey is
interrupted once. Waits are one second of the real clock (the process reads the system's).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.segmentation.v1 import segmentation_pb2 as seg
from google.protobuf import duration_pb2

from eventline_cli.demo_campaigns import on_customer_event
from tests.processes import ServiceProcess
from tests.support import add_email_customers, customer_event, message_ids_by_recipient, numbered

pytestmark = pytest.mark.slow

SECOND = duration_pb2.Duration(seconds=1)


def email(step_id: str, subject: str, next_step: str) -> campaigns_pb2.Step:
    action = campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject=subject, text_body=subject))
    return campaigns_pb2.Step(
        step_id=step_id, send=campaigns_pb2.SendStep(action=action, next_step_id=next_step)
    )


EVERY_KIND = campaigns_pb2.Campaign(
    display_name="Every step kind",
    trigger=on_customer_event("Joined"),
    steps=[
        email("hello", "Hello", "pause"),
        campaigns_pb2.Step(
            step_id="pause", wait=campaigns_pb2.WaitStep(duration=SECOND, next_step_id="listen")
        ),
        campaigns_pb2.Step(
            step_id="listen",
            wait_for_event=campaigns_pb2.WaitForEventStep(
                event=campaigns_pb2.EventMatch(event_name="Never"), timeout=SECOND, timed_out_step_id="check"
            ),
        ),
        campaigns_pb2.Step(
            step_id="check",
            branch=campaigns_pb2.BranchStep(
                filter=seg.Filter(customer=seg.CustomerCondition(has_address=seg.CHANNEL_EMAIL)),
                yes_step_id="ab",
            ),
        ),
        campaigns_pb2.Step(
            step_id="ab",
            split=campaigns_pb2.SplitStep(
                variants=[
                    campaigns_pb2.SplitVariant(name="a", weight=1, next_step_id="bye"),
                    campaigns_pb2.SplitVariant(name="b", weight=1, next_step_id="bye"),
                ]
            ),
        ),
        email("bye", "Bye", "end"),
        campaigns_pb2.Step(step_id="end", exit=campaigns_pb2.ExitStep()),
    ],
)


async def finished_or_crashed(db, process: ServiceProcess) -> bool:  # type: ignore[no-untyped-def]
    """Wait until the journey completed (False) or the worker crashed at its fault point (True)."""
    for _ in range(1200):
        if await db.fetchval("SELECT status FROM journey_instances WHERE campaign_id = 'kinds'") == 2:
            return False
        assert process.process is not None
        code = process.process.poll()
        if code is not None:
            assert code == 137, f"the worker exited with {code}, not at its fault point"
            return True
        await asyncio.sleep(0.05)
    raise AssertionError("the journey neither completed nor crashed within a minute")


async def test_a_worker_killed_in_each_step_kind_neither_repeats_nor_loses_a_step(  # type: ignore[no-untyped-def]
    campaigns_env, ingestion, smtp_server, tmp_path: Path, db
) -> None:
    await add_email_customers(db, "j", 1)
    env = campaigns_env(EVENTLINE_CAMPAIGNS_LEASE_S="1", EVENTLINE_CAMPAIGNS_CLAIM_IDLE_MS="500")
    crashes = 0
    process = ServiceProcess("campaigns", env, tmp_path).start(
        EVENTLINE_FAULTS="journeys.before_advance=crash#2"
    )
    try:
        await process.serving()
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
            await stub.CreateCampaign(
                campaigns_pb2.CreateCampaignRequest(campaign=EVERY_KIND, campaign_id="kinds")
            )
            await stub.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id="kinds"))
        await ingestion.TrackCustomerEvent(customer_event(numbered("j", 0), "Joined", "joined-1"))
        for _ in range(20):
            if not await finished_or_crashed(db, process):
                break
            crashes += 1
            process = ServiceProcess("campaigns", env, tmp_path).start(
                EVENTLINE_FAULTS="journeys.before_advance=crash#2"
            )
    finally:
        process.kill()
    assert crashes >= 7, f"every step was interrupted once (start and seven steps), got {crashes}"
    steps = await db.fetch(
        "SELECT step_id, outcome FROM journey_steps WHERE campaign_id = 'kinds' ORDER BY entered_at, step_id"
    )
    outcomes = {r["step_id"]: r["outcome"] for r in steps}
    assert len(steps) == 7 and set(outcomes) == {"hello", "pause", "listen", "check", "ab", "bye", "end"}
    assert outcomes["listen"] == "timed_out" and outcomes["check"] == "yes"
    assert outcomes["ab"] in ("variant:a", "variant:b") and outcomes["hello"] == outcomes["bye"] == "sent"
    assert await db.fetchval("SELECT status FROM journey_instances WHERE campaign_id = 'kinds'") == 2
    ledger = await db.fetch(
        "SELECT event_id, status FROM deliveries WHERE campaign_id = 'kinds' ORDER BY event_id"
    )
    assert [(r["event_id"], r["status"]) for r in ledger] == [("joined-1/bye", 2), ("joined-1/hello", 2)]
    assert [len(ids) for ids in message_ids_by_recipient(smtp_server).values()] == [2], "each message once"
