"""The ``eventline`` command: run the suite locally and use its API from a shell.

Other services' commands (segments, campaigns, deliveries, demo) register here with
``cli.add_command``; they use ``eventline_cli.client`` for channels, files and errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from eventline_cli import up as up_module
from eventline_cli.campaigns import campaigns, deliveries
from eventline_cli.client import ClientOptions
from eventline_cli.customers import customers
from eventline_cli.demo import demo
from eventline_cli.events import events, timeline
from eventline_cli.keys import keys
from eventline_cli.migrate import migrate
from eventline_cli.segments import segments
from eventline_cli.suppressions import suppressions

_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--target",
    envvar="EVENTLINE_TARGET",
    metavar="HOST:PORT",
    help="The ingestion service (default EVENTLINE_INGESTION_TARGET, else 127.0.0.1:50051).",
)
@click.option("--api-key", envvar="EVENTLINE_API_KEY", help="API key sent as `authorization: Bearer KEY`.")
@click.option(
    "--tls-ca", envvar="EVENTLINE_TLS_CA", type=_file, help="Use TLS, trusting this CA certificate."
)
@click.option(
    "--tls-cert", envvar="EVENTLINE_TLS_CLIENT_CERT", type=_file, help="Client certificate (mutual TLS)."
)
@click.option("--tls-key", envvar="EVENTLINE_TLS_CLIENT_KEY", type=_file, help="Client certificate's key.")
@click.option(
    "--tls-server-name", envvar="EVENTLINE_TLS_SERVER_NAME", help="Expected server name, when not the host."
)
@click.option(
    "--timeout", "timeout_s", type=float, default=30.0, show_default=True, help="RPC deadline in seconds."
)
@click.pass_context
def cli(ctx: click.Context, /, **options: Any) -> None:
    """Eventline: customer events, segments and campaigns."""
    ctx.obj = ClientOptions.build(**options)  # the group's options are ClientOptions.build's parameters


@cli.command()
@click.option(
    "--data-dir",
    envvar="EVENTLINE_DATA_DIR",
    default=".eventline",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded PostgreSQL and Redis keep their data.",
)
def up(data_dir: Path) -> None:
    """Start the services (and an embedded PostgreSQL and Redis unless configured); Ctrl-C stops all."""
    sys.exit(up_module.up(data_dir))


@cli.command()
@click.argument("target", required=False)
@click.option("--service", default="", help="The service name to check; empty means the whole server.")
@click.pass_context
def health(ctx: click.Context, target: str | None, service: str) -> None:
    """Exit 0 when the server at TARGET (default: ingestion) reports SERVING (for container health checks).

    An http:// or https:// TARGET is the gateway: its /readyz (with --service, that backend's).
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options: ClientOptions = ctx.obj
    if target and target.startswith(("http://", "https://")):
        sys.exit(_http_ready(target, service, min(options.timeout_s, 5.0)))
    opened = grpc.insecure_channel(target) if target else options.open_channel("ingestion")
    try:
        reply = health_pb2_grpc.HealthStub(opened).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=min(options.timeout_s, 5.0)
        )
    except grpc.RpcError as error:
        click.echo(f"not serving: {error.code().name}", err=True)
        sys.exit(1)
    finally:
        opened.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    click.echo(status)
    sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)


def _http_ready(target: str, backend: str, timeout_s: float) -> int:
    """The gateway's readiness: 0 when /readyz answers 200, else 1."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    url = target.rstrip("/") + "/readyz" + (f"?backend={urllib.parse.quote(backend)}" if backend else "")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            click.echo(json.loads(reply.read())["status"])
            return 0
    except urllib.error.HTTPError as error:
        click.echo(f"not serving: HTTP {error.code}", err=True)
    except (OSError, ValueError) as error:
        click.echo(f"not serving: {error}", err=True)
    return 1


cli.add_command(events)
cli.add_command(timeline)
cli.add_command(customers)
cli.add_command(keys)
cli.add_command(migrate)
cli.add_command(segments)
cli.add_command(campaigns)
cli.add_command(deliveries)
cli.add_command(suppressions)
cli.add_command(demo)
