import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendRequest(_message.Message):
    __slots__ = ("dedupe_key", "lead_id", "journey", "journey_version", "step", "channel", "template", "category", "context_json", "not_before")
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_JSON_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    dedupe_key: str
    lead_id: str
    journey: str
    journey_version: int
    step: str
    channel: str
    template: str
    category: str
    context_json: str
    not_before: _timestamp_pb2.Timestamp
    def __init__(self, dedupe_key: _Optional[str] = ..., lead_id: _Optional[str] = ..., journey: _Optional[str] = ..., journey_version: _Optional[int] = ..., step: _Optional[str] = ..., channel: _Optional[str] = ..., template: _Optional[str] = ..., category: _Optional[str] = ..., context_json: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SendReply(_message.Message):
    __slots__ = ("message_id", "status", "reason")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    status: str
    reason: str
    def __init__(self, message_id: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SendBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SendRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[SendRequest, _Mapping]]] = ...) -> None: ...

class SendBatchReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SendReply]
    def __init__(self, results: _Optional[_Iterable[_Union[SendReply, _Mapping]]] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTemplatesReply(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("template", "lead_id", "context_json")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_JSON_FIELD_NUMBER: _ClassVar[int]
    template: str
    lead_id: str
    context_json: str
    def __init__(self, template: _Optional[str] = ..., lead_id: _Optional[str] = ..., context_json: _Optional[str] = ...) -> None: ...

class RenderReply(_message.Message):
    __slots__ = ("subject", "html", "text", "variant")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    html: str
    text: str
    variant: str
    def __init__(self, subject: _Optional[str] = ..., html: _Optional[str] = ..., text: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("id", "lead_id", "journey", "journey_version", "step", "channel", "template", "category", "subject", "status", "reason", "at", "due_at", "attempts", "variant")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    id: str
    lead_id: str
    journey: str
    journey_version: int
    step: str
    channel: str
    template: str
    category: str
    subject: str
    status: str
    reason: str
    at: _timestamp_pb2.Timestamp
    due_at: _timestamp_pb2.Timestamp
    attempts: int
    variant: str
    def __init__(self, id: _Optional[str] = ..., lead_id: _Optional[str] = ..., journey: _Optional[str] = ..., journey_version: _Optional[int] = ..., step: _Optional[str] = ..., channel: _Optional[str] = ..., template: _Optional[str] = ..., category: _Optional[str] = ..., subject: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ..., variant: _Optional[str] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("lead_id", "limit")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    limit: int
    def __init__(self, lead_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListMessagesReply(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, items: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

class TrackRequest(_message.Message):
    __slots__ = ("token", "kind", "user_agent")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    token: str
    kind: str
    user_agent: str
    def __init__(self, token: _Optional[str] = ..., kind: _Optional[str] = ..., user_agent: _Optional[str] = ...) -> None: ...

class TrackReply(_message.Message):
    __slots__ = ("url", "message_id", "duplicate", "lead_id")
    URL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    url: str
    message_id: str
    duplicate: bool
    lead_id: str
    def __init__(self, url: _Optional[str] = ..., message_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., lead_id: _Optional[str] = ...) -> None: ...

class UnsubscribeRequest(_message.Message):
    __slots__ = ("token", "scope", "source", "dry_run")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    token: str
    scope: str
    source: str
    dry_run: bool
    def __init__(self, token: _Optional[str] = ..., scope: _Optional[str] = ..., source: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class UnsubscribeReply(_message.Message):
    __slots__ = ("lead_id", "scope", "category", "journey", "already")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    scope: str
    category: str
    journey: str
    already: bool
    def __init__(self, lead_id: _Optional[str] = ..., scope: _Optional[str] = ..., category: _Optional[str] = ..., journey: _Optional[str] = ..., already: _Optional[bool] = ...) -> None: ...

class PersonalizationRequest(_message.Message):
    __slots__ = ("lead_id", "anonymous_profile_json")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    anonymous_profile_json: str
    def __init__(self, lead_id: _Optional[str] = ..., anonymous_profile_json: _Optional[str] = ...) -> None: ...

class PersonalizationReply(_message.Message):
    __slots__ = ("segment", "featured_countries", "recommended_content_json", "next_best_action_json", "journeys_available")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    FEATURED_COUNTRIES_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEST_ACTION_JSON_FIELD_NUMBER: _ClassVar[int]
    JOURNEYS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    segment: str
    featured_countries: _containers.RepeatedScalarFieldContainer[str]
    recommended_content_json: str
    next_best_action_json: str
    journeys_available: bool
    def __init__(self, segment: _Optional[str] = ..., featured_countries: _Optional[_Iterable[str]] = ..., recommended_content_json: _Optional[str] = ..., next_best_action_json: _Optional[str] = ..., journeys_available: _Optional[bool] = ...) -> None: ...

class AudienceRequest(_message.Message):
    __slots__ = ("name", "cursor", "limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    cursor: str
    limit: int
    def __init__(self, name: _Optional[str] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AudienceReply(_message.Message):
    __slots__ = ("name", "lead_ids", "suppressed", "suppressed_reasons", "next_cursor", "journeys_available")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEAD_IDS_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_REASONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    JOURNEYS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    lead_ids: _containers.RepeatedScalarFieldContainer[str]
    suppressed: _containers.RepeatedScalarFieldContainer[str]
    suppressed_reasons: _containers.RepeatedScalarFieldContainer[str]
    next_cursor: str
    journeys_available: bool
    def __init__(self, name: _Optional[str] = ..., lead_ids: _Optional[_Iterable[str]] = ..., suppressed: _Optional[_Iterable[str]] = ..., suppressed_reasons: _Optional[_Iterable[str]] = ..., next_cursor: _Optional[str] = ..., journeys_available: _Optional[bool] = ...) -> None: ...

class SubscriptionsRequest(_message.Message):
    __slots__ = ("email",)
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    email: str
    def __init__(self, email: _Optional[str] = ...) -> None: ...

class Suppression(_message.Message):
    __slots__ = ("channel", "scope", "reason")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    channel: str
    scope: str
    reason: str
    def __init__(self, channel: _Optional[str] = ..., scope: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SubscriptionsReply(_message.Message):
    __slots__ = ("suppressed",)
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    suppressed: _containers.RepeatedCompositeFieldContainer[Suppression]
    def __init__(self, suppressed: _Optional[_Iterable[_Union[Suppression, _Mapping]]] = ...) -> None: ...

class AbReportRequest(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: str
    def __init__(self, template: _Optional[str] = ...) -> None: ...

class AbVariant(_message.Message):
    __slots__ = ("name", "sent", "opened", "clicked", "open_rate", "click_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CLICKED_FIELD_NUMBER: _ClassVar[int]
    OPEN_RATE_FIELD_NUMBER: _ClassVar[int]
    CLICK_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    sent: int
    opened: int
    clicked: int
    open_rate: float
    click_rate: float
    def __init__(self, name: _Optional[str] = ..., sent: _Optional[int] = ..., opened: _Optional[int] = ..., clicked: _Optional[int] = ..., open_rate: _Optional[float] = ..., click_rate: _Optional[float] = ...) -> None: ...

class AbReportReply(_message.Message):
    __slots__ = ("template", "metric", "variants", "winner", "p_value", "z", "significant", "explanation")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    SIGNIFICANT_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    template: str
    metric: str
    variants: _containers.RepeatedCompositeFieldContainer[AbVariant]
    winner: str
    p_value: float
    z: float
    significant: bool
    explanation: str
    def __init__(self, template: _Optional[str] = ..., metric: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[AbVariant, _Mapping]]] = ..., winner: _Optional[str] = ..., p_value: _Optional[float] = ..., z: _Optional[float] = ..., significant: _Optional[bool] = ..., explanation: _Optional[str] = ...) -> None: ...
