"""``python -m eventline_ingestion``: serve until SIGTERM or SIGINT."""

from __future__ import annotations

from eventline_ingestion.service import running
from eventline_ingestion.settings import Settings
from eventline_shared.grpc_server import serve_main


def main() -> None:
    serve_main("ingestion", Settings.from_env, running)


if __name__ == "__main__":
    main()
