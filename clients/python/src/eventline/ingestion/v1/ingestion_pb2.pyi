import datetime

from eventline.common.v1 import common_pb2 as _common_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackCustomerEventRequest(_message.Message):
    __slots__ = ("event_id", "customer_id", "name", "occurred_at", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    customer_id: str
    name: str
    occurred_at: _timestamp_pb2.Timestamp
    context: _containers.MessageMap[str, _common_pb2.Value]
    def __init__(self, event_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., name: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context: _Optional[_Mapping[str, _common_pb2.Value]] = ...) -> None: ...

class TrackCustomerEventResponse(_message.Message):
    __slots__ = ("event", "deduplicated")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    event: _common_pb2.Event
    deduplicated: bool
    def __init__(self, event: _Optional[_Union[_common_pb2.Event, _Mapping]] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class TrackSystemEventRequest(_message.Message):
    __slots__ = ("event_id", "name", "occurred_at", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    name: str
    occurred_at: _timestamp_pb2.Timestamp
    context: _containers.MessageMap[str, _common_pb2.Value]
    def __init__(self, event_id: _Optional[str] = ..., name: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context: _Optional[_Mapping[str, _common_pb2.Value]] = ...) -> None: ...

class TrackSystemEventResponse(_message.Message):
    __slots__ = ("event", "deduplicated")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    event: _common_pb2.Event
    deduplicated: bool
    def __init__(self, event: _Optional[_Union[_common_pb2.Event, _Mapping]] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class TrackEventsItem(_message.Message):
    __slots__ = ("customer_event", "system_event")
    CUSTOMER_EVENT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_EVENT_FIELD_NUMBER: _ClassVar[int]
    customer_event: TrackCustomerEventRequest
    system_event: TrackSystemEventRequest
    def __init__(self, customer_event: _Optional[_Union[TrackCustomerEventRequest, _Mapping]] = ..., system_event: _Optional[_Union[TrackSystemEventRequest, _Mapping]] = ...) -> None: ...

class TrackEventsRequest(_message.Message):
    __slots__ = ("events", "omit_stored_events", "bulk_import")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OMIT_STORED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    BULK_IMPORT_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TrackEventsItem]
    omit_stored_events: bool
    bulk_import: bool
    def __init__(self, events: _Optional[_Iterable[_Union[TrackEventsItem, _Mapping]]] = ..., omit_stored_events: _Optional[bool] = ..., bulk_import: _Optional[bool] = ...) -> None: ...

class TrackEventsResult(_message.Message):
    __slots__ = ("event", "error", "deduplicated")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    event: _common_pb2.Event
    error: _status_pb2.Status
    deduplicated: bool
    def __init__(self, event: _Optional[_Union[_common_pb2.Event, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class TrackEventsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TrackEventsResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TrackEventsResult, _Mapping]]] = ...) -> None: ...

class UpsertCustomerRequest(_message.Message):
    __slots__ = ("customer", "update_mask")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    customer: _common_pb2.Customer
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, customer: _Optional[_Union[_common_pb2.Customer, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpsertCustomerResponse(_message.Message):
    __slots__ = ("customer", "created")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    customer: _common_pb2.Customer
    created: bool
    def __init__(self, customer: _Optional[_Union[_common_pb2.Customer, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetCustomerRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class GetCustomerResponse(_message.Message):
    __slots__ = ("customer",)
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    customer: _common_pb2.Customer
    def __init__(self, customer: _Optional[_Union[_common_pb2.Customer, _Mapping]] = ...) -> None: ...

class ListTimelineRequest(_message.Message):
    __slots__ = ("customer_id", "page_size", "page_token", "event_names", "occurred_after", "occurred_before")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EVENT_NAMES_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AFTER_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    page_size: int
    page_token: str
    event_names: _containers.RepeatedScalarFieldContainer[str]
    occurred_after: _timestamp_pb2.Timestamp
    occurred_before: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., event_names: _Optional[_Iterable[str]] = ..., occurred_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., occurred_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListTimelineResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class EraseCustomerRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class EraseCustomerResponse(_message.Message):
    __slots__ = ("customer_erased", "events_erased", "stream_entries_erased")
    CUSTOMER_ERASED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_ERASED_FIELD_NUMBER: _ClassVar[int]
    STREAM_ENTRIES_ERASED_FIELD_NUMBER: _ClassVar[int]
    customer_erased: bool
    events_erased: int
    stream_entries_erased: int
    def __init__(self, customer_erased: _Optional[bool] = ..., events_erased: _Optional[int] = ..., stream_entries_erased: _Optional[int] = ...) -> None: ...
