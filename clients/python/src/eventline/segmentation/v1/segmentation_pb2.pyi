import datetime

from eventline.common.v1 import common_pb2 as _common_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Comparison(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARISON_UNSPECIFIED: _ClassVar[Comparison]
    COMPARISON_EQUAL: _ClassVar[Comparison]
    COMPARISON_NOT_EQUAL: _ClassVar[Comparison]
    COMPARISON_LESS: _ClassVar[Comparison]
    COMPARISON_LESS_OR_EQUAL: _ClassVar[Comparison]
    COMPARISON_GREATER: _ClassVar[Comparison]
    COMPARISON_GREATER_OR_EQUAL: _ClassVar[Comparison]

class TimeUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_UNIT_UNSPECIFIED: _ClassVar[TimeUnit]
    TIME_UNIT_HOUR: _ClassVar[TimeUnit]
    TIME_UNIT_DAY: _ClassVar[TimeUnit]

class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATOR_UNSPECIFIED: _ClassVar[Operator]
    OPERATOR_EQUALS: _ClassVar[Operator]
    OPERATOR_NOT_EQUALS: _ClassVar[Operator]
    OPERATOR_IN: _ClassVar[Operator]
    OPERATOR_NOT_IN: _ClassVar[Operator]
    OPERATOR_CONTAINS: _ClassVar[Operator]
    OPERATOR_STARTS_WITH: _ClassVar[Operator]
    OPERATOR_GREATER: _ClassVar[Operator]
    OPERATOR_GREATER_OR_EQUAL: _ClassVar[Operator]
    OPERATOR_LESS: _ClassVar[Operator]
    OPERATOR_LESS_OR_EQUAL: _ClassVar[Operator]
    OPERATOR_EXISTS: _ClassVar[Operator]
    OPERATOR_NOT_EXISTS: _ClassVar[Operator]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_EMAIL: _ClassVar[Channel]
    CHANNEL_SMS: _ClassVar[Channel]
    CHANNEL_PUSH: _ClassVar[Channel]

class TransitionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSITION_KIND_UNSPECIFIED: _ClassVar[TransitionKind]
    TRANSITION_KIND_ENTERED: _ClassVar[TransitionKind]
    TRANSITION_KIND_EXITED: _ClassVar[TransitionKind]
COMPARISON_UNSPECIFIED: Comparison
COMPARISON_EQUAL: Comparison
COMPARISON_NOT_EQUAL: Comparison
COMPARISON_LESS: Comparison
COMPARISON_LESS_OR_EQUAL: Comparison
COMPARISON_GREATER: Comparison
COMPARISON_GREATER_OR_EQUAL: Comparison
TIME_UNIT_UNSPECIFIED: TimeUnit
TIME_UNIT_HOUR: TimeUnit
TIME_UNIT_DAY: TimeUnit
OPERATOR_UNSPECIFIED: Operator
OPERATOR_EQUALS: Operator
OPERATOR_NOT_EQUALS: Operator
OPERATOR_IN: Operator
OPERATOR_NOT_IN: Operator
OPERATOR_CONTAINS: Operator
OPERATOR_STARTS_WITH: Operator
OPERATOR_GREATER: Operator
OPERATOR_GREATER_OR_EQUAL: Operator
OPERATOR_LESS: Operator
OPERATOR_LESS_OR_EQUAL: Operator
OPERATOR_EXISTS: Operator
OPERATOR_NOT_EXISTS: Operator
CHANNEL_UNSPECIFIED: Channel
CHANNEL_EMAIL: Channel
CHANNEL_SMS: Channel
CHANNEL_PUSH: Channel
TRANSITION_KIND_UNSPECIFIED: TransitionKind
TRANSITION_KIND_ENTERED: TransitionKind
TRANSITION_KIND_EXITED: TransitionKind

class Filter(_message.Message):
    __slots__ = ("all_of", "any_of", "negation", "event", "customer")
    ALL_OF_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NEGATION_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    all_of: FilterList
    any_of: FilterList
    negation: Filter
    event: EventCondition
    customer: CustomerCondition
    def __init__(self, all_of: _Optional[_Union[FilterList, _Mapping]] = ..., any_of: _Optional[_Union[FilterList, _Mapping]] = ..., negation: _Optional[_Union[Filter, _Mapping]] = ..., event: _Optional[_Union[EventCondition, _Mapping]] = ..., customer: _Optional[_Union[CustomerCondition, _Mapping]] = ...) -> None: ...

class FilterList(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class EventCondition(_message.Message):
    __slots__ = ("name", "predicates", "count", "last_occurred", "days_since_last", "first_occurred")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PREDICATES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_OCCURRED_FIELD_NUMBER: _ClassVar[int]
    DAYS_SINCE_LAST_FIELD_NUMBER: _ClassVar[int]
    FIRST_OCCURRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    predicates: _containers.RepeatedCompositeFieldContainer[Predicate]
    count: CountTest
    last_occurred: Period
    days_since_last: DaysSinceTest
    first_occurred: Period
    def __init__(self, name: _Optional[str] = ..., predicates: _Optional[_Iterable[_Union[Predicate, _Mapping]]] = ..., count: _Optional[_Union[CountTest, _Mapping]] = ..., last_occurred: _Optional[_Union[Period, _Mapping]] = ..., days_since_last: _Optional[_Union[DaysSinceTest, _Mapping]] = ..., first_occurred: _Optional[_Union[Period, _Mapping]] = ...) -> None: ...

class CountTest(_message.Message):
    __slots__ = ("period", "at_least", "at_most", "exactly", "between")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    AT_LEAST_FIELD_NUMBER: _ClassVar[int]
    AT_MOST_FIELD_NUMBER: _ClassVar[int]
    EXACTLY_FIELD_NUMBER: _ClassVar[int]
    BETWEEN_FIELD_NUMBER: _ClassVar[int]
    period: Period
    at_least: int
    at_most: int
    exactly: int
    between: CountRange
    def __init__(self, period: _Optional[_Union[Period, _Mapping]] = ..., at_least: _Optional[int] = ..., at_most: _Optional[int] = ..., exactly: _Optional[int] = ..., between: _Optional[_Union[CountRange, _Mapping]] = ...) -> None: ...

class CountRange(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: int
    max: int
    def __init__(self, min: _Optional[int] = ..., max: _Optional[int] = ...) -> None: ...

class DaysSinceTest(_message.Message):
    __slots__ = ("comparison", "days")
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    comparison: Comparison
    days: int
    def __init__(self, comparison: _Optional[_Union[Comparison, str]] = ..., days: _Optional[int] = ...) -> None: ...

class Period(_message.Message):
    __slots__ = ("absolute", "last", "days_ago")
    ABSOLUTE_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DAYS_AGO_FIELD_NUMBER: _ClassVar[int]
    absolute: TimeRange
    last: RecentPeriod
    days_ago: DaysAgoPeriod
    def __init__(self, absolute: _Optional[_Union[TimeRange, _Mapping]] = ..., last: _Optional[_Union[RecentPeriod, _Mapping]] = ..., days_ago: _Optional[_Union[DaysAgoPeriod, _Mapping]] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecentPeriod(_message.Message):
    __slots__ = ("amount", "unit")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    amount: int
    unit: TimeUnit
    def __init__(self, amount: _Optional[int] = ..., unit: _Optional[_Union[TimeUnit, str]] = ...) -> None: ...

class DaysAgoPeriod(_message.Message):
    __slots__ = ("min_days_ago", "max_days_ago")
    MIN_DAYS_AGO_FIELD_NUMBER: _ClassVar[int]
    MAX_DAYS_AGO_FIELD_NUMBER: _ClassVar[int]
    min_days_ago: int
    max_days_ago: int
    def __init__(self, min_days_ago: _Optional[int] = ..., max_days_ago: _Optional[int] = ...) -> None: ...

class Predicate(_message.Message):
    __slots__ = ("field", "operator", "value", "values")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    field: str
    operator: Operator
    value: Operand
    values: _containers.RepeatedCompositeFieldContainer[Operand]
    def __init__(self, field: _Optional[str] = ..., operator: _Optional[_Union[Operator, str]] = ..., value: _Optional[_Union[Operand, _Mapping]] = ..., values: _Optional[_Iterable[_Union[Operand, _Mapping]]] = ...) -> None: ...

class Operand(_message.Message):
    __slots__ = ("literal", "reference")
    LITERAL_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    literal: _common_pb2.Value
    reference: str
    def __init__(self, literal: _Optional[_Union[_common_pb2.Value, _Mapping]] = ..., reference: _Optional[str] = ...) -> None: ...

class CustomerCondition(_message.Message):
    __slots__ = ("has_address", "consent_granted", "attribute")
    HAS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONSENT_GRANTED_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    has_address: Channel
    consent_granted: Channel
    attribute: Predicate
    def __init__(self, has_address: _Optional[_Union[Channel, str]] = ..., consent_granted: _Optional[_Union[Channel, str]] = ..., attribute: _Optional[_Union[Predicate, _Mapping]] = ...) -> None: ...

class CountCustomersRequest(_message.Message):
    __slots__ = ("filter", "segment_id", "bindings", "now", "time_zone")
    class BindingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    segment_id: str
    bindings: _containers.MessageMap[str, _common_pb2.Value]
    now: _timestamp_pb2.Timestamp
    time_zone: str
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., segment_id: _Optional[str] = ..., bindings: _Optional[_Mapping[str, _common_pb2.Value]] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_zone: _Optional[str] = ...) -> None: ...

class CountCustomersResponse(_message.Message):
    __slots__ = ("count", "now")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    count: int
    now: _timestamp_pb2.Timestamp
    def __init__(self, count: _Optional[int] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListCustomersRequest(_message.Message):
    __slots__ = ("filter", "segment_id", "bindings", "now", "time_zone", "page_size", "page_token")
    class BindingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    segment_id: str
    bindings: _containers.MessageMap[str, _common_pb2.Value]
    now: _timestamp_pb2.Timestamp
    time_zone: str
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., segment_id: _Optional[str] = ..., bindings: _Optional[_Mapping[str, _common_pb2.Value]] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_zone: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCustomersResponse(_message.Message):
    __slots__ = ("customer_ids", "next_page_token", "now")
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    now: _timestamp_pb2.Timestamp
    def __init__(self, customer_ids: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamCustomersRequest(_message.Message):
    __slots__ = ("filter", "segment_id", "bindings", "now", "time_zone", "chunk_size", "after_customer_id")
    class BindingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    AFTER_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    segment_id: str
    bindings: _containers.MessageMap[str, _common_pb2.Value]
    now: _timestamp_pb2.Timestamp
    time_zone: str
    chunk_size: int
    after_customer_id: str
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., segment_id: _Optional[str] = ..., bindings: _Optional[_Mapping[str, _common_pb2.Value]] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_zone: _Optional[str] = ..., chunk_size: _Optional[int] = ..., after_customer_id: _Optional[str] = ...) -> None: ...

class StreamCustomersResponse(_message.Message):
    __slots__ = ("customer_ids",)
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, customer_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MatchCustomerRequest(_message.Message):
    __slots__ = ("filter", "segment_id", "bindings", "now", "time_zone", "customer_id", "required_event_ids")
    class BindingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    segment_id: str
    bindings: _containers.MessageMap[str, _common_pb2.Value]
    now: _timestamp_pb2.Timestamp
    time_zone: str
    customer_id: str
    required_event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., segment_id: _Optional[str] = ..., bindings: _Optional[_Mapping[str, _common_pb2.Value]] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_zone: _Optional[str] = ..., customer_id: _Optional[str] = ..., required_event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MatchCustomerResponse(_message.Message):
    __slots__ = ("matched", "nodes", "now")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    matched: bool
    nodes: _containers.RepeatedCompositeFieldContainer[NodeExplanation]
    now: _timestamp_pb2.Timestamp
    def __init__(self, matched: _Optional[bool] = ..., nodes: _Optional[_Iterable[_Union[NodeExplanation, _Mapping]]] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class NodeExplanation(_message.Message):
    __slots__ = ("path", "held", "count", "last_occurred_at", "first_occurred_at", "days_since_last", "value")
    PATH_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    FIRST_OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    DAYS_SINCE_LAST_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    path: str
    held: bool
    count: int
    last_occurred_at: _timestamp_pb2.Timestamp
    first_occurred_at: _timestamp_pb2.Timestamp
    days_since_last: int
    value: _common_pb2.Value
    def __init__(self, path: _Optional[str] = ..., held: _Optional[bool] = ..., count: _Optional[int] = ..., last_occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., first_occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., days_since_last: _Optional[int] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...

class ValidateFilterRequest(_message.Message):
    __slots__ = ("filter", "bindings")
    class BindingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    FILTER_FIELD_NUMBER: _ClassVar[int]
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    bindings: _containers.MessageMap[str, _common_pb2.Value]
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., bindings: _Optional[_Mapping[str, _common_pb2.Value]] = ...) -> None: ...

class ValidateFilterResponse(_message.Message):
    __slots__ = ("valid", "violations", "references", "unresolved_references")
    VALID_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    UNRESOLVED_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    violations: _containers.RepeatedCompositeFieldContainer[FilterViolation]
    references: _containers.RepeatedScalarFieldContainer[str]
    unresolved_references: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, valid: _Optional[bool] = ..., violations: _Optional[_Iterable[_Union[FilterViolation, _Mapping]]] = ..., references: _Optional[_Iterable[str]] = ..., unresolved_references: _Optional[_Iterable[str]] = ...) -> None: ...

class FilterViolation(_message.Message):
    __slots__ = ("field", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class Segment(_message.Message):
    __slots__ = ("segment_id", "display_name", "description", "filter", "create_time", "update_time", "realtime", "time_zone")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REALTIME_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    display_name: str
    description: str
    filter: Filter
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    realtime: bool
    time_zone: str
    def __init__(self, segment_id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., realtime: _Optional[bool] = ..., time_zone: _Optional[str] = ...) -> None: ...

class CreateSegmentRequest(_message.Message):
    __slots__ = ("segment", "segment_id")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    segment_id: str
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ..., segment_id: _Optional[str] = ...) -> None: ...

class CreateSegmentResponse(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ...) -> None: ...

class GetSegmentRequest(_message.Message):
    __slots__ = ("segment_id",)
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    def __init__(self, segment_id: _Optional[str] = ...) -> None: ...

class GetSegmentResponse(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ...) -> None: ...

class ListSegmentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSegmentsResponse(_message.Message):
    __slots__ = ("segments", "next_page_token")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[Segment]
    next_page_token: str
    def __init__(self, segments: _Optional[_Iterable[_Union[Segment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateSegmentRequest(_message.Message):
    __slots__ = ("segment", "update_mask")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateSegmentResponse(_message.Message):
    __slots__ = ("segment",)
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    segment: Segment
    def __init__(self, segment: _Optional[_Union[Segment, _Mapping]] = ...) -> None: ...

class DeleteSegmentRequest(_message.Message):
    __slots__ = ("segment_id",)
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    def __init__(self, segment_id: _Optional[str] = ...) -> None: ...

class DeleteSegmentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSegmentSizeRequest(_message.Message):
    __slots__ = ("segment_id", "bindings", "now", "time_zone")
    class BindingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    bindings: _containers.MessageMap[str, _common_pb2.Value]
    now: _timestamp_pb2.Timestamp
    time_zone: str
    def __init__(self, segment_id: _Optional[str] = ..., bindings: _Optional[_Mapping[str, _common_pb2.Value]] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_zone: _Optional[str] = ...) -> None: ...

class GetSegmentSizeResponse(_message.Message):
    __slots__ = ("size", "now", "stored")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    size: int
    now: _timestamp_pb2.Timestamp
    stored: bool
    def __init__(self, size: _Optional[int] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stored: _Optional[bool] = ...) -> None: ...

class ListSegmentMembersRequest(_message.Message):
    __slots__ = ("segment_id", "page_size", "page_token")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    page_size: int
    page_token: str
    def __init__(self, segment_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SegmentMember(_message.Message):
    __slots__ = ("customer_id", "entered_at")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ENTERED_AT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    entered_at: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., entered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSegmentMembersResponse(_message.Message):
    __slots__ = ("members", "next_page_token", "backfilling")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BACKFILLING_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[SegmentMember]
    next_page_token: str
    backfilling: bool
    def __init__(self, members: _Optional[_Iterable[_Union[SegmentMember, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., backfilling: _Optional[bool] = ...) -> None: ...

class WatchSegmentRequest(_message.Message):
    __slots__ = ("segment_id", "after_cursor")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    after_cursor: int
    def __init__(self, segment_id: _Optional[str] = ..., after_cursor: _Optional[int] = ...) -> None: ...

class WatchSegmentResponse(_message.Message):
    __slots__ = ("cursor", "customer_id", "kind", "occur_time")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    customer_id: str
    kind: TransitionKind
    occur_time: _timestamp_pb2.Timestamp
    def __init__(self, cursor: _Optional[int] = ..., customer_id: _Optional[str] = ..., kind: _Optional[_Union[TransitionKind, str]] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
