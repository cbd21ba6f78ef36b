"""Hostile templates against the campaign service as it runs in production: its own process with its
render workers, real PostgreSQL, Redis and gRPC (issue 10, items 1 and 2).

Memory is measured where it is spent: the peak resident size (``VmHWM``, reset through
``/proc/PID/clear_refs``) of the service process and of every render worker it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
import pytest
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.ingestion.v1 import ingestion_pb2_grpc
from google.protobuf import field_mask_pb2

from tests.conftest import CampaignsEnv
from tests.processes import ServiceProcess
from tests.support import customer_event, eventually, value, violations, wait_until

pytestmark = pytest.mark.slow

MB = 2**20

# Loops whose sizes come from the trigger's context: nothing to refuse at save time.
ENDLESS = (
    "{% for a in range(client.eventContext.n) %}{% for b in range(client.eventContext.n) %}"
    "{% endfor %}{% endfor %}done"
)

# Refused at save time: the attacks and the rest of their class, written with constants.
SAVE_TIME_ATTACKS = [
    "{% set r = range(100000) %}{% set s = range(10000) %}"
    "{% for a in r %}{% for b in s %}{% endfor %}{% endfor %}done",
    "{{ '%1000000000d' % 1 }}",
    "{{ '%1000000000d'|format(1) }}",
    "{{ '%.1000000000f' % 1 }}",
    "{{ ''|center(10**9) }}",
    "{{ client.email|indent(10**9) }}",
    "{{ '{:1000000000}'.format(1) }}",
    "{{ '{:.1000000000f}'.format(1.5) }}",
    "{{ 'ab' * 10**9 }}",
    "{{ [1] * 10**9 }}",
    "{{ 'x'.ljust(10**9) }}",
    "{{ client.email.rjust(10**9) }}",
    "{{ '7'.zfill(10**9) }}",
    "{{ ('x' * 100000)|wordwrap(1, wrapstring='y' * 100) }}",
    "{{ ('x' * 100000)|join('y' * 100000) }}",
    "{{ ('a' * 1000).replace('a', 'b' * 10000) }}",
    "{{ range(10)|batch(10**9, 'x')|list }}",
    "{{ client.customer_id|tojson(indent=10**6) }}",
    "{{ (1).to_bytes(10**9, 'big') }}",
    "{{ client.email.expandtabs(10**9) }}",
]

# Refused at render, before anything is allocated: the same class with sizes from the context.
RENDER_TIME_ATTACKS = [
    "{{ ('%' ~ client.eventContext.w ~ 'd') % 1 }}",
    "{{ ('%' ~ client.eventContext.w ~ 'd')|format(1) }}",
    "{{ ''|center(client.eventContext.w) }}",
    "{{ client.email|indent(client.eventContext.w) }}",
    "{{ '{:{}}'.format(1, client.eventContext.w) }}",
    "{{ ('{:' ~ client.eventContext.w ~ '}').format(1) }}",
    "{{ 'ab' * client.eventContext.w }}",
    "{{ [client.email] * client.eventContext.w }}",
    "{{ 'x'.ljust(client.eventContext.w) }}",
    "{{ '7'.zfill(client.eventContext.w) }}",
    "{{ client.email|wordwrap(1, wrapstring='y' * client.eventContext.k) }}",
    "{{ (range(client.eventContext.k)|map('string'))|join('y' * client.eventContext.k) }}",
    "{{ ('a' * client.eventContext.k).replace('a', 'b' * client.eventContext.k) }}",
    "{{ range(10)|batch(client.eventContext.w, 'x')|list }}",
    "{{ range(10)|slice(client.eventContext.w)|list }}",
    "{% set ns = namespace(s='x') %}{% for i in range(client.eventContext.k) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "{% set ns = namespace(s='x' * 1000) %}{% for i in range(client.eventContext.k) %}"
    "{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}{{ ns.s|length }}",
    "{% set big = 'x' * 900000 %}{% set ns = namespace(l=[]) %}{% for i in range(client.eventContext.k) %}"
    "{% set ns.l = ns.l + [big[i:]] %}{% endfor %}",
    "{{ ([client.email * 50000] * client.eventContext.k)|string }}",
    ENDLESS,
]


def text_campaign(text: str, event_name: str = "Hostile") -> campaigns_pb2.Campaign:
    return campaigns_pb2.Campaign(
        display_name="Hostile",
        trigger=campaigns_pb2.Trigger(
            customer_event=campaigns_pb2.CustomerEventTrigger(event_name=event_name)
        ),
        actions=[campaigns_pb2.Action(email=campaigns_pb2.EmailAction(subject="Hi", text_body=text))],
    )


class ProcessTree:
    """The service process and its render workers: resident memory and CPU time."""

    def __init__(self, pid: int) -> None:
        self.service = psutil.Process(pid)

    def processes(self) -> list[psutil.Process]:
        return [self.service, *self.service.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        return self.service.children(recursive=True)

    def resident(self) -> int:
        return sum(p.memory_info().rss for p in self.processes())

    def reset_peaks(self) -> None:
        for process in self.processes():
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")

    def peak(self) -> int:
        """The sum of each process's peak resident size since ``reset_peaks`` (at least the peak of the sum)."""
        total = 0
        for process in self.processes():
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        return total


@pytest.fixture
async def service(campaigns_env: CampaignsEnv, tmp_path: Path, redis_client: Any) -> AsyncIterator[Any]:
    """Starts the campaign service as a process: ``await service(**env)`` gives (process, stub, tree)."""
    started: list[ServiceProcess] = []
    channels: list[grpc.aio.Channel] = []

    async def start(
        **extra: str,
    ) -> tuple[ServiceProcess, campaigns_pb2_grpc.CampaignServiceStub, ProcessTree]:
        process = ServiceProcess("campaigns", campaigns_env(**extra), tmp_path).start()
        started.append(process)
        await process.serving()
        channel = grpc.aio.insecure_channel(process.address)
        channels.append(channel)
        assert process.process is not None
        tree = ProcessTree(process.process.pid)
        await wait_until(lambda: len(tree.workers()) == 2, 30, "the render workers did not start")
        return process, campaigns_pb2_grpc.CampaignServiceStub(channel), tree

    yield start
    for channel in channels:
        await channel.close()
    for process in started:
        process.kill()


async def seed_customer(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO customers (customer_id, email, email_consent) VALUES ('victim', 'victim@example.com', 1)"
    )


async def preview(stub: campaigns_pb2_grpc.CampaignServiceStub, campaign_id: str, **context: Any) -> Any:
    return await stub.PreviewMessage(
        campaigns_pb2.PreviewMessageRequest(
            campaign_id=campaign_id, customer_id="victim", context={k: value(v) for k, v in context.items()}
        )
    )


async def test_a_hostile_render_never_blocks_the_other_rpcs(  # type: ignore[no-untyped-def]
    service, db: asyncpg.Connection, ingestion: ingestion_pb2_grpc.IngestionServiceStub
) -> None:
    """Item 1: with the budget raised so that a hostile render takes hours, 100 concurrent
    GetCampaign (and ListCampaigns) calls all complete while it renders - in a preview and at
    delivery; a preview that is given up stops its render, and no render outlives the service."""
    process, stub, tree = await service(
        EVENTLINE_CAMPAIGNS_RENDER_STEPS=str(10**15), EVENTLINE_CAMPAIGNS_RENDER_CPU_MS=str(3_600_000)
    )
    await seed_customer(db)
    hostile = await stub.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=text_campaign(ENDLESS)))
    hostile_id = hostile.campaign.campaign_id
    plain = await stub.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(campaign=text_campaign("Hi!", "Plain"))
    )
    await preview(stub, plain.campaign.campaign_id)  # every worker has started and rendered once
    baseline = tree.resident()
    tree.reset_peaks()

    def busiest() -> tuple[int, float]:
        return max(((p.pid, p.cpu_times().user) for p in tree.workers()), key=lambda w: w[1])

    cpu_before = {p.pid: p.cpu_times().user for p in tree.workers()}

    def rendering() -> bool:
        return any(p.cpu_times().user - cpu_before.get(p.pid, 0.0) > 0.5 for p in tree.workers())

    rendered = asyncio.ensure_future(preview(stub, hostile_id, n=100_000))  # 10**10 iterations
    await wait_until(rendering, 60, "no worker started the hostile render")
    replies = await asyncio.gather(
        *(stub.GetCampaign(campaigns_pb2.GetCampaignRequest(campaign_id=hostile_id)) for _ in range(100))
    )
    assert [r.campaign.campaign_id for r in replies] == [hostile_id] * 100
    assert not rendered.done(), "the preview finished: it was not hostile enough to prove anything"

    busy, _ = busiest()
    rendered.cancel()  # the client gives up: the worker is stopped, not left rendering for nobody
    await wait_until(lambda: busy not in [p.pid for p in tree.workers()], 30, "the abandoned render goes on")
    await wait_until(lambda: len(tree.workers()) == 2, 30, "the stopped worker was not replaced")
    reply = await preview(stub, plain.campaign.campaign_id)
    assert reply.messages[0].text_body == "Hi!"

    # At delivery: a customer event whose campaign renders for hours.
    # ActivateCampaign returns once the serving replica (the only one) has reloaded its campaigns.
    await stub.ActivateCampaign(campaigns_pb2.ActivateCampaignRequest(campaign_id=hostile_id))
    cpu_before = {p.pid: p.cpu_times().user for p in tree.workers()}
    await ingestion.TrackCustomerEvent(customer_event("victim", "Hostile", n=100_000))
    await wait_until(rendering, 60, "no worker started rendering the delivery")
    listed, *got = await asyncio.gather(
        stub.ListCampaigns(campaigns_pb2.ListCampaignsRequest()),
        *(stub.GetCampaign(campaigns_pb2.GetCampaignRequest(campaign_id=hostile_id)) for _ in range(100)),
    )
    assert len(listed.campaigns) == 2 and len(got) == 100
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0, "the render was still going on"
    assert tree.peak() - baseline < 100 * MB

    # Killed with SIGKILL, the service cannot stop its workers: they die with it all the same.
    workers = tree.workers()
    process.kill()
    await wait_until(lambda: not any(_alive(w) for w in workers), 30, "a render worker outlived its service")


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def test_hostile_templates_are_refused_at_save_or_before_allocating(  # type: ignore[no-untyped-def]
    service, db: asyncpg.Connection, ingestion: ingestion_pb2_grpc.IngestionServiceStub
) -> None:
    """Items 1 and 2: what can never render is INVALID_ARGUMENT at CreateCampaign and
    UpdateCampaign; the rest is refused by the render's budget before it allocates: the service
    and its workers stay within 100 MB of their resident size before the attacks."""
    process, stub, tree = await service()
    await seed_customer(db)
    plain = await stub.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(campaign=text_campaign("Hi!", "Plain"))
    )
    plain_id = plain.campaign.campaign_id
    await preview(stub, plain_id)
    baseline = tree.resident()
    workers = sorted(p.pid for p in tree.workers())
    tree.reset_peaks()

    for source in SAVE_TIME_ATTACKS:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateCampaign(campaigns_pb2.CreateCampaignRequest(campaign=text_campaign(source)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, source
        assert "line 1" in violations(refused.value)["campaign.actions[0].email.text_body"], source
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdateCampaign(
                campaigns_pb2.UpdateCampaignRequest(
                    campaign=campaigns_pb2.Campaign(
                        campaign_id=plain_id, actions=text_campaign(source).actions
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["actions"]),
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, source

    context = {"w": 10**9, "k": 100_000, "n": 100_000}
    for source in RENDER_TIME_ATTACKS:
        created = await stub.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(campaign=text_campaign(source))
        )
        reply = await preview(stub, created.campaign.campaign_id, **context)
        assert reply.messages[0].error.startswith("refused by the sandbox: "), (
            source,
            reply.messages[0].error,
        )
        assert not reply.messages[0].text_body

    # At delivery: the same attacks, each a campaign triggered by one event.
    for source in RENDER_TIME_ATTACKS:
        created = await stub.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(campaign=text_campaign(source, "Attack"))
        )
        await stub.ActivateCampaign(
            campaigns_pb2.ActivateCampaignRequest(campaign_id=created.campaign.campaign_id)
        )
    await ingestion.TrackCustomerEvent(customer_event("victim", "Attack", **context))

    async def all_failed() -> bool:
        return await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 3") == len(
            RENDER_TIME_ATTACKS
        )

    await eventually(all_failed, 60, "not every hostile delivery failed")
    reasons = [r["reason"] for r in await db.fetch("SELECT reason FROM deliveries")]
    assert all(r.startswith("template: refused by the sandbox: ") for r in reasons), reasons
    assert not [r for r in reasons if "MemoryError" in r or "out of memory" in r]

    assert sorted(p.pid for p in tree.workers()) == workers, "a worker died: the checks did not hold"
    assert process.process is not None and process.process.poll() is None
    grown = tree.peak() - baseline
    assert grown < 100 * MB, f"the service and its workers grew by {grown / MB:.0f} MB"
