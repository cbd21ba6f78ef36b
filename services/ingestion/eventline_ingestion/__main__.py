"""``python -m eventline_ingestion``: serve until SIGTERM or SIGINT.

With ``EVENTLINE_INGESTION_WORKERS`` above 1, start that many worker processes
on the same port instead (``eventline_shared.server.workers``).
"""

from __future__ import annotations

import os
import sys

from eventline_ingestion.service import running
from eventline_ingestion.settings import Settings
from eventline_shared.environment import ConfigError
from eventline_shared.server import workers
from eventline_shared.server.grpc_server import serve_main


def main() -> None:
    if workers.supervising(os.environ, "ingestion"):
        try:
            Settings.from_env(os.environ)  # a bad variable stops the supervisor, not N workers
            sys.exit(workers.supervise("ingestion", os.environ))
        except ConfigError as exc:
            sys.exit(f"eventline-ingestion: {exc}")
    serve_main("ingestion", Settings.from_env, running)


if __name__ == "__main__":
    main()
