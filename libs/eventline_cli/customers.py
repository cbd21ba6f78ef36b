"""``eventline customers get|upsert|erase``."""

from __future__ import annotations

import click
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc

from eventline_cli.client import call, channel, load_message, message_from_dict, output_option, print_message


@click.group()
def customers() -> None:
    """Read, create or change, and erase customer profiles."""


@customers.command()
@click.argument("customer_id")
@output_option
@click.pass_context
def get(ctx: click.Context, customer_id: str, output: str) -> None:
    """Print a customer's profile."""
    with channel(ctx, "ingestion") as opened:
        stub = ingestion_pb2_grpc.IngestionServiceStub(opened)
        reply = call(ctx, stub.GetCustomer, ingestion_pb2.GetCustomerRequest(customer_id=customer_id))
    print_message(reply.customer, output)


@customers.command()
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    help="A Customer (or an UpsertCustomerRequest) in JSON or YAML, proto3 JSON mapping; - reads stdin.",
)
@click.option(
    "--update",
    "fields",
    multiple=True,
    metavar="FIELD",
    help="Change only this profile field (repeatable); without it the whole profile is replaced.",
)
@output_option
@click.pass_context
def upsert(ctx: click.Context, path: str, fields: tuple[str, ...], output: str) -> None:
    """Create or change a customer profile; prints the stored profile."""
    from eventline_cli.client import parse_document

    with click.open_file(path) as handle:
        text = handle.read()
    data = parse_document(text, path)
    if isinstance(data, dict) and ("customer" in data or "update_mask" in data or "updateMask" in data):
        request = message_from_dict(data, ingestion_pb2.UpsertCustomerRequest(), path)
    else:
        request = ingestion_pb2.UpsertCustomerRequest(
            customer=message_from_dict(data, common_pb2.Customer(), path)
        )
    if fields:
        request.update_mask.paths.extend(fields)
    with channel(ctx, "ingestion") as opened:
        stub = ingestion_pb2_grpc.IngestionServiceStub(opened)
        reply = call(ctx, stub.UpsertCustomer, request)
    click.echo(("created " if reply.created else "updated ") + reply.customer.customer_id, err=True)
    print_message(reply.customer, output)


@customers.command()
@click.argument("customer_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def erase(ctx: click.Context, customer_id: str, yes: bool) -> None:
    """Erase a customer: profile, events, derived rows and stream copies (right to erasure)."""
    if not yes:
        click.confirm(f"Erase customer {customer_id} and everything about them?", abort=True)
    with channel(ctx, "ingestion") as opened:
        stub = ingestion_pb2_grpc.IngestionServiceStub(opened)
        reply = call(ctx, stub.EraseCustomer, ingestion_pb2.EraseCustomerRequest(customer_id=customer_id))
    click.echo(
        f"erased {customer_id}: profile {'erased' if reply.customer_erased else 'absent'}, "
        f"{reply.events_erased} events, {reply.stream_entries_erased} stream entries"
    )


__all__ = ["customers", "load_message"]
