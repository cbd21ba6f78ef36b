"""The one way the campaign service repeats a background check (campaign changes, erasures)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def poll(
    step: Callable[[], Awaitable[object]], interval_s: float, stop: asyncio.Event, failed: str
) -> None:
    """Run ``step`` every ``interval_s`` until ``stop`` is set; a failure is logged as ``failed``, then retried."""
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            log.warning(failed, extra={"error": repr(exc)[:300]})
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
