"""bench/triggers.py measures where a message arrives and refuses figures that cannot be true.

Issue 10, item 16: it timed deliveries by the modification time of the sink's
files (a coarse kernel clock) and printed a negative p50. Here its own
receiver and figure computation run against the real ingestion and campaign
services, and against stamps that contradict each other.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from eventline.campaigns.v1 import campaigns_pb2_grpc

from tests.conftest import CampaignsEnv
from tests.support import add_email_customers, customer_event, numbered, wait_for_entries, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def triggers(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The benchmark's module, imported as ``python bench/triggers.py`` would run it."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    yield importlib.import_module("triggers")


async def test_trigger_latency_is_measured_at_a_real_smtp_server_from_the_call(
    triggers: ModuleType,
    ingestion: Any,
    campaigns_env: CampaignsEnv,
    redis_client: Any,
    stream_key: str,
    db: Any,
) -> None:
    from eventline_campaigns.service import running
    from eventline_campaigns.settings import Settings

    await add_email_customers(db, "c", 5)
    with triggers.SmtpReceiver() as receiver:
        env = campaigns_env(EVENTLINE_SMTP_PORT=str(receiver.port))
        async with (
            running(Settings.from_env(env), consume=False) as served,
            grpc.aio.insecure_channel(f"127.0.0.1:{served.port}") as channel,
        ):
            await triggers.activate(campaigns_pb2_grpc.CampaignServiceStub(channel), triggers.PING_CAMPAIGN)
            started_ns = time.perf_counter_ns()
            calls = {}
            for i in range(20):
                stamps = calls[f"e{i}"] = triggers.Stamps()
                await ingestion.TrackCustomerEvent(customer_event(numbered("c", i % 5), "Ping", f"e{i}"))
                stamps.replied_ns = time.perf_counter_ns()
            await wait_for_entries(redis_client, stream_key, 20)
            await served.consumer.drain()
            await wait_until(lambda: receiver.count() >= 20, 30, "the receiver did not get every message")
            finished_ns = time.perf_counter_ns()
    appended = {
        fields[b"event_id"].decode(): int(entry_id.split(b"-")[0]) * 1_000_000
        for entry_id, fields in await redis_client.xrange(stream_key)
    }
    figures = triggers.trigger_figures(calls, receiver, appended, started_ns, finished_ns)
    # Every message was drained after every call had its reply: the order is known.
    assert 0 < figures.reply < figures.p50 <= figures.p99
    assert figures.to_stream > 0 and figures.in_campaigns > 0
    assert sorted(receiver.arrived) == sorted(calls)


def _measured(triggers: ModuleType, arrival_offset_ns: int = 5_000_000) -> tuple[dict[str, Any], Any]:
    """One call with its reply 1 ms later and its message ``arrival_offset_ns`` after the call."""
    stamps = triggers.Stamps(sent_wall_ns=10**18, sent_ns=10**12, replied_ns=10**12 + 1_000_000)
    receiver = triggers.SmtpReceiver()  # not started: its record is written by hand
    receiver.arrived["e1"] = triggers.Arrival(10**12 + arrival_offset_ns, 10**18 + arrival_offset_ns)
    return {"e1": stamps}, receiver


def _figures(triggers: ModuleType, calls: dict[str, Any], receiver: Any, appended_ns: int) -> Any:
    return triggers.trigger_figures(calls, receiver, {"e1": appended_ns}, 0, 10**13)


def test_consistent_stamps_give_positive_figures(triggers: ModuleType) -> None:
    calls, receiver = _measured(triggers)
    figures = _figures(triggers, calls, receiver, 10**18 + 2_000_000)
    assert (figures.p50, figures.reply, figures.to_stream, figures.in_campaigns) == (5.0, 1.0, 2.5, 2.5)


@pytest.mark.parametrize(
    ("arrival_offset_ns", "appended_ns", "repeated"),
    [
        (-3_500_000, 10**18, False),  # the message "arrived" before its call: the old p50 of -3.50 ms
        (5_000_000, 10**18 + 7_000_000, False),  # the entry was appended after the message arrived
        (5_000_000, 10**18 - 2_000_000, False),  # the entry was appended before the call was sent
        (5_000_000, 10**18 + 2_000_000, True),  # a message received twice
        (10**13, 10**18 + 2_000_000, False),  # a message after the end of the run
    ],
)
def test_impossible_stamps_are_refused(
    triggers: ModuleType, arrival_offset_ns: int, appended_ns: int, repeated: bool
) -> None:
    calls, receiver = _measured(triggers, arrival_offset_ns)
    if repeated:
        receiver.repeated.append("e1")
    with pytest.raises(triggers.ImpossibleFigure):
        _figures(triggers, calls, receiver, appended_ns)


def test_a_missing_message_is_refused(triggers: ModuleType) -> None:
    calls, receiver = _measured(triggers)
    receiver.arrived.clear()
    with pytest.raises(triggers.ImpossibleFigure):
        _figures(triggers, calls, receiver, 10**18 + 2_000_000)
