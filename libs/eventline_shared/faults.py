"""Fault points: named places where a test can make a process crash or stall for real.

``EVENTLINE_FAULTS`` lists ``point=action`` pairs separated by commas:

* ``crash``: the process exits at once with status 137, as after ``kill -9``
  (no clean-up, no flushing, no acknowledgements);
* ``crash@P``: crash with probability P (0..1) each time the point is reached;
* ``crash#N``: crash the Nth time the point is reached;
* a number of seconds: the point stalls that long.

For example ``EVENTLINE_FAULTS=relay.after_append=crash@0.2,campaigns.before_ack=crash#2``.
The points: ``writer.before_store``, ``writer.after_commit`` and
``relay.after_append`` (ingestion); ``campaigns.after_send`` (after the
provider calls of a batch, before their outcome is in the ledger: they are
sent again with the same idempotency key when their lease expires) and
``campaigns.before_ack`` (after the outcome is in the ledger, before the
stream entries are acknowledged: they are reprocessed, with no second
provider call; the shared consumer group reaches it in segmentation too);
``segmentation.before_commit`` (real-time segments: a customer's transitions
are written, their transaction not yet committed); ``journeys.before_advance``
(a journey step's work is done - a send recorded and sent, a branch evaluated -
its outcome not yet recorded) and ``journeys.after_advance`` (recorded). With the
variable unset (production), reaching a point is one dict lookup.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from eventline_shared.environment import ConfigError


def _parse(spec: str) -> dict[str, tuple[str, float]]:
    points: dict[str, tuple[str, float]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        if action == "crash":
            points[name] = ("crash", 1.0)
        elif action.startswith("crash@"):
            points[name] = ("crash", float(action[6:]))
        elif action.startswith("crash#"):
            points[name] = ("crash-at", float(action[6:]))
        else:
            try:
                points[name] = ("stall", float(action))
            except ValueError:
                raise ConfigError(f"EVENTLINE_FAULTS: bad action {action!r} for {name!r}") from None
    return points


_points = _parse(os.environ.get("EVENTLINE_FAULTS", ""))
_reached: dict[str, int] = {}


async def point(name: str) -> None:
    """Crash or stall here if a fault is configured for ``name``."""
    fault = _points.get(name)
    if fault is None:
        return
    action, amount = fault
    _reached[name] = _reached.get(name, 0) + 1
    if action == "stall":
        # Said first, so that a test can wait for the process to be here rather than guess.
        sys.stderr.write(f"fault point {name}: stalling {amount:g} s\n")
        sys.stderr.flush()
        await asyncio.sleep(amount)
    elif (action == "crash-at" and _reached[name] >= amount) or (
        action == "crash" and random.random() < amount
    ):
        sys.stderr.write(f"fault point {name}: crashing\n")
        sys.stderr.flush()
        os._exit(137)
