"""The blocking client: the asyncio client run on a private event loop in a thread.

For code without an event loop (a Django view, a script, a Celery task). Every method
blocks until its call is done; the client may be shared between threads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from eventline.common.v1 import common_pb2
from eventline.ingestion.v1 import ingestion_pb2

from eventline_client.client import AsyncClient
from eventline_client.events import Event, Outcome, Tracked
from eventline_client.values import ContextValue

R = TypeVar("R")


class Client:
    """An Eventline client for blocking code; takes the same arguments as :class:`AsyncClient`."""

    def __init__(self, target: str = "127.0.0.1:50051", **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="eventline-client", daemon=True)
        self._thread.start()

        async def build() -> AsyncClient:
            return AsyncClient(target, **options)  # its channel belongs to the loop it is made on

        try:
            self._client = self._run(build())
        except BaseException:
            self._stop()
            raise

    def _run(self, call: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def asyncio_client(self) -> AsyncClient:
        """The asyncio client underneath (its calls must run on this client's loop)."""
        return self._client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._stop()

    def track(
        self,
        customer_id: str,
        name: str,
        context: Mapping[str, ContextValue] | None = None,
        occurred_at: dt.datetime | None = None,
        *,
        event_id: str | None = None,
    ) -> Tracked:
        """See :meth:`AsyncClient.track`."""
        return self._run(self._client.track(customer_id, name, context, occurred_at, event_id=event_id))

    def track_system(
        self,
        name: str,
        context: Mapping[str, ContextValue] | None = None,
        occurred_at: dt.datetime | None = None,
        *,
        event_id: str | None = None,
    ) -> Tracked:
        """See :meth:`AsyncClient.track_system`."""
        return self._run(self._client.track_system(name, context, occurred_at, event_id=event_id))

    def track_many(self, events: Iterable[Event], *, concurrency: int | None = None) -> list[Outcome]:
        """See :meth:`AsyncClient.track_many`."""
        return self._run(self._client.track_many(events, concurrency=concurrency))

    def upsert_customer(self, customer_id: str, **fields: Any) -> common_pb2.Customer:
        """See :meth:`AsyncClient.upsert_customer`."""
        return self._run(self._client.upsert_customer(customer_id, **fields))

    def get_customer(self, customer_id: str) -> common_pb2.Customer:
        """See :meth:`AsyncClient.get_customer`."""
        return self._run(self._client.get_customer(customer_id))

    def timeline(
        self,
        customer_id: str,
        *,
        names: Sequence[str] = (),
        occurred_after: dt.datetime | None = None,
        occurred_before: dt.datetime | None = None,
        page_size: int = 200,
    ) -> Iterator[common_pb2.Event]:
        """See :meth:`AsyncClient.timeline`; pages are read as you iterate."""
        pages = self._client.timeline(
            customer_id,
            names=names,
            occurred_after=occurred_after,
            occurred_before=occurred_before,
            page_size=page_size,
        )

        async def following() -> common_pb2.Event | None:
            return await anext(pages, None)

        try:
            while (event := self._run(following())) is not None:
                yield event
        finally:
            self._run(pages.aclose())  # also when the caller stops early

    def erase_customer(self, customer_id: str) -> ingestion_pb2.EraseCustomerResponse:
        """See :meth:`AsyncClient.erase_customer`."""
        return self._run(self._client.erase_customer(customer_id))
