"""``eventline campaigns create|update|get|list|activate|pause|preview|journey|test-send|caps|set-cap`` and ``deliveries list``."""

from __future__ import annotations

import datetime as dt
import json
import re

import click
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from google.protobuf import duration_pb2
from rich.console import Console
from rich.table import Table

from eventline_cli.client import (
    call,
    channel,
    collect,
    load_message,
    load_request,
    output_option,
    print_message,
    table_output_option,
    to_dict,
)
from eventline_cli.events import parse_context


def _stub(opened: object) -> campaigns_pb2_grpc.CampaignServiceStub:
    return campaigns_pb2_grpc.CampaignServiceStub(opened)


@click.group()
def campaigns() -> None:
    """Create, change, activate, pause, preview and test-send campaigns; caps across campaigns."""


@campaigns.command()
@click.option(
    "-f", "--file", "path", required=True, help="A Campaign (or CreateCampaignRequest) in JSON or YAML."
)
@click.option("--id", "campaign_id", help="The new campaign's id (else the file's, else one is chosen).")
@output_option
@click.pass_context
def create(ctx: click.Context, path: str, campaign_id: str | None, output: str) -> None:
    """Create a campaign (as a draft); prints it."""
    request = load_request(path, campaigns_pb2.CreateCampaignRequest(), "campaign")
    if campaign_id:
        request.campaign_id = campaign_id
    with channel(ctx, "campaigns") as opened:
        reply = call(ctx, _stub(opened).CreateCampaign, request)
    print_message(reply.campaign, output)


@campaigns.command()
@click.option(
    "-f", "--file", "path", required=True, help="A Campaign (or UpdateCampaignRequest) in JSON or YAML."
)
@click.option(
    "--update", "fields", multiple=True, metavar="FIELD", help="Change only this field (repeatable)."
)
@output_option
@click.pass_context
def update(ctx: click.Context, path: str, fields: tuple[str, ...], output: str) -> None:
    """Change a campaign; prints it."""
    request = load_request(path, campaigns_pb2.UpdateCampaignRequest(), "campaign")
    if fields:
        request.update_mask.paths.extend(fields)
    with channel(ctx, "campaigns") as opened:
        reply = call(ctx, _stub(opened).UpdateCampaign, request)
    print_message(reply.campaign, output)


@campaigns.command()
@click.argument("campaign_id")
@output_option
@click.pass_context
def get(ctx: click.Context, campaign_id: str, output: str) -> None:
    """Print a campaign."""
    with channel(ctx, "campaigns") as opened:
        reply = call(
            ctx, _stub(opened).GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id)
        )
    print_message(reply.campaign, output)


@campaigns.command("list")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.pass_context
def list_(ctx: click.Context, limit: int) -> None:
    """The campaigns, as a table."""
    request = campaigns_pb2.ListCampaignsRequest()
    with channel(ctx, "campaigns") as opened:
        found: list[campaigns_pb2.Campaign] = collect(
            ctx, _stub(opened).ListCampaigns, request, "campaigns", limit
        )
    table = Table()
    for column in ("campaign id", "name", "state"):
        table.add_column(column)
    for campaign in found:
        state = campaigns_pb2.CampaignState.Name(campaign.state).removeprefix("CAMPAIGN_STATE_").lower()
        table.add_row(campaign.campaign_id, campaign.display_name, state)
    Console(highlight=False).print(table)


@campaigns.command()
@click.argument("campaign_id")
@click.pass_context
def activate(ctx: click.Context, campaign_id: str) -> None:
    """Start sending: the campaign reacts to events from now on."""
    with channel(ctx, "campaigns") as opened:
        request = campaigns_pb2.ActivateCampaignRequest(campaign_id=campaign_id)
        reply = call(ctx, _stub(opened).ActivateCampaign, request)
    click.echo(f"{reply.campaign.campaign_id}: {campaigns_pb2.CampaignState.Name(reply.campaign.state)}")


@campaigns.command()
@click.argument("campaign_id")
@click.pass_context
def pause(ctx: click.Context, campaign_id: str) -> None:
    """Stop sending until activated again."""
    with channel(ctx, "campaigns") as opened:
        reply = call(
            ctx, _stub(opened).PauseCampaign, campaigns_pb2.PauseCampaignRequest(campaign_id=campaign_id)
        )
    click.echo(f"{reply.campaign.campaign_id}: {campaigns_pb2.CampaignState.Name(reply.campaign.state)}")


@campaigns.command()
@click.option("-f", "--file", "path", required=True, help="A PreviewMessageRequest in JSON or YAML.")
@click.pass_context
def preview(ctx: click.Context, path: str) -> None:
    """Render a campaign's messages for one customer without sending them."""
    request = load_message(path, campaigns_pb2.PreviewMessageRequest())
    with channel(ctx, "campaigns") as opened:
        reply = call(ctx, _stub(opened).PreviewMessage, request)
    click.echo(json.dumps(to_dict(reply), indent=2, ensure_ascii=False))


CHANNELS = {
    "email": campaigns_pb2.CHANNEL_EMAIL,
    "sms": campaigns_pb2.CHANNEL_SMS,
    "push": campaigns_pb2.CHANNEL_PUSH,
}
_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _channel_name(channel: int) -> str:
    return campaigns_pb2.Channel.Name(channel).removeprefix("CHANNEL_").lower()


def _window(text: str) -> dt.timedelta:
    """``7d``, ``12h``, ``30m`` or ``45s``."""
    found = _WINDOW.match(text.strip())
    if not found:
        raise click.BadParameter(f"{text!r} is not a window such as 7d, 12h, 30m or 45s")
    return dt.timedelta(seconds=int(found[1]) * _UNIT_S[found[2]])


def _print_caps(caps: list[campaigns_pb2.ChannelCap], output: str) -> None:
    if output == "json":
        click.echo(json.dumps([to_dict(cap) for cap in caps], indent=2))
        return
    table = Table()
    for column in ("channel", "max sends", "window"):
        table.add_column(column)
    for cap in caps:
        table.add_row(_channel_name(cap.channel), str(cap.max_sends), str(cap.window.ToTimedelta()))
    Console(highlight=False).print(table)


@campaigns.command()
@table_output_option
@click.pass_context
def caps(ctx: click.Context, output: str) -> None:
    """The caps across campaigns: per customer and channel, over every marketing campaign."""
    with channel(ctx, "campaigns") as opened:
        reply = call(ctx, _stub(opened).GetChannelCaps, campaigns_pb2.GetChannelCapsRequest())
    _print_caps(list(reply.caps), output)


@campaigns.command("set-cap")
@click.argument("channel_name", metavar="CHANNEL", type=click.Choice(sorted(CHANNELS)))
@click.argument("max_sends", type=click.IntRange(0))
@click.argument("window", required=False)
@table_output_option
@click.pass_context
def set_cap(ctx: click.Context, channel_name: str, max_sends: int, window: str | None, output: str) -> None:
    """Cap a channel: at most MAX_SENDS marketing messages per customer within WINDOW (7d, 12h...).

    MAX_SENDS 0 removes the channel's cap. Prints every cap.
    """
    cap = campaigns_pb2.ChannelCap(channel=CHANNELS[channel_name], max_sends=max_sends)
    if max_sends:
        if window is None:
            raise click.UsageError("a WINDOW is required unless MAX_SENDS is 0")
        cap.window.FromTimedelta(_window(window))
    with channel(ctx, "campaigns") as opened:
        reply = call(ctx, _stub(opened).SetChannelCaps, campaigns_pb2.SetChannelCapsRequest(caps=[cap]))
    _print_caps(list(reply.caps), output)


@campaigns.command("test-send")
@click.argument("campaign_id")
@click.option("--to", "address", required=True, help="The e-mail address, phone number or push token.")
@click.option("--customer", "customer_id", required=True, help="The sample customer rendered for.")
@click.option(
    "--channel", "channel_name", type=click.Choice(sorted(CHANNELS)), help="Which message (when several)."
)
@click.option("--step", "step_id", default="", help="A journey's send step (its message is sent).")
@click.option("--context", "pairs", multiple=True, metavar="KEY=VALUE", help="Trigger context (repeatable).")
@output_option
@click.pass_context
def test_send(
    ctx: click.Context,
    campaign_id: str,
    address: str,
    customer_id: str,
    channel_name: str | None,
    step_id: str,
    pairs: tuple[str, ...],
    output: str,
) -> None:
    """Send one of the campaign's messages to an address, as a test (never in the stats)."""
    request = campaigns_pb2.SendTestMessageRequest(
        campaign_id=campaign_id,
        step_id=step_id,
        address=address,
        sample_customer_id=customer_id,
        channel=CHANNELS[channel_name] if channel_name else campaigns_pb2.CHANNEL_UNSPECIFIED,
        context=parse_context(pairs),
    )
    with channel(ctx, "campaigns") as opened:
        reply = call(ctx, _stub(opened).SendTestMessage, request)
    print_message(reply.test_delivery, output)


@click.group()
def deliveries() -> None:
    """The delivery ledger: what was sent, to whom, and how it went."""


@deliveries.command("list")
@click.option("--campaign", "campaign_id", help="Deliveries of this campaign.")
@click.option("--customer", "customer_id", help="Deliveries to this customer.")
@click.option("--event", "event_id", help="Deliveries triggered by this event id.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@table_output_option
@click.pass_context
def list_deliveries(
    ctx: click.Context,
    campaign_id: str | None,
    customer_id: str | None,
    event_id: str | None,
    limit: int,
    output: str,
) -> None:
    """Deliveries, newest first, of one campaign, customer or event."""
    given = [value for value in (campaign_id, customer_id, event_id) if value]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --campaign, --customer and --event")
    request = campaigns_pb2.ListDeliveriesRequest()
    if campaign_id:
        request.campaign_id = campaign_id
    elif customer_id:
        request.customer_id = customer_id
    else:
        request.event_id = event_id or ""
    with channel(ctx, "campaigns") as opened:
        found: list[campaigns_pb2.Delivery] = collect(
            ctx, _stub(opened).ListDeliveries, request, "deliveries", limit
        )
    if output == "json":
        click.echo(json.dumps([to_dict(delivery) for delivery in found], indent=2))
        return
    table = Table()
    for column in ("created (UTC)", "campaign", "customer", "channel", "status", "reason", "event id"):
        table.add_column(column)
    for delivery in found:
        table.add_row(
            delivery.create_time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            delivery.campaign_id,
            delivery.customer_id,
            _channel_name(delivery.channel),
            campaigns_pb2.DeliveryStatus.Name(delivery.status).removeprefix("DELIVERY_STATUS_").lower(),
            delivery.reason,
            delivery.event_id,
        )
    Console(highlight=False).print(table)


def _duration(d: duration_pb2.Duration) -> str:
    seconds = d.seconds
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _describe(step: campaigns_pb2.Step) -> str:
    kind = step.WhichOneof("kind")
    if kind == "send":
        channel_name = step.send.action.WhichOneof("channel") or "?"
        return f"send {channel_name}"
    if kind == "wait":
        if step.wait.until_local_time:
            return f"wait until {step.wait.until_local_time} local"
        return f"wait {_duration(step.wait.duration)}"
    if kind == "wait_for_event":
        return f"wait for {step.wait_for_event.event.event_name} ({_duration(step.wait_for_event.timeout)})"
    if kind == "branch":
        return "branch"
    if kind == "split":
        return "split"
    return "exit"


def _counts(stats: campaigns_pb2.StepStats | None) -> str:
    if stats is None:
        return "entered 0"
    parts = [f"entered {stats.entered}"]
    for name in ("waiting", "sent", "skipped", "deferred", "exited", "converted"):
        if getattr(stats, name):
            parts.append(f"{name} {getattr(stats, name)}")
    return " · ".join(parts)


def journey_tree(campaign: campaigns_pb2.Campaign, stats: campaigns_pb2.GetJourneyStatsResponse) -> list[str]:
    """A journey as an indented tree, each step with its live counts; a step reached by several
    paths is shown once, then referred to ("→ step_id")."""
    steps = {s.step_id: s for s in campaign.steps}
    counts = {s.step_id: s for s in stats.steps}
    variants = {(v.step_id, v.variant): v for v in stats.variants}
    lines: list[str] = []
    shown: set[str] = set()

    def paths(step: campaigns_pb2.Step) -> list[tuple[str, str]]:
        kind = step.WhichOneof("kind")
        if kind == "send":
            return [("", step.send.next_step_id)]
        if kind == "wait":
            return [("", step.wait.next_step_id)]
        if kind == "wait_for_event":
            w = step.wait_for_event
            return [("arrived", w.arrived_step_id), ("timed out", w.timed_out_step_id)]
        if kind == "branch":
            return [("yes", step.branch.yes_step_id), ("no", step.branch.no_step_id)]
        if kind == "split":
            out = []
            for v in step.split.variants:
                found = variants.get((step.step_id, v.name))
                label = f"variant {v.name} (weight {v.weight}{', control' if v.control else ''}"
                label += f", {found.entered} in, {found.converted} converted)" if found else ")"
                out.append((label, v.next_step_id))
            return out
        return []

    def show(step_id: str, depth: int, label: str) -> None:
        pad = "  " * depth + (f"[{label}] " if label else "")
        if not step_id:
            if label:
                lines.append(f"{pad}end")
            return
        if step_id in shown:
            lines.append(f"{pad}→ {step_id}")
            return
        shown.add(step_id)
        step = steps[step_id]
        lines.append(f"{pad}{step_id}: {_describe(step)} — {_counts(counts.get(step_id))}")
        branches = paths(step)
        for sub_label, nxt in branches:
            show(nxt, depth + (1 if len(branches) > 1 else 0), sub_label)

    if campaign.steps:
        show(campaign.steps[0].step_id, 0, "")
    lines.append(
        f"active {stats.active} · completed {stats.completed} · exited {stats.exited} · "
        f"cancelled {stats.cancelled} · converted {stats.converted}"
    )
    return lines


@campaigns.command()
@click.argument("campaign_id")
@click.pass_context
def journey(ctx: click.Context, campaign_id: str) -> None:
    """Show a journey as an indented tree of its steps with live counts."""
    with channel(ctx, "campaigns") as opened:
        stub = _stub(opened)
        found = call(ctx, stub.GetCampaign, campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id))
        stats = call(ctx, stub.GetJourneyStats, campaigns_pb2.GetJourneyStatsRequest(campaign_id=campaign_id))
    if not found.campaign.steps:
        click.echo(f"{campaign_id} has no steps: a one-step campaign (see `eventline campaigns get`).")
        return
    for line in journey_tree(found.campaign, stats):
        click.echo(line)
