"""``python -m eventline_cli`` is the ``eventline`` command."""

from eventline_cli.main import cli

if __name__ == "__main__":
    cli()
