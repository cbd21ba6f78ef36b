"""``python -m eventline_gateway``: serve HTTP until SIGTERM or SIGINT."""

from __future__ import annotations

from eventline_gateway.service import running
from eventline_gateway.settings import Settings
from eventline_shared.server.grpc_server import serve_main


def main() -> None:
    serve_main("gateway", Settings.from_env, running)


if __name__ == "__main__":
    main()
