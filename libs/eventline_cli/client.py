"""What every API command shares: channels, credentials, files in proto3 JSON/YAML, errors.

Commands of other services (segments, campaigns, deliveries) use ``channel(ctx, service)``,
``load_message`` and ``call`` from here, so every command behaves alike: files in the
proto3 JSON mapping (JSON or YAML), server errors printed with their field paths and a
non-zero exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console

from eventline_client.errors import from_rpc_error, violations_of

DEFAULT_PORTS = {"ingestion": 50051, "segmentation": 50052, "campaigns": 50053}

M = TypeVar("M", bound=Message)
R = TypeVar("R")


@dataclass(frozen=True)
class ClientOptions:
    """Where the services are and how to authenticate; the options of the ``eventline`` group."""

    targets: dict[str, str]
    api_key: str
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    tls_server_name: str
    timeout_s: float

    @classmethod
    def build(
        cls,
        target: str | None,
        api_key: str | None,
        tls_ca: Path | None,
        tls_cert: Path | None,
        tls_key: Path | None,
        tls_server_name: str | None,
        timeout_s: float,
    ) -> ClientOptions:
        targets = {}
        for service, port in DEFAULT_PORTS.items():
            prefix = f"EVENTLINE_{service.upper()}_"
            explicit = os.environ.get(prefix + "TARGET", "").strip()
            host = os.environ.get(prefix + "HOST", "").strip() or "127.0.0.1"
            if host in {"0.0.0.0", "::"}:
                host = "127.0.0.1"
            targets[service] = explicit or f"{host}:{os.environ.get(prefix + 'PORT', '').strip() or port}"
        if target:
            targets["ingestion"] = target
        if bool(tls_cert) != bool(tls_key):
            raise click.UsageError("--tls-cert and --tls-key go together (a client certificate and its key)")
        return cls(
            targets,
            api_key or "",
            tls_ca,
            tls_cert,
            tls_key,
            tls_server_name or "",
            timeout_s,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for the services; None: plaintext."""
        if self.tls_ca is None and self.tls_cert is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.tls_server_name)] if self.tls_server_name else []

    def open_channel(self, service: str) -> grpc.Channel:
        target = self.targets[service]
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(target)
        return grpc.secure_channel(target, credentials, options=self.channel_options())


def options(ctx: click.Context) -> ClientOptions:
    found = ctx.find_object(ClientOptions)
    if found is None:  # pragma: no cover - the group always sets it
        raise click.UsageError("client options are missing")
    return found


@contextlib.contextmanager
def channel(ctx: click.Context, service: str) -> Iterator[grpc.Channel]:
    """A channel to ``service``, closed afterwards."""
    opened = options(ctx).open_channel(service)
    try:
        yield opened
    finally:
        opened.close()


def call(ctx: click.Context, method: Callable[..., R], request: Message) -> R:
    """Call an RPC with the deadline and credentials of the command line; exit non-zero on error."""
    opts = options(ctx)
    try:
        return method(request, timeout=opts.timeout_s, metadata=opts.metadata())
    except grpc.RpcError as error:
        fail_rpc(error)


def collect(
    ctx: click.Context, method: Callable[..., Any], request: Any, field: str, limit: int, page_size: int = 100
) -> list[Any]:
    """Up to ``limit`` items of a list RPC: pages of at most ``page_size`` are requested (each
    asks only for what is still missing) and ``field`` of each reply is gathered until the
    server has no next page. ``request`` keeps its filters; its paging fields are set here."""
    found: list[Any] = []
    while len(found) < limit:
        request.page_size = min(page_size, limit - len(found))
        reply = call(ctx, method, request)
        found.extend(getattr(reply, field))
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    return found[:limit]


def describe_status(code: str, message: str, details: list[Any]) -> list[str]:
    """Human lines for a status: the code and message, then one line per field violation."""
    lines = [f"{code}: {message}" if message else code]
    return lines + [f"  {violation.field}: {violation.description}" for violation in violations_of(details)]


def rpc_error_lines(error: grpc.RpcError) -> list[str]:
    decoded = from_rpc_error(error)
    return describe_status(decoded.code.name, decoded.message, list(decoded.details))


def fail_rpc(error: grpc.RpcError) -> NoReturn:
    fail(rpc_error_lines(error))


def fail(lines: list[str] | str, code: int = 1) -> NoReturn:
    console = Console(stderr=True, highlight=False)
    for line in [lines] if isinstance(lines, str) else lines:
        console.print(f"[red]error:[/red] {line}" if not line.startswith("  ") else line, markup=True)
    sys.exit(code)


# --------------------------------------------------------------------------- files


def parse_document(text: str, name: str) -> Any:
    """JSON or YAML (JSON is YAML, but JSON errors read better from the JSON parser)."""
    stripped = text.lstrip()
    if name.endswith(".json") or stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except ValueError as exc:
            if name.endswith(".json"):
                raise click.BadParameter(f"{name}: not valid JSON: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{name}: not valid JSON or YAML: {exc}") from None


def _jsonable(value: Any) -> Any:
    """YAML turns timestamps into datetimes; proto3 JSON wants RFC 3339 strings."""
    import datetime as dt

    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def message_from_dict(data: Any, message: M, name: str) -> M:
    try:
        json_format.ParseDict(_jsonable(data), message)
    except json_format.ParseError as exc:
        raise click.BadParameter(f"{name}: {exc}") from None
    return message


def load_message(path: str, message: M) -> M:
    """Read ``message`` from a JSON or YAML file (``-`` is stdin) in the proto3 JSON mapping."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return message_from_dict(parse_document(text, path), message, path)


def load_request(path: str, request: M, inner: str) -> M:
    """A request from a file holding either the whole request or just its ``inner`` message.

    ``segments save -f s.yaml`` accepts a Segment or a CreateSegmentRequest: a file whose keys
    are fields of the request (other than ``inner``'s own) is the request.
    """
    with click.open_file(path) as handle:
        data = parse_document(handle.read(), path)
    fields = request.DESCRIPTOR.fields_by_name
    camel = {field.json_name for field in request.DESCRIPTOR.fields}
    if isinstance(data, dict) and (inner in data or any(key in fields or key in camel for key in data)):
        inner_type = fields[inner].message_type if inner in fields else None
        inner_fields = set(inner_type.fields_by_name) if inner_type is not None else set()
        if inner in data or not set(data) & inner_fields:
            return message_from_dict(data, request, path)
    message_from_dict(data, getattr(request, inner), path)
    return request


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_message(message: Message, output: str = "json") -> None:
    data = to_dict(message)
    if output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
    else:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _output_option(formats: list[str], help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-o/--output``: one of ``formats``, the first by default."""
    return click.option(
        "-o", "--output", type=click.Choice(formats), default=formats[0], show_default=True, help=help
    )


output_option = _output_option(["json", "yaml"], "Output format (proto3 JSON mapping).")
"""The ``--output`` of commands that print one message."""

table_output_option = _output_option(
    ["table", "json"], "Output format: a table, or the items in the proto3 JSON mapping."
)
"""The ``--output`` of list commands: a table for people, JSON for scripts."""
