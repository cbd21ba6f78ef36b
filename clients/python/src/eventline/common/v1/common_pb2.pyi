import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_CUSTOMER: _ClassVar[EventKind]
    EVENT_KIND_SYSTEM: _ClassVar[EventKind]

class Consent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSENT_UNSPECIFIED: _ClassVar[Consent]
    CONSENT_GRANTED: _ClassVar[Consent]
    CONSENT_DENIED: _ClassVar[Consent]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_CUSTOMER: EventKind
EVENT_KIND_SYSTEM: EventKind
CONSENT_UNSPECIFIED: Consent
CONSENT_GRANTED: Consent
CONSENT_DENIED: Consent

class Value(_message.Message):
    __slots__ = ("string_value", "integer_value", "decimal_value", "boolean_value", "timestamp_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INTEGER_VALUE_FIELD_NUMBER: _ClassVar[int]
    DECIMAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    integer_value: int
    decimal_value: str
    boolean_value: bool
    timestamp_value: _timestamp_pb2.Timestamp
    def __init__(self, string_value: _Optional[str] = ..., integer_value: _Optional[int] = ..., decimal_value: _Optional[str] = ..., boolean_value: _Optional[bool] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "kind", "customer_id", "name", "occurred_at", "received_at", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    kind: EventKind
    customer_id: str
    name: str
    occurred_at: _timestamp_pb2.Timestamp
    received_at: _timestamp_pb2.Timestamp
    context: _containers.MessageMap[str, Value]
    def __init__(self, event_id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., customer_id: _Optional[str] = ..., name: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Customer(_message.Message):
    __slots__ = ("customer_id", "email", "phone", "push_tokens", "attributes", "email_consent", "sms_consent", "push_consent", "created_at", "updated_at")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    PUSH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EMAIL_CONSENT_FIELD_NUMBER: _ClassVar[int]
    SMS_CONSENT_FIELD_NUMBER: _ClassVar[int]
    PUSH_CONSENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    email: str
    phone: str
    push_tokens: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.MessageMap[str, Value]
    email_consent: Consent
    sms_consent: Consent
    push_consent: Consent
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., email: _Optional[str] = ..., phone: _Optional[str] = ..., push_tokens: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Mapping[str, Value]] = ..., email_consent: _Optional[_Union[Consent, str]] = ..., sms_consent: _Optional[_Union[Consent, str]] = ..., push_consent: _Optional[_Union[Consent, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
