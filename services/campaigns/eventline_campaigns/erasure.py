"""Erasure reaches what the campaign service keeps outside PostgreSQL.

Everything the service stores about a customer in PostgreSQL goes with the
customer by cascade (deliveries, frequency-cap rows; fan-out cursors are
derived from the ledger). The one copy outside is the development file sink:
message files that hold the customer's address and whatever the templates
wrote. The sink mirrors the ledger: a file whose delivery the ledger no longer
holds is removed.

* Every replica sweeps its own sink directory when it starts (an erasure while
  it was down) and whenever the erasure count in PostgreSQL changes (ingestion
  counts each erasure in its transaction; replicas poll it every ``poll_s``).
* A message written while its customer was being erased is caught when its
  outcome is recorded (``Delivery.send`` asks the ledger and removes the file).
"""

from __future__ import annotations

import asyncio
import logging

from eventline_campaigns.channels import FileSink
from eventline_campaigns.polling import poll
from eventline_campaigns.repository import CampaignRepository

log = logging.getLogger(__name__)

SWEEP_CHUNK = 10_000


class SinkJanitor:
    """Removes the sink's files of deliveries the ledger no longer holds; ``run()`` / ``shutdown()``."""

    def __init__(self, sink: FileSink, repository: CampaignRepository, poll_s: float = 0.25) -> None:
        self.sink = sink
        self.repository = repository
        self.poll_s = poll_s
        self._seen: int | None = None
        self._stop = asyncio.Event()

    async def sweep(self) -> int:
        """One pass over the directory; returns how many files were removed."""
        on_disk = sorted(await asyncio.to_thread(self.sink.delivery_ids))
        removed = 0
        for start in range(0, len(on_disk), SWEEP_CHUNK):
            missing = await self.repository.missing_deliveries(on_disk[start : start + SWEEP_CHUNK])
            if missing:
                removed += await asyncio.to_thread(self.sink.forget, missing)
        if removed:
            log.info("message files of erased customers removed", extra={"files": removed})
        return removed

    async def run(self) -> None:
        await poll(self._check, self.poll_s, self._stop, "cannot sweep the message files")

    async def _check(self) -> None:
        count = await self.repository.erasures()
        if count != self._seen:
            await self.sweep()  # also the first time: erasures while this replica was down
            self._seen = count

    def shutdown(self) -> None:
        self._stop.set()
