"""``python -m eventline_segmentation``: serve until SIGTERM or SIGINT."""

from __future__ import annotations

from eventline_segmentation.service import running
from eventline_segmentation.settings import Settings
from eventline_shared.server.grpc_server import serve_main


def main() -> None:
    serve_main("segmentation", Settings.from_env, running)


if __name__ == "__main__":
    main()
