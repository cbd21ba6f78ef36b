"""Erasing a customer: everything ingestion holds of them, in PostgreSQL and in the event streams."""

from __future__ import annotations

from dataclasses import dataclass

from eventline_ingestion.repository import IngestionRepository
from eventline_shared.streams import stream


@dataclass(frozen=True)
class Erased:
    """What one erasure removed."""

    customer: bool
    """Whether a profile was there to delete."""
    events: int
    stream_entries: int
    """Entries of the customer's events deleted from the partitions and dead-letter streams."""


class Erasure:
    """Erases customers from the database, then from the streams the relay published to."""

    def __init__(
        self, repository: IngestionRepository, client: stream.Client, layout: stream.StreamLayout
    ) -> None:
        self.repository = repository
        self.client = client
        self.layout = layout

    async def erase(self, customer_id: str, timeout: float | None) -> Erased:
        """Erase ``customer_id``. The database goes first: its transaction waits for a relay
        publishing the customer's outbox rows, so every entry to delete is in a stream by then."""
        customer, events = await self.repository.erase_customer(customer_id, timeout)
        entries = await stream.erase_customer(self.client, self.layout, customer_id)
        return Erased(customer, events, entries)
