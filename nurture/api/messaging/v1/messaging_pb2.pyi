import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendRequest(_message.Message):
    __slots__ = ("dedupe_key", "lead_id", "journey", "journey_version", "step", "channel", "template", "category", "context_json", "not_before", "budget_exempt")
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
    BUDGET_EXEMPT_FIELD_NUMBER: _ClassVar[int]
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
    budget_exempt: bool
    def __init__(self, dedupe_key: _Optional[str] = ..., lead_id: _Optional[str] = ..., journey: _Optional[str] = ..., journey_version: _Optional[int] = ..., step: _Optional[str] = ..., channel: _Optional[str] = ..., template: _Optional[str] = ..., category: _Optional[str] = ..., context_json: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., budget_exempt: _Optional[bool] = ...) -> None: ...

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

class WithdrawRequest(_message.Message):
    __slots__ = ("lead_id", "journey", "journey_version", "occurrence_prefix", "reason")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    journey: str
    journey_version: int
    occurrence_prefix: str
    reason: str
    def __init__(self, lead_id: _Optional[str] = ..., journey: _Optional[str] = ..., journey_version: _Optional[int] = ..., occurrence_prefix: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WithdrawReply(_message.Message):
    __slots__ = ("withdrawn",)
    WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    withdrawn: int
    def __init__(self, withdrawn: _Optional[int] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ("with_variants",)
    WITH_VARIANTS_FIELD_NUMBER: _ClassVar[int]
    with_variants: bool
    def __init__(self, with_variants: _Optional[bool] = ...) -> None: ...

class ListTemplatesReply(_message.Message):
    __slots__ = ("keys", "items")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    items: _containers.RepeatedCompositeFieldContainer[TemplateSummary]
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., items: _Optional[_Iterable[_Union[TemplateSummary, _Mapping]]] = ...) -> None: ...

class TemplateSummary(_message.Message):
    __slots__ = ("key", "published_version", "latest_version", "journey", "category", "subject", "updated_at", "variants")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    key: str
    published_version: int
    latest_version: int
    journey: str
    category: str
    subject: str
    updated_at: _timestamp_pb2.Timestamp
    variants: int
    def __init__(self, key: _Optional[str] = ..., published_version: _Optional[int] = ..., latest_version: _Optional[int] = ..., journey: _Optional[str] = ..., category: _Optional[str] = ..., subject: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., variants: _Optional[int] = ...) -> None: ...

class TemplateContent(_message.Message):
    __slots__ = ("subject", "preheader", "body", "text", "variants_json", "topic", "format", "cta_label", "cta_path")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PREHEADER_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_JSON_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CTA_LABEL_FIELD_NUMBER: _ClassVar[int]
    CTA_PATH_FIELD_NUMBER: _ClassVar[int]
    subject: str
    preheader: str
    body: str
    text: str
    variants_json: str
    topic: str
    format: str
    cta_label: str
    cta_path: str
    def __init__(self, subject: _Optional[str] = ..., preheader: _Optional[str] = ..., body: _Optional[str] = ..., text: _Optional[str] = ..., variants_json: _Optional[str] = ..., topic: _Optional[str] = ..., format: _Optional[str] = ..., cta_label: _Optional[str] = ..., cta_path: _Optional[str] = ...) -> None: ...

class TemplateVersionInfo(_message.Message):
    __slots__ = ("version", "status", "source", "created_at", "published_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    status: str
    source: str
    created_at: _timestamp_pb2.Timestamp
    published_at: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., status: _Optional[str] = ..., source: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TemplateVariable(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class GetTemplateRequest(_message.Message):
    __slots__ = ("key", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetTemplateReply(_message.Message):
    __slots__ = ("summary", "version", "status", "content", "versions", "variables")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    summary: TemplateSummary
    version: int
    status: str
    content: TemplateContent
    versions: _containers.RepeatedCompositeFieldContainer[TemplateVersionInfo]
    variables: _containers.RepeatedCompositeFieldContainer[TemplateVariable]
    def __init__(self, summary: _Optional[_Union[TemplateSummary, _Mapping]] = ..., version: _Optional[int] = ..., status: _Optional[str] = ..., content: _Optional[_Union[TemplateContent, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[TemplateVersionInfo, _Mapping]]] = ..., variables: _Optional[_Iterable[_Union[TemplateVariable, _Mapping]]] = ...) -> None: ...

class PutTemplateRequest(_message.Message):
    __slots__ = ("key", "content", "validate_only")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    key: str
    content: TemplateContent
    validate_only: bool
    def __init__(self, key: _Optional[str] = ..., content: _Optional[_Union[TemplateContent, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class PutTemplateReply(_message.Message):
    __slots__ = ("key", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PublishTemplateRequest(_message.Message):
    __slots__ = ("key", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PublishTemplateReply(_message.Message):
    __slots__ = ("key", "version", "previous_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    previous_version: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., previous_version: _Optional[int] = ...) -> None: ...

class PreviewTemplateRequest(_message.Message):
    __slots__ = ("key", "version", "lead_id", "context_json", "variant", "content")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_JSON_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    lead_id: str
    context_json: str
    variant: str
    content: TemplateContent
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., lead_id: _Optional[str] = ..., context_json: _Optional[str] = ..., variant: _Optional[str] = ..., content: _Optional[_Union[TemplateContent, _Mapping]] = ...) -> None: ...

class PreviewTemplateReply(_message.Message):
    __slots__ = ("subject", "preheader", "html", "text", "variant", "version")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PREHEADER_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    subject: str
    preheader: str
    html: str
    text: str
    variant: str
    version: int
    def __init__(self, subject: _Optional[str] = ..., preheader: _Optional[str] = ..., html: _Optional[str] = ..., text: _Optional[str] = ..., variant: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SegmentCopy(_message.Message):
    __slots__ = ("label", "intro", "recommended_content_json")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INTRO_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    label: str
    intro: str
    recommended_content_json: str
    def __init__(self, label: _Optional[str] = ..., intro: _Optional[str] = ..., recommended_content_json: _Optional[str] = ...) -> None: ...

class SegmentCopySummary(_message.Message):
    __slots__ = ("segment", "published_version", "latest_version", "label", "updated_at")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    segment: str
    published_version: int
    latest_version: int
    label: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, segment: _Optional[str] = ..., published_version: _Optional[int] = ..., latest_version: _Optional[int] = ..., label: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSegmentCopyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSegmentCopyReply(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SegmentCopySummary]
    def __init__(self, items: _Optional[_Iterable[_Union[SegmentCopySummary, _Mapping]]] = ...) -> None: ...

class GetSegmentCopyRequest(_message.Message):
    __slots__ = ("segment", "version")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    segment: str
    version: int
    def __init__(self, segment: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetSegmentCopyReply(_message.Message):
    __slots__ = ("summary", "version", "status", "copy", "versions")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    summary: SegmentCopySummary
    version: int
    status: str
    copy: SegmentCopy
    versions: _containers.RepeatedCompositeFieldContainer[TemplateVersionInfo]
    def __init__(self, summary: _Optional[_Union[SegmentCopySummary, _Mapping]] = ..., version: _Optional[int] = ..., status: _Optional[str] = ..., copy: _Optional[_Union[SegmentCopy, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[TemplateVersionInfo, _Mapping]]] = ...) -> None: ...

class PutSegmentCopyRequest(_message.Message):
    __slots__ = ("segment", "copy", "validate_only")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    segment: str
    copy: SegmentCopy
    validate_only: bool
    def __init__(self, segment: _Optional[str] = ..., copy: _Optional[_Union[SegmentCopy, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class PutSegmentCopyReply(_message.Message):
    __slots__ = ("segment", "version")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    segment: str
    version: int
    def __init__(self, segment: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PublishSegmentCopyRequest(_message.Message):
    __slots__ = ("segment", "version")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    segment: str
    version: int
    def __init__(self, segment: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PublishSegmentCopyReply(_message.Message):
    __slots__ = ("segment", "version", "previous_version")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    segment: str
    version: int
    previous_version: int
    def __init__(self, segment: _Optional[str] = ..., version: _Optional[int] = ..., previous_version: _Optional[int] = ...) -> None: ...

class TestSendRequest(_message.Message):
    __slots__ = ("key", "version", "lead_id", "to", "context_json")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_JSON_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    lead_id: str
    to: str
    context_json: str
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., lead_id: _Optional[str] = ..., to: _Optional[str] = ..., context_json: _Optional[str] = ...) -> None: ...

class TestSendReply(_message.Message):
    __slots__ = ("to", "version", "subject")
    TO_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    to: str
    version: int
    subject: str
    def __init__(self, to: _Optional[str] = ..., version: _Optional[int] = ..., subject: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("id", "lead_id", "journey", "journey_version", "step", "channel", "template", "category", "subject", "status", "reason", "at", "due_at", "attempts", "variant", "template_version", "content")
    class ContentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
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
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
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
    template_version: int
    content: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., lead_id: _Optional[str] = ..., journey: _Optional[str] = ..., journey_version: _Optional[int] = ..., step: _Optional[str] = ..., channel: _Optional[str] = ..., template: _Optional[str] = ..., category: _Optional[str] = ..., subject: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ..., variant: _Optional[str] = ..., template_version: _Optional[int] = ..., content: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("lead_id", "limit", "ids")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    limit: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lead_id: _Optional[str] = ..., limit: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("email", "emails")
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    EMAILS_FIELD_NUMBER: _ClassVar[int]
    email: str
    emails: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, email: _Optional[str] = ..., emails: _Optional[_Iterable[str]] = ...) -> None: ...

class Suppression(_message.Message):
    __slots__ = ("channel", "scope", "reason")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    channel: str
    scope: str
    reason: str
    def __init__(self, channel: _Optional[str] = ..., scope: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AddressSuppressions(_message.Message):
    __slots__ = ("suppressed",)
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    suppressed: _containers.RepeatedCompositeFieldContainer[Suppression]
    def __init__(self, suppressed: _Optional[_Iterable[_Union[Suppression, _Mapping]]] = ...) -> None: ...

class SubscriptionsReply(_message.Message):
    __slots__ = ("suppressed", "by_email")
    class ByEmailEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AddressSuppressions
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AddressSuppressions, _Mapping]] = ...) -> None: ...
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    BY_EMAIL_FIELD_NUMBER: _ClassVar[int]
    suppressed: _containers.RepeatedCompositeFieldContainer[Suppression]
    by_email: _containers.MessageMap[str, AddressSuppressions]
    def __init__(self, suppressed: _Optional[_Iterable[_Union[Suppression, _Mapping]]] = ..., by_email: _Optional[_Mapping[str, AddressSuppressions]] = ...) -> None: ...

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
