"""The ``eventline`` command: run the suite locally and use its API from a shell."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from eventline_cli import up as up_module


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Eventline: customer events, segments and campaigns."""


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
