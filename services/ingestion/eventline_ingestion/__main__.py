"""``python -m eventline_ingestion``: serve until SIGTERM or SIGINT.

With ``EVENTLINE_INGESTION_WORKERS`` above 1, start that many worker processes
on the same port instead (``eventline_shared.server.workers``).
"""

from __future__ import annotations

import gc

from eventline_ingestion.service import running
from eventline_ingestion.settings import Settings
from eventline_shared.server.grpc_server import serve_main

YOUNG_COLLECTION_OBJECTS = 20_000
"""Tracked objects allocated (less those freed) between two collections of the youngest
generation; Python's default is 700. Four batches of 500 events in flight hold ~10,000 (~5 per
event): at 700 a batch's validated events, rows and entries were walked by several young
collections and promoted before its statement ended, then walked again by the middle
generation's. At 20,000 most are freed first: over a full ``bench/ingest.py`` run the
collector's CPU fell from ~270 to ~66 ms, ~0.6 µs per event (docs/performance.md, sixth
round). Cyclic garbage (a few objects per call) is still collected by the young collections;
the older generations keep their thresholds."""


def main() -> None:
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_OBJECTS, middle, oldest)
    serve_main("ingestion", Settings.from_env, running, supervise_workers=True)


if __name__ == "__main__":
    main()
