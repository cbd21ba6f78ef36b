"""Fault hooks for reliability tests: kill the process at a chosen point, as a crash would.

``EVENTLINE_CAMPAIGNS_FAULT`` names the point and ``EVENTLINE_CAMPAIGNS_FAULT_AFTER``
(default 1) the occurrence at which the process exits at once (``os._exit(137)``,
no cleanup, like kill -9):

* ``exit_after_send``: after the provider calls of a batch, before their outcome
  is written to the ledger (the rows stay pending: they are sent again, with the
  same idempotency key, when their lease expires);
* ``exit_before_ack``: after the outcome is written, before the stream entries
  are acknowledged (they are reclaimed and reprocessed: no second provider call).

Unset in production; read once at import.
"""

from __future__ import annotations

import os

_POINT = os.environ.get("EVENTLINE_CAMPAIGNS_FAULT", "").strip()
_AFTER = int(os.environ.get("EVENTLINE_CAMPAIGNS_FAULT_AFTER", "1") or 1)
_seen = 0


def point(name: str) -> None:
    """Exit the process here when this is the configured fault point and occurrence."""
    global _seen
    if _POINT != name:
        return
    _seen += 1
    if _seen >= _AFTER:
        os._exit(137)
