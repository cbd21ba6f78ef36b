"""``python -m eventline_campaigns``: serve until SIGTERM or SIGINT."""

from __future__ import annotations

from eventline_campaigns.service import running
from eventline_campaigns.settings import Settings
from eventline_shared.server.grpc_server import serve_main


def main() -> None:
    serve_main("campaigns", Settings.from_env, running)


if __name__ == "__main__":
    main()
