"""Eventline's Python client.

``AsyncClient`` (asyncio) and ``Client`` (blocking) send events one by one or in batches
of any size, with generated event ids, retries that cannot store an event twice, default
deadlines, API keys and (mutual) TLS; failures raise typed errors that name the bad fields.
The generated messages and stubs are the ``eventline`` package of the same distribution
(``from eventline.ingestion.v1 import ingestion_pb2``).

    from eventline_client import Client

    with Client("127.0.0.1:50051") as eventline:
        eventline.track("c42", "order_placed", {"total": Decimal("59.90")})
"""

from eventline_client.client import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    AsyncClient,
    RetryPolicy,
    TrackManyError,
)
from eventline_client.connection import Tls, service_config
from eventline_client.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    EventlineError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
    from_status,
)
from eventline_client.events import CustomerEvent, Event, Outcome, Refused, SystemEvent, Tracked, new_event_id
from eventline_client.sync import Client
from eventline_client.values import (
    ContextValue,
    from_context,
    from_timestamp,
    from_value,
    to_timestamp,
    to_value,
)

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_EVENTS",
    "AlreadyExistsError",
    "AsyncClient",
    "Client",
    "ContextValue",
    "CustomerEvent",
    "DeadlineExceededError",
    "Event",
    "EventlineError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "Outcome",
    "PermissionDeniedError",
    "Refused",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SystemEvent",
    "Tls",
    "TrackManyError",
    "Tracked",
    "UnauthenticatedError",
    "UnavailableError",
    "from_context",
    "from_rpc_error",
    "from_status",
    "from_timestamp",
    "from_value",
    "new_event_id",
    "service_config",
    "to_timestamp",
    "to_value",
]
