"""``python -m eventline_gateway``: serve HTTP until SIGTERM or SIGINT.

With ``EVENTLINE_GATEWAY_WORKERS`` above 1, start that many worker processes on the same
port instead (``eventline_shared.server.workers``): the gateway keeps no state, so its workers
share nothing but the port.
"""

from __future__ import annotations

from eventline_gateway.service import running
from eventline_gateway.settings import Settings
from eventline_shared.server.grpc_server import serve_main


def main() -> None:
    serve_main("gateway", Settings.from_env, running, supervise_workers=True)


if __name__ == "__main__":
    main()
