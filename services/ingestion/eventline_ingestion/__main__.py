"""``python -m eventline_ingestion``: serve until SIGTERM or SIGINT.

With ``EVENTLINE_INGESTION_WORKERS`` above 1, start that many worker processes
on the same port instead (``eventline_shared.server.workers``).
"""

from __future__ import annotations

from eventline_ingestion.service import running
from eventline_ingestion.settings import Settings
from eventline_shared.server.grpc_server import serve_main


def main() -> None:
    serve_main("ingestion", Settings.from_env, running, supervise_workers=True)


if __name__ == "__main__":
    main()
