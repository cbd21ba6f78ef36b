"""``python -m eventline_segmentation``: serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import sys

from eventline_segmentation.service import running
from eventline_segmentation.settings import Settings
from eventline_shared import logs
from eventline_shared.config import ConfigError
from eventline_shared.grpc_server import wait_for_signal


async def serve(settings: Settings) -> None:
    async with running(settings):
        await wait_for_signal()


def main() -> None:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        sys.exit(f"eventline-segmentation: {exc}")
    logs.configure("segmentation", settings.common.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
