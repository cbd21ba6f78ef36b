"""``eventline suppressions list|add|remove``: addresses that are sent nothing on a channel."""

from __future__ import annotations

import datetime as dt
import json

import click
from eventline.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from rich.console import Console
from rich.table import Table

from eventline_cli.client import call, channel, collect, print_message, table_output_option, to_dict

CHANNELS = {"email": campaigns_pb2.CHANNEL_EMAIL, "sms": campaigns_pb2.CHANNEL_SMS}
_channel_option = click.option(
    "--channel", "channel_name", type=click.Choice(sorted(CHANNELS)), default="email", show_default=True
)


def _stub(opened: object) -> campaigns_pb2_grpc.CampaignServiceStub:
    return campaigns_pb2_grpc.CampaignServiceStub(opened)


def _word(enum: object, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


@click.group()
def suppressions() -> None:
    """Suppressed addresses: hard bounces, complaints, repeated soft bounces, added by hand."""


@suppressions.command("list")
@click.option("--channel", "channel_name", type=click.Choice(sorted(CHANNELS)), help="Only this channel.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@table_output_option
@click.pass_context
def list_(ctx: click.Context, channel_name: str | None, limit: int, output: str) -> None:
    """The suppressed addresses, newest first."""
    request = campaigns_pb2.ListSuppressionsRequest(
        channel=CHANNELS[channel_name] if channel_name else campaigns_pb2.CHANNEL_UNSPECIFIED
    )
    with channel(ctx, "campaigns") as opened:
        found: list[campaigns_pb2.Suppression] = collect(
            ctx, _stub(opened).ListSuppressions, request, "suppressions", limit, page_size=1000
        )
    if output == "json":
        click.echo(json.dumps([to_dict(s) for s in found], indent=2, ensure_ascii=False))
        return
    table = Table()
    for column in ("since (UTC)", "channel", "address", "reason", "delivery", "detail"):
        table.add_column(column)
    for item in found:
        table.add_row(
            item.create_time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            _word(campaigns_pb2.Channel, item.channel, "CHANNEL_"),
            item.address,
            _word(campaigns_pb2.SuppressionReason, item.reason, "SUPPRESSION_REASON_"),
            item.delivery_id,
            item.detail,
        )
    Console(highlight=False).print(table)


@suppressions.command()
@click.argument("address")
@_channel_option
@click.option("--detail", default="", help="A note: why, who.")
@click.pass_context
def add(ctx: click.Context, address: str, channel_name: str, detail: str) -> None:
    """Send nothing to ADDRESS on the channel from now on; prints the suppression."""
    suppression = campaigns_pb2.Suppression(channel=CHANNELS[channel_name], address=address, detail=detail)
    with channel(ctx, "campaigns") as opened:
        reply = call(
            ctx,
            _stub(opened).CreateSuppression,
            campaigns_pb2.CreateSuppressionRequest(suppression=suppression),
        )
    print_message(reply.suppression)


@suppressions.command()
@click.argument("address")
@_channel_option
@click.pass_context
def remove(ctx: click.Context, address: str, channel_name: str) -> None:
    """Lift the suppression of ADDRESS on the channel."""
    with channel(ctx, "campaigns") as opened:
        call(
            ctx,
            _stub(opened).DeleteSuppression,
            campaigns_pb2.DeleteSuppressionRequest(channel=CHANNELS[channel_name], address=address),
        )
    click.echo(f"{address}: no longer suppressed on {channel_name}")
