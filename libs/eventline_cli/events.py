"""``eventline events send|import`` and ``eventline timeline``."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import grpc
from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2, ingestion_pb2_grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from eventline_cli.client import (
    call,
    channel,
    collect,
    describe_status,
    fail,
    fail_rpc,
    load_message,
    message_from_dict,
    options,
    output_option,
    print_message,
    table_output_option,
    to_dict,
)

_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)$")
VALUE_TYPES = ("string", "integer", "decimal", "boolean", "timestamp")


def parse_timestamp(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def typed_value(raw: str, kind: str | None = None) -> common_pb2.Value:
    """A context value from text: ``kind`` when given, else inferred (integer, decimal, boolean, timestamp, string)."""
    value = common_pb2.Value()
    if kind is None:
        lowered = raw.strip().lower()
        if lowered in {"true", "false"}:
            kind = "boolean"
        elif _INTEGER.match(raw.strip()):
            kind = "integer"
        elif _DECIMAL.match(raw.strip()):
            kind = "decimal"
        elif re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", raw.strip()):
            kind = "timestamp"
        else:
            kind = "string"
    if kind == "string":
        value.string_value = raw
    elif kind == "integer":
        try:
            value.integer_value = int(raw)
        except ValueError:
            raise click.BadParameter(f"{raw!r} is not an integer") from None
    elif kind == "decimal":
        value.decimal_value = raw.strip()
    elif kind == "boolean":
        lowered = raw.strip().lower()
        if lowered not in {"true", "false", "1", "0", "yes", "no"}:
            raise click.BadParameter(f"{raw!r} is not a boolean")
        value.boolean_value = lowered in {"true", "1", "yes"}
    elif kind == "timestamp":
        value.timestamp_value.FromDatetime(parse_timestamp(raw))
    else:
        raise click.BadParameter(f"unknown value type {kind!r}; use one of {', '.join(VALUE_TYPES)}")
    return value


def split_key(key: str) -> tuple[str, str | None]:
    """``total:decimal`` → (``total``, ``decimal``); ``total`` → (``total``, None)."""
    name, sep, kind = key.partition(":")
    return (name, kind) if sep else (key, None)


def parse_context(pairs: tuple[str, ...]) -> dict[str, common_pb2.Value]:
    context = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE (or KEY:TYPE=VALUE)", param_hint="--context")
        name, kind = split_key(key)
        context[name] = typed_value(raw, kind)
    return context


def value_text(value: common_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(dt.UTC).isoformat().replace("+00:00", "Z")
    if kind == "boolean_value":
        return "true" if value.boolean_value else "false"
    if kind is None:
        return ""
    return str(getattr(value, kind))


# --------------------------------------------------------------------------- send


@click.group()
def events() -> None:
    """Send and import events."""


@events.command()
@click.option("--customer", "customer_id", help="The customer the event belongs to; omit for a system event.")
@click.option("--name", help="The event name, for example order_placed.")
@click.option("--event-id", help="Idempotency key; a random one by default (a repeat stores nothing new).")
@click.option("--occurred-at", help="ISO 8601 time of the event; the time received by default.")
@click.option(
    "--context",
    "-c",
    "context",
    multiple=True,
    metavar="KEY[:TYPE]=VALUE",
    help=f"A context value; TYPE is one of {', '.join(VALUE_TYPES)} (inferred when omitted). Repeatable.",
)
@click.option(
    "-f",
    "--file",
    "path",
    help="A TrackCustomerEventRequest (or, without customer_id, TrackSystemEventRequest) in JSON or YAML.",
)
@output_option
@click.pass_context
def send(
    ctx: click.Context,
    customer_id: str | None,
    name: str | None,
    event_id: str | None,
    occurred_at: str | None,
    context: tuple[str, ...],
    path: str | None,
    output: str,
) -> None:
    """Track one customer event (or a system event without --customer); prints the stored event."""
    if path:
        from eventline_cli.client import parse_document

        with click.open_file(path) as handle:
            text = handle.read()
        data = parse_document(text, path)
        item = item_from_dict(data, path)
    else:
        if not name:
            raise click.UsageError("--name is required (or give the event with -f FILE)")
        item = ingestion_pb2.TrackEventsItem()
        request: Any = item.customer_event if customer_id else item.system_event
        if customer_id:
            request.customer_id = customer_id
        request.name = name
        for key, value in parse_context(context).items():
            request.context[key].CopyFrom(value)
        if occurred_at:
            request.occurred_at.FromDatetime(parse_timestamp(occurred_at))
    request = getattr(item, item.WhichOneof("event") or "customer_event")
    if event_id:
        request.event_id = event_id
    elif not request.event_id:
        request.event_id = str(uuid.uuid4())
    with channel(ctx, "ingestion") as opened:
        stub = ingestion_pb2_grpc.IngestionServiceStub(opened)
        if item.HasField("customer_event"):
            reply: Any = call(ctx, stub.TrackCustomerEvent, item.customer_event)
        else:
            reply = call(ctx, stub.TrackSystemEvent, item.system_event)
    print_message(reply, output)


def item_from_dict(data: Any, name: str) -> ingestion_pb2.TrackEventsItem:
    """An event in the proto3 JSON mapping: a TrackEventsItem, or a bare customer or system event."""
    if not isinstance(data, dict):
        raise click.BadParameter(f"{name}: an event must be an object")
    item = ingestion_pb2.TrackEventsItem()
    if data.keys() & {"customer_event", "customerEvent", "system_event", "systemEvent"}:
        return message_from_dict(data, item, name)
    if data.get("customer_id") or data.get("customerId"):
        message_from_dict(data, item.customer_event, name)
    else:
        message_from_dict(data, item.system_event, name)
    return item


# --------------------------------------------------------------------------- import


@dataclass
class SourceLine:
    """One event of an import file, with where it came from."""

    line: int
    item: ingestion_pb2.TrackEventsItem | None
    problem: str = ""


def derived_event_id(path: Path, line: int, text: str) -> str:
    """Stable per file name, line number and content: re-importing a file stores nothing twice."""
    digest = hashlib.sha256(f"{path.name}\n{line}\n{text}".encode()).hexdigest()
    return f"import-{digest[:40]}"


def _with_event_id(item: ingestion_pb2.TrackEventsItem, event_id: str) -> ingestion_pb2.TrackEventsItem:
    request = getattr(item, item.WhichOneof("event") or "customer_event")
    if not request.event_id:
        request.event_id = event_id
    return item


def read_ndjson(path: Path) -> Iterator[SourceLine]:
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
                item = item_from_dict(data, f"line {number}")
            except (ValueError, click.BadParameter) as exc:
                message = (
                    exc.format_message() if isinstance(exc, click.BadParameter) else f"not valid JSON: {exc}"
                )
                yield SourceLine(number, None, message)
                continue
            yield SourceLine(number, _with_event_id(item, derived_event_id(path, number, text.rstrip("\n"))))


CSV_COLUMNS = {"event_id", "customer_id", "name", "occurred_at"}


def read_csv(path: Path) -> Iterator[SourceLine]:
    """Columns event_id, customer_id (empty: a system event), name, occurred_at; any other column is
    a context key, typed by a ``key:type`` header or inferred from the value. Empty cells are skipped."""
    with path.open(encoding="utf-8", newline="") as handle:
        raw_lines = handle.read().splitlines()
    reader = csv.reader(io.StringIO("\n".join(raw_lines)))
    header = next(reader, None)
    if header is None:
        return
    if "name" not in header:
        yield SourceLine(1, None, "the header needs a name column")
        return
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        cells = dict(zip(header, row, strict=False))
        try:
            item = ingestion_pb2.TrackEventsItem()
            customer = cells.get("customer_id", "").strip()
            request: Any = item.customer_event if customer else item.system_event
            if customer:
                request.customer_id = customer
            request.name = cells.get("name", "").strip()
            if cells.get("event_id", "").strip():
                request.event_id = cells["event_id"].strip()
            if cells.get("occurred_at", "").strip():
                request.occurred_at.FromDatetime(parse_timestamp(cells["occurred_at"]))
            for column, cell in cells.items():
                if column in CSV_COLUMNS or cell == "":
                    continue
                key, kind = split_key(column)
                request.context[key].CopyFrom(typed_value(cell, kind))
        except click.BadParameter as exc:
            yield SourceLine(number, None, exc.format_message())
            continue
        text = raw_lines[number - 1] if number - 1 < len(raw_lines) else ",".join(row)
        yield SourceLine(number, _with_event_id(item, derived_event_id(path, number, text)))


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} events/s" if speed else "- events/s", style="cyan")


@events.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format", "file_format", type=click.Choice(["auto", "ndjson", "csv"]), default="auto", show_default=True
)
@click.option("--batch-size", type=click.IntRange(1, 1000), default=500, show_default=True)
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=4, show_default=True, help="Batches in flight."
)
@click.option(
    "--bulk/--live",
    default=True,
    show_default=True,
    help="Send the batches as a bulk import (real-time segments catch up after it, within their "
    "bound) or as live events (evaluated as they arrive).",
)
@click.pass_context
def import_events(
    ctx: click.Context, path: Path, file_format: str, batch_size: int, concurrency: int, bulk: bool
) -> None:
    """Import events from an NDJSON or CSV file through the batch RPC.

    NDJSON: one event per line in the proto3 JSON mapping (a TrackCustomerEventRequest, a
    TrackSystemEventRequest without customer_id, or a TrackEventsItem). CSV: columns event_id,
    customer_id, name, occurred_at, and one column per context key (header ``key`` or ``key:type``).
    Lines without an event id get one derived from the file name, line number and content, so
    importing the same file again stores nothing twice. The batches are hinted as a bulk import
    (``TrackEventsRequest.bulk_import``: real-time segments catch up after it) unless ``--live``.
    """
    if file_format == "auto":
        file_format = "csv" if path.suffix.lower() == ".csv" else "ndjson"
    source = list(read_csv(path) if file_format == "csv" else read_ndjson(path))
    console = Console(stderr=True, highlight=False)
    problems: list[tuple[int, str]] = [(entry.line, entry.problem) for entry in source if entry.item is None]
    good = [entry for entry in source if entry.item is not None]
    counts = {"stored": 0, "deduplicated": 0}
    opts = options(ctx)
    in_flight: deque[tuple[list[SourceLine], Any]] = deque()

    def settle_oldest() -> None:
        chunk, future = in_flight.popleft()
        try:
            reply = future.result()
        except grpc.RpcError as error:
            fail_rpc(error)
        for entry, result in zip(chunk, reply.results, strict=True):
            if result.HasField("error"):
                lines = describe_status(
                    _code_name(result.error.code), result.error.message, list(result.error.details)
                )
                lines = [
                    re.sub(r"^  events\[\d+\]\.", "  ", line) if line.startswith("  ") else line
                    for line in lines
                ]
                problems.append((entry.line, "\n".join(lines)))
            elif result.deduplicated:
                counts["deduplicated"] += 1
            else:
                counts["stored"] += 1
        progress.advance(task, len(chunk))

    with channel(ctx, "ingestion") as opened:
        stub = ingestion_pb2_grpc.IngestionServiceStub(opened)
        with Progress(
            TextColumn("[bold]importing[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task(path.name, total=len(good))
            for start in range(0, len(good), batch_size):
                chunk = good[start : start + batch_size]
                # The outcome of each line is all the import reports: no stored event echoed back.
                request = ingestion_pb2.TrackEventsRequest(
                    events=[entry.item for entry in chunk if entry.item],
                    omit_stored_events=True,
                    bulk_import=bulk,
                )
                future = stub.TrackEvents.future(request, timeout=opts.timeout_s, metadata=opts.metadata())
                in_flight.append((chunk, future))
                if len(in_flight) >= concurrency:
                    settle_oldest()
            while in_flight:
                settle_oldest()
    console.print(
        f"{path.name}: {counts['stored']} stored, {counts['deduplicated']} already stored before,"
        f" {len(problems)} refused",
        highlight=False,
    )
    if problems:
        fail([f"line {line}: {text}" for line, text in sorted(problems)])


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return str(code)


# --------------------------------------------------------------------------- timeline


@click.command()
@click.argument("customer_id")
@click.option("--name", "names", multiple=True, help="Only events with this name (repeatable).")
@click.option("--after", help="Only events that occurred at or after this ISO 8601 time.")
@click.option("--before", help="Only events that occurred before this ISO 8601 time.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True, help="Most events shown.")
@table_output_option
@click.pass_context
def timeline(
    ctx: click.Context,
    customer_id: str,
    names: tuple[str, ...],
    after: str | None,
    before: str | None,
    limit: int,
    output: str,
) -> None:
    """A customer's events, newest first."""
    request = ingestion_pb2.ListTimelineRequest(customer_id=customer_id, event_names=list(names))
    if after:
        request.occurred_after.FromDatetime(parse_timestamp(after))
    if before:
        request.occurred_before.FromDatetime(parse_timestamp(before))
    with channel(ctx, "ingestion") as opened:
        stub = ingestion_pb2_grpc.IngestionServiceStub(opened)
        found: list[common_pb2.Event] = collect(ctx, stub.ListTimeline, request, "events", limit)
    if output == "json":
        click.echo(json.dumps([to_dict(event) for event in found], indent=2, ensure_ascii=False))
        return
    table = Table(title=f"Timeline of {customer_id}", title_justify="left")
    table.add_column("occurred at (UTC)", no_wrap=True)
    table.add_column("name", style="bold")
    table.add_column("event id", overflow="fold")
    table.add_column("context", overflow="fold")
    for event in found:
        occurred = event.occurred_at.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        context = ", ".join(f"{key}={value_text(value)}" for key, value in sorted(event.context.items()))
        table.add_row(occurred, event.name, event.event_id, context)
    Console(highlight=False).print(table)
    if not found:
        click.echo(f"no events for {customer_id}")


__all__ = ["events", "import_events", "load_message", "send", "timeline"]
