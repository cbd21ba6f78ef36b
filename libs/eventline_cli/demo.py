"""``eventline demo``: the suite at work in one command, against a running ``eventline up``.

Seeds customers and their events, creates a back-in-stock campaign (a system event
reaching the subscribers of an item) and a password-recovery campaign (a customer
event), fires the events, waits for the deliveries and shows the messages sent.
The demo's campaigns are archived at the end, so running it again sends only its
own messages.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import click
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from eventline_cli.client import ClientOptions, call, fail, options
from eventline_cli.demo_campaigns import back_in_stock, password_recovery
from eventline_shared.dev import harness

SUBSCRIBERS = {
    # customer: (item subscribed to, e-mail consent)
    "demo-ann": (42, common_pb2.CONSENT_GRANTED),
    "demo-bob": (42, common_pb2.CONSENT_GRANTED),
    "demo-cat": (42, common_pb2.CONSENT_DENIED),
    "demo-dan": (7, common_pb2.CONSENT_GRANTED),
}


async def _not_serving(opts: ClientOptions, services: list[str], timeout_s: float) -> str | None:
    """The first of ``services`` not SERVING within ``timeout_s`` (all together); None: all are."""
    deadline = time.monotonic() + timeout_s
    for name in services:
        try:
            await harness.wait_serving_at(
                opts.targets[name],
                credentials=opts.credentials(),
                options=opts.channel_options(),
                timeout_s=max(deadline - time.monotonic(), 0),
                interval_s=0.5,
            )
        except TimeoutError:
            return name
    return None


def _settle(ctx: click.Context, stub: Any, campaign_id: str, expected: int, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = call(
            ctx, stub.GetCampaignStats, campaigns_pb2.GetCampaignStatsRequest(campaign_id=campaign_id)
        )
        if stats.sent + stats.failed + stats.skipped >= expected and stats.pending == 0:
            return stats
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


@click.command()
@click.option(
    "--sink-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the campaign service writes messages without an SMTP server "
    "(default EVENTLINE_CAMPAIGNS_SINK_DIR, else <EVENTLINE_DATA_DIR>/messages).",
)
@click.option(
    "--wait", "wait_s", type=float, default=30.0, show_default=True, help="Seconds to wait for sends."
)
@click.pass_context
def demo(ctx: click.Context, sink_dir: Path | None, wait_s: float) -> None:
    """Seed customers, fire a back-in-stock and a password-recovery campaign, show the messages sent."""
    console = Console(highlight=False)
    opts = options(ctx)
    run = uuid.uuid4().hex[:6]
    if sink_dir is None:
        configured = os.environ.get("EVENTLINE_CAMPAIGNS_SINK_DIR", "").strip()
        data_dir = Path(os.environ.get("EVENTLINE_DATA_DIR", "").strip() or ".eventline")
        sink_dir = Path(configured) if configured else data_dir / "messages"
    services = ["ingestion", "segmentation", "campaigns"]
    down = asyncio.run(_not_serving(opts, services, 30.0))
    if down is not None:
        fail(f"the {down} service at {opts.targets[down]} is not serving; start the suite with `make run`")
    channels = {name: opts.open_channel(name) for name in services}
    try:
        ingestion = ingestion_pb2_grpc.IngestionServiceStub(channels["ingestion"])
        campaigns = campaigns_pb2_grpc.CampaignServiceStub(channels["campaigns"])

        console.rule("[bold]1. Customers and their events")
        for customer_id, (item_id, consent) in SUBSCRIBERS.items():
            name = customer_id.removeprefix("demo-")
            customer = common_pb2.Customer(
                customer_id=customer_id, email=f"{name}@example.com", email_consent=consent
            )
            call(ctx, ingestion.UpsertCustomer, ingestion_pb2.UpsertCustomerRequest(customer=customer))
            subscription = ingestion_pb2.TrackCustomerEventRequest(
                event_id=f"{customer_id}-subscribes-{item_id}",
                customer_id=customer_id,
                name="StockSubscription",
                context={"item_id": common_pb2.Value(integer_value=item_id)},
            )
            call(ctx, ingestion.TrackCustomerEvent, subscription)
            consent_text = common_pb2.Consent.Name(consent).removeprefix("CONSENT_").lower()
            console.print(
                f"  {customer_id}: {name}@example.com, e-mail consent {consent_text}, subscribed to item {item_id}"
            )

        console.rule("[bold]2. Campaigns")
        created: dict[str, str] = {}
        for key, campaign in (("stock", back_in_stock()), ("recovery", password_recovery())):
            request = campaigns_pb2.CreateCampaignRequest(campaign=campaign, campaign_id=f"demo-{run}-{key}")
            campaign_id = call(ctx, campaigns.CreateCampaign, request).campaign.campaign_id
            call(
                ctx,
                campaigns.ActivateCampaign,
                campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id),
            )
            created[key] = campaign_id
            console.print(f"  {campaign_id}: {campaign.display_name}, active")

        console.rule("[bold]3. Events")
        stock = ingestion_pb2.TrackSystemEventRequest(
            event_id=f"demo-{run}-item-42-in-stock",
            name="ItemInStock",
            context={
                "item_id": common_pb2.Value(integer_value=42),
                "item_name": common_pb2.Value(string_value="Blue kettle"),
            },
        )
        call(ctx, ingestion.TrackSystemEvent, stock)
        console.print("  system event ItemInStock {item_id: 42, item_name: Blue kettle}")
        recovery = ingestion_pb2.TrackCustomerEventRequest(
            event_id=f"demo-{run}-ann-recovery",
            customer_id="demo-ann",
            name="PasswordRecoveryRequested",
            context={
                "reset_link": common_pb2.Value(string_value=f"https://shop.example.com/reset?token={run}")
            },
        )
        call(ctx, ingestion.TrackCustomerEvent, recovery)
        console.print("  customer event PasswordRecoveryRequested for demo-ann")

        console.rule("[bold]4. Deliveries")
        expected = {
            "stock": 3,
            "recovery": 1,
        }  # ann and bob sent, cat skipped (no consent); dan not subscribed
        settled = True
        table = Table()
        for column in ("campaign", "customer", "channel", "status", "reason", "delivery id"):
            table.add_column(column)
        sent_ids: list[int] = []
        for key, campaign_id in created.items():
            stats = _settle(ctx, campaigns, campaign_id, expected[key], wait_s)
            settled = settled and stats.sent + stats.failed + stats.skipped >= expected[key]
            listing = call(
                ctx,
                campaigns.ListDeliveries,
                campaigns_pb2.ListDeliveriesRequest(campaign_id=campaign_id, page_size=100),
            )
            for delivery in sorted(listing.deliveries, key=lambda d: d.customer_id):
                status = (
                    campaigns_pb2.DeliveryStatus.Name(delivery.status)
                    .removeprefix("DELIVERY_STATUS_")
                    .lower()
                )
                channel = campaigns_pb2.Channel.Name(delivery.channel).removeprefix("CHANNEL_").lower()
                table.add_row(
                    campaign_id, delivery.customer_id, channel, status, delivery.reason, delivery.delivery_id
                )
                if delivery.status == campaigns_pb2.DELIVERY_STATUS_SENT and delivery.delivery_id.isdigit():
                    sent_ids.append(int(delivery.delivery_id))
        console.print(table)

        console.rule("[bold]5. Messages sent")
        shown = 0
        for delivery_id in sent_ids:
            path = sink_dir / f"{delivery_id:012d}-email.txt"
            if path.exists():
                console.print(Panel(path.read_text().rstrip(), title=str(path), title_align="left"))
                shown += 1
        if not shown and sent_ids:
            console.print(
                f"  {len(sent_ids)} messages went to the configured providers (no files in {sink_dir})."
            )

        for campaign_id in created.values():
            call(
                ctx, campaigns.ArchiveCampaign, campaigns_pb2.ArchiveCampaignRequest(campaign_id=campaign_id)
            )
        console.print(
            "The demo's campaigns are archived. Try: eventline timeline demo-ann; eventline deliveries list --customer demo-ann"
        )
        if not settled:
            fail(f"not every delivery finished within {wait_s:.0f}s")
    finally:
        for opened in channels.values():
            opened.close()
