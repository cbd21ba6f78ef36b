import datetime

from eventline.common.v1 import common_pb2 as _common_pb2
from eventline.segmentation.v1 import segmentation_pb2 as _segmentation_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CampaignState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAMPAIGN_STATE_UNSPECIFIED: _ClassVar[CampaignState]
    CAMPAIGN_STATE_DRAFT: _ClassVar[CampaignState]
    CAMPAIGN_STATE_ACTIVE: _ClassVar[CampaignState]
    CAMPAIGN_STATE_PAUSED: _ClassVar[CampaignState]
    CAMPAIGN_STATE_ARCHIVED: _ClassVar[CampaignState]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_EMAIL: _ClassVar[Channel]
    CHANNEL_SMS: _ClassVar[Channel]
    CHANNEL_PUSH: _ClassVar[Channel]
    CHANNEL_WEBHOOK: _ClassVar[Channel]

class EntryRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_RULE_UNSPECIFIED: _ClassVar[EntryRule]
    ENTRY_RULE_EVERY_TIME: _ClassVar[EntryRule]
    ENTRY_RULE_ONCE_EVER: _ClassVar[EntryRule]
    ENTRY_RULE_ONCE_AT_A_TIME: _ClassVar[EntryRule]

class DeliveryStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_STATUS_UNSPECIFIED: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_PENDING: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_SENT: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_FAILED: _ClassVar[DeliveryStatus]
    DELIVERY_STATUS_SKIPPED: _ClassVar[DeliveryStatus]

class DeliveryEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_EVENT_KIND_UNSPECIFIED: _ClassVar[DeliveryEventKind]
    DELIVERY_EVENT_KIND_DELIVERED: _ClassVar[DeliveryEventKind]
    DELIVERY_EVENT_KIND_BOUNCED_HARD: _ClassVar[DeliveryEventKind]
    DELIVERY_EVENT_KIND_BOUNCED_SOFT: _ClassVar[DeliveryEventKind]
    DELIVERY_EVENT_KIND_COMPLAINED: _ClassVar[DeliveryEventKind]
    DELIVERY_EVENT_KIND_OPENED: _ClassVar[DeliveryEventKind]
    DELIVERY_EVENT_KIND_CLICKED: _ClassVar[DeliveryEventKind]

class SuppressionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUPPRESSION_REASON_UNSPECIFIED: _ClassVar[SuppressionReason]
    SUPPRESSION_REASON_HARD_BOUNCE: _ClassVar[SuppressionReason]
    SUPPRESSION_REASON_COMPLAINT: _ClassVar[SuppressionReason]
    SUPPRESSION_REASON_SOFT_BOUNCES: _ClassVar[SuppressionReason]
    SUPPRESSION_REASON_MANUAL: _ClassVar[SuppressionReason]
CAMPAIGN_STATE_UNSPECIFIED: CampaignState
CAMPAIGN_STATE_DRAFT: CampaignState
CAMPAIGN_STATE_ACTIVE: CampaignState
CAMPAIGN_STATE_PAUSED: CampaignState
CAMPAIGN_STATE_ARCHIVED: CampaignState
CHANNEL_UNSPECIFIED: Channel
CHANNEL_EMAIL: Channel
CHANNEL_SMS: Channel
CHANNEL_PUSH: Channel
CHANNEL_WEBHOOK: Channel
ENTRY_RULE_UNSPECIFIED: EntryRule
ENTRY_RULE_EVERY_TIME: EntryRule
ENTRY_RULE_ONCE_EVER: EntryRule
ENTRY_RULE_ONCE_AT_A_TIME: EntryRule
DELIVERY_STATUS_UNSPECIFIED: DeliveryStatus
DELIVERY_STATUS_PENDING: DeliveryStatus
DELIVERY_STATUS_SENT: DeliveryStatus
DELIVERY_STATUS_FAILED: DeliveryStatus
DELIVERY_STATUS_SKIPPED: DeliveryStatus
DELIVERY_EVENT_KIND_UNSPECIFIED: DeliveryEventKind
DELIVERY_EVENT_KIND_DELIVERED: DeliveryEventKind
DELIVERY_EVENT_KIND_BOUNCED_HARD: DeliveryEventKind
DELIVERY_EVENT_KIND_BOUNCED_SOFT: DeliveryEventKind
DELIVERY_EVENT_KIND_COMPLAINED: DeliveryEventKind
DELIVERY_EVENT_KIND_OPENED: DeliveryEventKind
DELIVERY_EVENT_KIND_CLICKED: DeliveryEventKind
SUPPRESSION_REASON_UNSPECIFIED: SuppressionReason
SUPPRESSION_REASON_HARD_BOUNCE: SuppressionReason
SUPPRESSION_REASON_COMPLAINT: SuppressionReason
SUPPRESSION_REASON_SOFT_BOUNCES: SuppressionReason
SUPPRESSION_REASON_MANUAL: SuppressionReason

class Trigger(_message.Message):
    __slots__ = ("customer_event", "system_event", "segment")
    CUSTOMER_EVENT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_EVENT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    customer_event: CustomerEventTrigger
    system_event: SystemEventTrigger
    segment: SegmentTrigger
    def __init__(self, customer_event: _Optional[_Union[CustomerEventTrigger, _Mapping]] = ..., system_event: _Optional[_Union[SystemEventTrigger, _Mapping]] = ..., segment: _Optional[_Union[SegmentTrigger, _Mapping]] = ...) -> None: ...

class CustomerEventTrigger(_message.Message):
    __slots__ = ("event_name", "context_predicates")
    EVENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PREDICATES_FIELD_NUMBER: _ClassVar[int]
    event_name: str
    context_predicates: _containers.RepeatedCompositeFieldContainer[_segmentation_pb2.Predicate]
    def __init__(self, event_name: _Optional[str] = ..., context_predicates: _Optional[_Iterable[_Union[_segmentation_pb2.Predicate, _Mapping]]] = ...) -> None: ...

class SystemEventTrigger(_message.Message):
    __slots__ = ("event_name", "context_predicates")
    EVENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PREDICATES_FIELD_NUMBER: _ClassVar[int]
    event_name: str
    context_predicates: _containers.RepeatedCompositeFieldContainer[_segmentation_pb2.Predicate]
    def __init__(self, event_name: _Optional[str] = ..., context_predicates: _Optional[_Iterable[_Union[_segmentation_pb2.Predicate, _Mapping]]] = ...) -> None: ...

class SegmentTrigger(_message.Message):
    __slots__ = ("segment_id", "on")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ON_FIELD_NUMBER: _ClassVar[int]
    segment_id: str
    on: _segmentation_pb2.TransitionKind
    def __init__(self, segment_id: _Optional[str] = ..., on: _Optional[_Union[_segmentation_pb2.TransitionKind, str]] = ...) -> None: ...

class EmailAction(_message.Message):
    __slots__ = ("subject", "html_body", "text_body")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HTML_BODY_FIELD_NUMBER: _ClassVar[int]
    TEXT_BODY_FIELD_NUMBER: _ClassVar[int]
    subject: str
    html_body: str
    text_body: str
    def __init__(self, subject: _Optional[str] = ..., html_body: _Optional[str] = ..., text_body: _Optional[str] = ...) -> None: ...

class SmsAction(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class PushAction(_message.Message):
    __slots__ = ("title", "body", "data")
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    title: str
    body: str
    data: _containers.ScalarMap[str, str]
    def __init__(self, title: _Optional[str] = ..., body: _Optional[str] = ..., data: _Optional[_Mapping[str, str]] = ...) -> None: ...

class WebhookAction(_message.Message):
    __slots__ = ("url", "body")
    URL_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    url: str
    body: str
    def __init__(self, url: _Optional[str] = ..., body: _Optional[str] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("email", "sms", "push", "webhook")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    SMS_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_FIELD_NUMBER: _ClassVar[int]
    email: EmailAction
    sms: SmsAction
    push: PushAction
    webhook: WebhookAction
    def __init__(self, email: _Optional[_Union[EmailAction, _Mapping]] = ..., sms: _Optional[_Union[SmsAction, _Mapping]] = ..., push: _Optional[_Union[PushAction, _Mapping]] = ..., webhook: _Optional[_Union[WebhookAction, _Mapping]] = ...) -> None: ...

class FrequencyCap(_message.Message):
    __slots__ = ("max_sends", "period")
    MAX_SENDS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    max_sends: int
    period: _duration_pb2.Duration
    def __init__(self, max_sends: _Optional[int] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Campaign(_message.Message):
    __slots__ = ("campaign_id", "display_name", "state", "trigger", "audience", "actions", "frequency_cap", "create_time", "update_time", "active_since", "transactional", "steps", "entry_rule", "exit_event", "goal", "default_time_zone", "quiet_hours")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_CAP_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SINCE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_RULE_FIELD_NUMBER: _ClassVar[int]
    EXIT_EVENT_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    QUIET_HOURS_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    display_name: str
    state: CampaignState
    trigger: Trigger
    audience: _segmentation_pb2.Filter
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    frequency_cap: FrequencyCap
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    active_since: _timestamp_pb2.Timestamp
    transactional: bool
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    entry_rule: EntryRule
    exit_event: EventMatch
    goal: Goal
    default_time_zone: str
    quiet_hours: QuietHours
    def __init__(self, campaign_id: _Optional[str] = ..., display_name: _Optional[str] = ..., state: _Optional[_Union[CampaignState, str]] = ..., trigger: _Optional[_Union[Trigger, _Mapping]] = ..., audience: _Optional[_Union[_segmentation_pb2.Filter, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ..., frequency_cap: _Optional[_Union[FrequencyCap, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., transactional: _Optional[bool] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., entry_rule: _Optional[_Union[EntryRule, str]] = ..., exit_event: _Optional[_Union[EventMatch, _Mapping]] = ..., goal: _Optional[_Union[Goal, _Mapping]] = ..., default_time_zone: _Optional[str] = ..., quiet_hours: _Optional[_Union[QuietHours, _Mapping]] = ...) -> None: ...

class EventMatch(_message.Message):
    __slots__ = ("event_name", "context_predicates")
    EVENT_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_PREDICATES_FIELD_NUMBER: _ClassVar[int]
    event_name: str
    context_predicates: _containers.RepeatedCompositeFieldContainer[_segmentation_pb2.Predicate]
    def __init__(self, event_name: _Optional[str] = ..., context_predicates: _Optional[_Iterable[_Union[_segmentation_pb2.Predicate, _Mapping]]] = ...) -> None: ...

class Goal(_message.Message):
    __slots__ = ("event", "window")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    event: EventMatch
    window: _duration_pb2.Duration
    def __init__(self, event: _Optional[_Union[EventMatch, _Mapping]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class QuietHours(_message.Message):
    __slots__ = ("start", "end", "channels")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    channels: _containers.RepeatedScalarFieldContainer[Channel]
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ..., channels: _Optional[_Iterable[_Union[Channel, str]]] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("step_id", "send", "wait", "wait_for_event", "branch", "split", "exit")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_EVENT_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    send: SendStep
    wait: WaitStep
    wait_for_event: WaitForEventStep
    branch: BranchStep
    split: SplitStep
    exit: ExitStep
    def __init__(self, step_id: _Optional[str] = ..., send: _Optional[_Union[SendStep, _Mapping]] = ..., wait: _Optional[_Union[WaitStep, _Mapping]] = ..., wait_for_event: _Optional[_Union[WaitForEventStep, _Mapping]] = ..., branch: _Optional[_Union[BranchStep, _Mapping]] = ..., split: _Optional[_Union[SplitStep, _Mapping]] = ..., exit: _Optional[_Union[ExitStep, _Mapping]] = ...) -> None: ...

class SendStep(_message.Message):
    __slots__ = ("action", "next_step_id")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    action: Action
    next_step_id: str
    def __init__(self, action: _Optional[_Union[Action, _Mapping]] = ..., next_step_id: _Optional[str] = ...) -> None: ...

class WaitStep(_message.Message):
    __slots__ = ("duration", "until_local_time", "next_step_id")
    DURATION_FIELD_NUMBER: _ClassVar[int]
    UNTIL_LOCAL_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    duration: _duration_pb2.Duration
    until_local_time: str
    next_step_id: str
    def __init__(self, duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., until_local_time: _Optional[str] = ..., next_step_id: _Optional[str] = ...) -> None: ...

class WaitForEventStep(_message.Message):
    __slots__ = ("event", "timeout", "arrived_step_id", "timed_out_step_id")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ARRIVED_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    event: EventMatch
    timeout: _duration_pb2.Duration
    arrived_step_id: str
    timed_out_step_id: str
    def __init__(self, event: _Optional[_Union[EventMatch, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., arrived_step_id: _Optional[str] = ..., timed_out_step_id: _Optional[str] = ...) -> None: ...

class BranchStep(_message.Message):
    __slots__ = ("filter", "yes_step_id", "no_step_id")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    YES_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NO_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    filter: _segmentation_pb2.Filter
    yes_step_id: str
    no_step_id: str
    def __init__(self, filter: _Optional[_Union[_segmentation_pb2.Filter, _Mapping]] = ..., yes_step_id: _Optional[str] = ..., no_step_id: _Optional[str] = ...) -> None: ...

class SplitVariant(_message.Message):
    __slots__ = ("name", "weight", "next_step_id", "control")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_ID_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: int
    next_step_id: str
    control: bool
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[int] = ..., next_step_id: _Optional[str] = ..., control: _Optional[bool] = ...) -> None: ...

class SplitStep(_message.Message):
    __slots__ = ("variants",)
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    variants: _containers.RepeatedCompositeFieldContainer[SplitVariant]
    def __init__(self, variants: _Optional[_Iterable[_Union[SplitVariant, _Mapping]]] = ...) -> None: ...

class ExitStep(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateCampaignRequest(_message.Message):
    __slots__ = ("campaign", "campaign_id")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    campaign_id: str
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ..., campaign_id: _Optional[str] = ...) -> None: ...

class CreateCampaignResponse(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ...) -> None: ...

class GetCampaignRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class GetCampaignResponse(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ...) -> None: ...

class ListCampaignsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[CampaignState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[CampaignState, str]]] = ...) -> None: ...

class ListCampaignsResponse(_message.Message):
    __slots__ = ("campaigns", "next_page_token")
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    campaigns: _containers.RepeatedCompositeFieldContainer[Campaign]
    next_page_token: str
    def __init__(self, campaigns: _Optional[_Iterable[_Union[Campaign, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateCampaignRequest(_message.Message):
    __slots__ = ("campaign", "update_mask")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateCampaignResponse(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ...) -> None: ...

class ActivateCampaignRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class ActivateCampaignResponse(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ...) -> None: ...

class PauseCampaignRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class PauseCampaignResponse(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ...) -> None: ...

class ArchiveCampaignRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class ArchiveCampaignResponse(_message.Message):
    __slots__ = ("campaign",)
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    campaign: Campaign
    def __init__(self, campaign: _Optional[_Union[Campaign, _Mapping]] = ...) -> None: ...

class PreviewMessageRequest(_message.Message):
    __slots__ = ("campaign_id", "customer_id", "context", "step_id")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    customer_id: str
    context: _containers.MessageMap[str, _common_pb2.Value]
    step_id: str
    def __init__(self, campaign_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., context: _Optional[_Mapping[str, _common_pb2.Value]] = ..., step_id: _Optional[str] = ...) -> None: ...

class RenderedMessage(_message.Message):
    __slots__ = ("channel", "subject", "html_body", "text_body", "data", "error")
    class DataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HTML_BODY_FIELD_NUMBER: _ClassVar[int]
    TEXT_BODY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    subject: str
    html_body: str
    text_body: str
    data: _containers.ScalarMap[str, str]
    error: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., subject: _Optional[str] = ..., html_body: _Optional[str] = ..., text_body: _Optional[str] = ..., data: _Optional[_Mapping[str, str]] = ..., error: _Optional[str] = ...) -> None: ...

class PreviewMessageResponse(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[RenderedMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[RenderedMessage, _Mapping]]] = ...) -> None: ...

class Delivery(_message.Message):
    __slots__ = ("delivery_id", "campaign_id", "event_id", "customer_id", "channel", "status", "reason", "attempts", "create_time", "update_time", "events")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    campaign_id: str
    event_id: str
    customer_id: str
    channel: Channel
    status: DeliveryStatus
    reason: str
    attempts: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    events: _containers.RepeatedCompositeFieldContainer[DeliveryEvent]
    def __init__(self, delivery_id: _Optional[str] = ..., campaign_id: _Optional[str] = ..., event_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., status: _Optional[_Union[DeliveryStatus, str]] = ..., reason: _Optional[str] = ..., attempts: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., events: _Optional[_Iterable[_Union[DeliveryEvent, _Mapping]]] = ...) -> None: ...

class ListDeliveriesRequest(_message.Message):
    __slots__ = ("campaign_id", "customer_id", "event_id", "page_size", "page_token")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    customer_id: str
    event_id: str
    page_size: int
    page_token: str
    def __init__(self, campaign_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., event_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeliveriesResponse(_message.Message):
    __slots__ = ("deliveries", "next_page_token")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    next_page_token: str
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCampaignStatsRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class GetCampaignStatsResponse(_message.Message):
    __slots__ = ("pending", "sent", "failed", "skipped", "reasons", "delivered", "bounced", "complained", "opened", "clicked")
    class ReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PENDING_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    BOUNCED_FIELD_NUMBER: _ClassVar[int]
    COMPLAINED_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CLICKED_FIELD_NUMBER: _ClassVar[int]
    pending: int
    sent: int
    failed: int
    skipped: int
    reasons: _containers.ScalarMap[str, int]
    delivered: int
    bounced: int
    complained: int
    opened: int
    clicked: int
    def __init__(self, pending: _Optional[int] = ..., sent: _Optional[int] = ..., failed: _Optional[int] = ..., skipped: _Optional[int] = ..., reasons: _Optional[_Mapping[str, int]] = ..., delivered: _Optional[int] = ..., bounced: _Optional[int] = ..., complained: _Optional[int] = ..., opened: _Optional[int] = ..., clicked: _Optional[int] = ...) -> None: ...

class DeliveryEvent(_message.Message):
    __slots__ = ("delivery_id", "kind", "occur_time", "detail", "provider_event_id", "recipient")
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OCCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    delivery_id: str
    kind: DeliveryEventKind
    occur_time: _timestamp_pb2.Timestamp
    detail: str
    provider_event_id: str
    recipient: str
    def __init__(self, delivery_id: _Optional[str] = ..., kind: _Optional[_Union[DeliveryEventKind, str]] = ..., occur_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detail: _Optional[str] = ..., provider_event_id: _Optional[str] = ..., recipient: _Optional[str] = ...) -> None: ...

class RecordDeliveryEventsRequest(_message.Message):
    __slots__ = ("events", "request_key", "requests")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DeliveryEvent]
    request_key: str
    requests: _containers.RepeatedCompositeFieldContainer[ProviderRequest]
    def __init__(self, events: _Optional[_Iterable[_Union[DeliveryEvent, _Mapping]]] = ..., request_key: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[ProviderRequest, _Mapping]]] = ...) -> None: ...

class ProviderRequest(_message.Message):
    __slots__ = ("events", "request_key")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_KEY_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DeliveryEvent]
    request_key: str
    def __init__(self, events: _Optional[_Iterable[_Union[DeliveryEvent, _Mapping]]] = ..., request_key: _Optional[str] = ...) -> None: ...

class RecordDeliveryEventsResponse(_message.Message):
    __slots__ = ("recorded", "unmatched", "duplicates", "suppressed", "outcomes")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    unmatched: int
    duplicates: int
    suppressed: int
    outcomes: _containers.RepeatedCompositeFieldContainer[ProviderRequestOutcome]
    def __init__(self, recorded: _Optional[int] = ..., unmatched: _Optional[int] = ..., duplicates: _Optional[int] = ..., suppressed: _Optional[int] = ..., outcomes: _Optional[_Iterable[_Union[ProviderRequestOutcome, _Mapping]]] = ...) -> None: ...

class ProviderRequestOutcome(_message.Message):
    __slots__ = ("recorded", "unmatched", "duplicates", "suppressed", "replayed")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    unmatched: int
    duplicates: int
    suppressed: int
    replayed: bool
    def __init__(self, recorded: _Optional[int] = ..., unmatched: _Optional[int] = ..., duplicates: _Optional[int] = ..., suppressed: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class Suppression(_message.Message):
    __slots__ = ("channel", "address", "reason", "detail", "delivery_id", "create_time")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    address: str
    reason: SuppressionReason
    detail: str
    delivery_id: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., address: _Optional[str] = ..., reason: _Optional[_Union[SuppressionReason, str]] = ..., detail: _Optional[str] = ..., delivery_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSuppressionsRequest(_message.Message):
    __slots__ = ("channel", "page_size", "page_token")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    page_size: int
    page_token: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSuppressionsResponse(_message.Message):
    __slots__ = ("suppressions", "next_page_token")
    SUPPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    suppressions: _containers.RepeatedCompositeFieldContainer[Suppression]
    next_page_token: str
    def __init__(self, suppressions: _Optional[_Iterable[_Union[Suppression, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateSuppressionRequest(_message.Message):
    __slots__ = ("suppression",)
    SUPPRESSION_FIELD_NUMBER: _ClassVar[int]
    suppression: Suppression
    def __init__(self, suppression: _Optional[_Union[Suppression, _Mapping]] = ...) -> None: ...

class CreateSuppressionResponse(_message.Message):
    __slots__ = ("suppression",)
    SUPPRESSION_FIELD_NUMBER: _ClassVar[int]
    suppression: Suppression
    def __init__(self, suppression: _Optional[_Union[Suppression, _Mapping]] = ...) -> None: ...

class DeleteSuppressionRequest(_message.Message):
    __slots__ = ("channel", "address")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    address: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., address: _Optional[str] = ...) -> None: ...

class DeleteSuppressionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChannelCap(_message.Message):
    __slots__ = ("channel", "max_sends", "window")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MAX_SENDS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    max_sends: int
    window: _duration_pb2.Duration
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., max_sends: _Optional[int] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetChannelCapsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetChannelCapsResponse(_message.Message):
    __slots__ = ("caps",)
    CAPS_FIELD_NUMBER: _ClassVar[int]
    caps: _containers.RepeatedCompositeFieldContainer[ChannelCap]
    def __init__(self, caps: _Optional[_Iterable[_Union[ChannelCap, _Mapping]]] = ...) -> None: ...

class SetChannelCapsRequest(_message.Message):
    __slots__ = ("caps",)
    CAPS_FIELD_NUMBER: _ClassVar[int]
    caps: _containers.RepeatedCompositeFieldContainer[ChannelCap]
    def __init__(self, caps: _Optional[_Iterable[_Union[ChannelCap, _Mapping]]] = ...) -> None: ...

class SetChannelCapsResponse(_message.Message):
    __slots__ = ("caps",)
    CAPS_FIELD_NUMBER: _ClassVar[int]
    caps: _containers.RepeatedCompositeFieldContainer[ChannelCap]
    def __init__(self, caps: _Optional[_Iterable[_Union[ChannelCap, _Mapping]]] = ...) -> None: ...

class SendTestMessageRequest(_message.Message):
    __slots__ = ("campaign_id", "step_id", "channel", "address", "sample_customer_id", "context")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Value, _Mapping]] = ...) -> None: ...
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    step_id: str
    channel: Channel
    address: str
    sample_customer_id: str
    context: _containers.MessageMap[str, _common_pb2.Value]
    def __init__(self, campaign_id: _Optional[str] = ..., step_id: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., address: _Optional[str] = ..., sample_customer_id: _Optional[str] = ..., context: _Optional[_Mapping[str, _common_pb2.Value]] = ...) -> None: ...

class TestDelivery(_message.Message):
    __slots__ = ("test_delivery_id", "campaign_id", "step_id", "channel", "address", "sample_customer_id", "status", "reason", "create_time")
    TEST_DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    test_delivery_id: str
    campaign_id: str
    step_id: str
    channel: Channel
    address: str
    sample_customer_id: str
    status: DeliveryStatus
    reason: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, test_delivery_id: _Optional[str] = ..., campaign_id: _Optional[str] = ..., step_id: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., address: _Optional[str] = ..., sample_customer_id: _Optional[str] = ..., status: _Optional[_Union[DeliveryStatus, str]] = ..., reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SendTestMessageResponse(_message.Message):
    __slots__ = ("test_delivery",)
    TEST_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    test_delivery: TestDelivery
    def __init__(self, test_delivery: _Optional[_Union[TestDelivery, _Mapping]] = ...) -> None: ...

class GetJourneyStatsRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class StepStats(_message.Message):
    __slots__ = ("step_id", "entered", "waiting", "sent", "skipped", "reasons", "exited", "converted", "deferred")
    class ReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    ENTERED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    entered: int
    waiting: int
    sent: int
    skipped: int
    reasons: _containers.ScalarMap[str, int]
    exited: int
    converted: int
    deferred: int
    def __init__(self, step_id: _Optional[str] = ..., entered: _Optional[int] = ..., waiting: _Optional[int] = ..., sent: _Optional[int] = ..., skipped: _Optional[int] = ..., reasons: _Optional[_Mapping[str, int]] = ..., exited: _Optional[int] = ..., converted: _Optional[int] = ..., deferred: _Optional[int] = ...) -> None: ...

class VariantStats(_message.Message):
    __slots__ = ("step_id", "variant", "entered", "converted")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ENTERED_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    variant: str
    entered: int
    converted: int
    def __init__(self, step_id: _Optional[str] = ..., variant: _Optional[str] = ..., entered: _Optional[int] = ..., converted: _Optional[int] = ...) -> None: ...

class GetJourneyStatsResponse(_message.Message):
    __slots__ = ("steps", "variants", "active", "completed", "exited", "cancelled", "converted")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[StepStats]
    variants: _containers.RepeatedCompositeFieldContainer[VariantStats]
    active: int
    completed: int
    exited: int
    cancelled: int
    converted: int
    def __init__(self, steps: _Optional[_Iterable[_Union[StepStats, _Mapping]]] = ..., variants: _Optional[_Iterable[_Union[VariantStats, _Mapping]]] = ..., active: _Optional[int] = ..., completed: _Optional[int] = ..., exited: _Optional[int] = ..., cancelled: _Optional[int] = ..., converted: _Optional[int] = ...) -> None: ...
