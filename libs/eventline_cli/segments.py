"""``eventline segments count|list|explain --filter FILE``, ``segments save|get|list`` and, for
real-time segments, ``segments members|watch ID``."""

from __future__ import annotations

import json

import click
import grpc
from eventline.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from rich.console import Console
from rich.table import Table

from eventline_cli.client import (
    call,
    channel,
    collect,
    fail_rpc,
    load_message,
    load_request,
    options,
    output_option,
    print_message,
    to_dict,
)


def _target(request: segmentation_pb2.CountCustomersRequest | segmentation_pb2.ListCustomersRequest,
            filter_path: str | None, segment_id: str | None) -> None:  # fmt: skip
    if bool(filter_path) == bool(segment_id):
        raise click.UsageError("give exactly one of --filter FILE and --segment ID")
    if segment_id:
        request.segment_id = segment_id
    else:
        assert filter_path is not None
        load_message(filter_path, request.filter)


filter_option = click.option(
    "--filter", "filter_path", metavar="FILE", help="A Filter (eventline.segmentation.v1) in JSON or YAML."
)
segment_option = click.option(
    "--segment", "segment_id", metavar="ID", help="A saved segment instead of a filter."
)


@click.group()
def segments() -> None:
    """Count, list and explain customers matching a filter; save and read segments."""


@segments.command()
@filter_option
@segment_option
@click.pass_context
def count(ctx: click.Context, filter_path: str | None, segment_id: str | None) -> None:
    """How many customers match."""
    request = segmentation_pb2.CountCustomersRequest()
    _target(request, filter_path, segment_id)
    with channel(ctx, "segmentation") as opened:
        reply = call(ctx, segmentation_pb2_grpc.SegmentationServiceStub(opened).CountCustomers, request)
    click.echo(reply.count)


@segments.command("list")
@filter_option
@segment_option
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.pass_context
def list_(ctx: click.Context, filter_path: str | None, segment_id: str | None, limit: int) -> None:
    """The matching customers' ids; without --filter or --segment, the saved segments."""
    with channel(ctx, "segmentation") as opened:
        stub = segmentation_pb2_grpc.SegmentationServiceStub(opened)
        if not filter_path and not segment_id:
            listing = segmentation_pb2.ListSegmentsRequest()
            saved: list[segmentation_pb2.Segment] = collect(
                ctx, stub.ListSegments, listing, "segments", limit
            )
            table = Table()
            for column in ("segment id", "name", "description"):
                table.add_column(column)
            for segment in saved:
                table.add_row(segment.segment_id, segment.display_name, segment.description)
            Console(highlight=False).print(table)
            return
        request = segmentation_pb2.ListCustomersRequest()
        _target(request, filter_path, segment_id)
        found: list[str] = collect(ctx, stub.ListCustomers, request, "customer_ids", limit, page_size=1000)
    for customer_id in found:
        click.echo(customer_id)


@segments.command()
@filter_option
@click.pass_context
def explain(ctx: click.Context, filter_path: str | None) -> None:
    """Check a filter: its violations (with field paths) and the segments it references."""
    if not filter_path:
        raise click.UsageError("--filter FILE is required")
    request = segmentation_pb2.ValidateFilterRequest()
    load_message(filter_path, request.filter)
    with channel(ctx, "segmentation") as opened:
        reply = call(ctx, segmentation_pb2_grpc.SegmentationServiceStub(opened).ValidateFilter, request)
    click.echo(json.dumps(to_dict(reply), indent=2))
    if not reply.valid:
        raise SystemExit(1)


@segments.command()
@click.option(
    "-f", "--file", "path", required=True, help="A Segment (or CreateSegmentRequest) in JSON or YAML."
)
@click.option("--id", "segment_id", help="The new segment's id (else the file's, else one is chosen).")
@click.option("--realtime", is_flag=True, help="Keep its membership up to date (a real-time segment).")
@click.option(
    "--time-zone", help="The IANA time zone of a real-time segment's days (else the file's, else UTC)."
)
@output_option
@click.pass_context
def save(
    ctx: click.Context, path: str, segment_id: str | None, realtime: bool, time_zone: str | None, output: str
) -> None:
    """Save a segment; prints it."""
    request = load_request(path, segmentation_pb2.CreateSegmentRequest(), "segment")
    if segment_id:
        request.segment_id = segment_id
    if realtime:
        request.segment.realtime = True
    if time_zone:
        request.segment.time_zone = time_zone
    with channel(ctx, "segmentation") as opened:
        reply = call(ctx, segmentation_pb2_grpc.SegmentationServiceStub(opened).CreateSegment, request)
    print_message(reply.segment, output)


@segments.command()
@click.argument("segment_id")
@output_option
@click.pass_context
def get(ctx: click.Context, segment_id: str, output: str) -> None:
    """Print a saved segment."""
    with channel(ctx, "segmentation") as opened:
        stub = segmentation_pb2_grpc.SegmentationServiceStub(opened)
        reply = call(ctx, stub.GetSegment, segmentation_pb2.GetSegmentRequest(segment_id=segment_id))
    print_message(reply.segment, output)


@segments.command()
@click.argument("segment_id")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@click.pass_context
def members(ctx: click.Context, segment_id: str, limit: int) -> None:
    """The members of a real-time segment: customer id and when they entered, tab-separated."""
    request = segmentation_pb2.ListSegmentMembersRequest(segment_id=segment_id)
    shown = 0
    with channel(ctx, "segmentation") as opened:
        stub = segmentation_pb2_grpc.SegmentationServiceStub(opened)
        while shown < limit:
            request.page_size = min(1000, limit - shown)
            reply = call(ctx, stub.ListSegmentMembers, request)
            for member in reply.members:
                click.echo(f"{member.customer_id}\t{member.entered_at.ToJsonString()}")
            shown += len(reply.members)
            if not reply.next_page_token:
                break
            request.page_token = reply.next_page_token
    if reply.backfilling:
        click.echo("(the membership is still being computed)", err=True)


@segments.command()
@click.argument("segment_id")
@click.option("--after", "after_cursor", type=click.IntRange(0), default=0, help="Resume after this cursor.")
@click.option(
    "--count", type=click.IntRange(1), help="Stop after this many transitions (else run until interrupted)."
)
@click.pass_context
def watch(ctx: click.Context, segment_id: str, after_cursor: int, count: int | None) -> None:
    """Print a real-time segment's transitions as JSON lines (cursor, customer, kind, time)."""
    request = segmentation_pb2.WatchSegmentRequest(segment_id=segment_id, after_cursor=after_cursor)
    seen = 0
    with channel(ctx, "segmentation") as opened:
        stub = segmentation_pb2_grpc.SegmentationServiceStub(opened)
        replies = stub.WatchSegment(request, metadata=options(ctx).metadata())  # no deadline: it runs on
        try:
            for reply in replies:
                click.echo(json.dumps(to_dict(reply)), nl=True)
                seen += 1
                if count is not None and seen >= count:
                    break
        except grpc.RpcError as error:
            fail_rpc(error)
        finally:
            replies.cancel()
