"""``python -m eventline_gateway``: serve HTTP until SIGTERM or SIGINT.

With ``EVENTLINE_GATEWAY_WORKERS`` above 1, start that many worker processes on the same
port instead (``eventline_shared.server.workers``): the gateway keeps no state, so its workers
share nothing but the port.
"""

from __future__ import annotations

import os
import sys

from eventline_gateway.service import running
from eventline_gateway.settings import Settings
from eventline_shared.environment import ConfigError
from eventline_shared.server import workers
from eventline_shared.server.grpc_server import serve_main


def main() -> None:
    if workers.supervising(os.environ, "gateway"):
        try:
            Settings.from_env(os.environ)  # a bad variable stops the supervisor, not N workers
            sys.exit(workers.supervise("gateway", os.environ))
        except ConfigError as exc:
            sys.exit(f"eventline-gateway: {exc}")
    serve_main("gateway", Settings.from_env, running)


if __name__ == "__main__":
    main()
