import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Lead(_message.Message):
    __slots__ = ("id", "email", "first_name", "last_name", "segment", "timezone", "locale", "attributes_json", "consent_json", "score", "grade", "lifecycle_stage", "counters_json", "created_at", "updated_at", "last_engaged_at", "crm_id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_JSON_FIELD_NUMBER: _ClassVar[int]
    CONSENT_JSON_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GRADE_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ENGAGED_AT_FIELD_NUMBER: _ClassVar[int]
    CRM_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    first_name: str
    last_name: str
    segment: str
    timezone: str
    locale: str
    attributes_json: str
    consent_json: str
    score: int
    grade: str
    lifecycle_stage: str
    counters_json: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    last_engaged_at: _timestamp_pb2.Timestamp
    crm_id: str
    version: int
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., first_name: _Optional[str] = ..., last_name: _Optional[str] = ..., segment: _Optional[str] = ..., timezone: _Optional[str] = ..., locale: _Optional[str] = ..., attributes_json: _Optional[str] = ..., consent_json: _Optional[str] = ..., score: _Optional[int] = ..., grade: _Optional[str] = ..., lifecycle_stage: _Optional[str] = ..., counters_json: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_engaged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., crm_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class UpsertLeadRequest(_message.Message):
    __slots__ = ("id", "fields_json", "merge", "source", "must_exist", "source_modified_at", "source_record")
    ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_JSON_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MUST_EXIST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RECORD_FIELD_NUMBER: _ClassVar[int]
    id: str
    fields_json: str
    merge: bool
    source: str
    must_exist: bool
    source_modified_at: _timestamp_pb2.Timestamp
    source_record: str
    def __init__(self, id: _Optional[str] = ..., fields_json: _Optional[str] = ..., merge: _Optional[bool] = ..., source: _Optional[str] = ..., must_exist: _Optional[bool] = ..., source_modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_record: _Optional[str] = ...) -> None: ...

class UpsertLeadReply(_message.Message):
    __slots__ = ("lead", "created", "stale")
    LEAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    lead: Lead
    created: bool
    stale: bool
    def __init__(self, lead: _Optional[_Union[Lead, _Mapping]] = ..., created: _Optional[bool] = ..., stale: _Optional[bool] = ...) -> None: ...

class UpsertLeadsRequest(_message.Message):
    __slots__ = ("leads",)
    LEADS_FIELD_NUMBER: _ClassVar[int]
    leads: _containers.RepeatedCompositeFieldContainer[UpsertLeadRequest]
    def __init__(self, leads: _Optional[_Iterable[_Union[UpsertLeadRequest, _Mapping]]] = ...) -> None: ...

class UpsertLeadResult(_message.Message):
    __slots__ = ("lead", "created", "error_code", "error_message", "stale")
    LEAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    lead: Lead
    created: bool
    error_code: str
    error_message: str
    stale: bool
    def __init__(self, lead: _Optional[_Union[Lead, _Mapping]] = ..., created: _Optional[bool] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., stale: _Optional[bool] = ...) -> None: ...

class UpsertLeadsReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpsertLeadResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpsertLeadResult, _Mapping]]] = ...) -> None: ...

class GetLeadRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetLeadsRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLeadsReply(_message.Message):
    __slots__ = ("leads",)
    LEADS_FIELD_NUMBER: _ClassVar[int]
    leads: _containers.RepeatedCompositeFieldContainer[Lead]
    def __init__(self, leads: _Optional[_Iterable[_Union[Lead, _Mapping]]] = ...) -> None: ...

class ListLeadsRequest(_message.Message):
    __slots__ = ("segment", "min_score", "has_min_score", "stage", "cursor", "limit", "email", "q")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    segment: str
    min_score: int
    has_min_score: bool
    stage: str
    cursor: str
    limit: int
    email: str
    q: str
    def __init__(self, segment: _Optional[str] = ..., min_score: _Optional[int] = ..., has_min_score: _Optional[bool] = ..., stage: _Optional[str] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ..., email: _Optional[str] = ..., q: _Optional[str] = ...) -> None: ...

class ListLeadsReply(_message.Message):
    __slots__ = ("leads", "next_cursor")
    LEADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    leads: _containers.RepeatedCompositeFieldContainer[Lead]
    next_cursor: str
    def __init__(self, leads: _Optional[_Iterable[_Union[Lead, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class EraseRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class EraseReply(_message.Message):
    __slots__ = ("erased", "email_hash")
    ERASED_FIELD_NUMBER: _ClassVar[int]
    EMAIL_HASH_FIELD_NUMBER: _ClassVar[int]
    erased: bool
    email_hash: str
    def __init__(self, erased: _Optional[bool] = ..., email_hash: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("lead_id", "type", "properties_json", "occurred_at", "idempotency_key", "source", "traceparent")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_JSON_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    type: str
    properties_json: str
    occurred_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    source: str
    traceparent: str
    def __init__(self, lead_id: _Optional[str] = ..., type: _Optional[str] = ..., properties_json: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., source: _Optional[str] = ..., traceparent: _Optional[str] = ...) -> None: ...

class EventResult(_message.Message):
    __slots__ = ("event_id", "duplicate", "error_code", "error_message")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    duplicate: bool
    error_code: str
    error_message: str
    def __init__(self, event_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class IngestReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ...) -> None: ...

class ScoreChange(_message.Message):
    __slots__ = ("at", "delta", "score_after", "rule", "reason", "event_id")
    AT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SCORE_AFTER_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    delta: int
    score_after: int
    rule: str
    reason: str
    event_id: str
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delta: _Optional[int] = ..., score_after: _Optional[int] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class ScoreHistoryRequest(_message.Message):
    __slots__ = ("lead_id", "limit")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    limit: int
    def __init__(self, lead_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ScoreHistoryReply(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[ScoreChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[ScoreChange, _Mapping]]] = ...) -> None: ...

class ScoringModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScoringModelReply(_message.Message):
    __slots__ = ("name", "version", "definition_json", "versions_json", "segments_ever")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_EVER_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    definition_json: str
    versions_json: str
    segments_ever: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., definition_json: _Optional[str] = ..., versions_json: _Optional[str] = ..., segments_ever: _Optional[_Iterable[str]] = ...) -> None: ...

class PutScoringModelRequest(_message.Message):
    __slots__ = ("definition_json", "validate_only")
    DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    definition_json: str
    validate_only: bool
    def __init__(self, definition_json: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class PutScoringModelReply(_message.Message):
    __slots__ = ("version", "problems")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    version: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class PublishScoringModelRequest(_message.Message):
    __slots__ = ("version", "dry_run")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    version: int
    dry_run: bool
    def __init__(self, version: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PublishScoringModelReply(_message.Message):
    __slots__ = ("version", "dry_run", "leads", "grade_changes", "stage_changes", "changes_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    LEADS_FIELD_NUMBER: _ClassVar[int]
    GRADE_CHANGES_FIELD_NUMBER: _ClassVar[int]
    STAGE_CHANGES_FIELD_NUMBER: _ClassVar[int]
    CHANGES_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    dry_run: bool
    leads: int
    grade_changes: int
    stage_changes: int
    changes_json: str
    def __init__(self, version: _Optional[int] = ..., dry_run: _Optional[bool] = ..., leads: _Optional[int] = ..., grade_changes: _Optional[int] = ..., stage_changes: _Optional[int] = ..., changes_json: _Optional[str] = ...) -> None: ...

class VisitorEvent(_message.Message):
    __slots__ = ("type", "properties_json", "occurred_at", "client_id", "traceparent")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_JSON_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    type: str
    properties_json: str
    occurred_at: _timestamp_pb2.Timestamp
    client_id: str
    traceparent: str
    def __init__(self, type: _Optional[str] = ..., properties_json: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., client_id: _Optional[str] = ..., traceparent: _Optional[str] = ...) -> None: ...

class Visit(_message.Message):
    __slots__ = ("visitor_id", "events")
    VISITOR_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    visitor_id: str
    events: _containers.RepeatedCompositeFieldContainer[VisitorEvent]
    def __init__(self, visitor_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[VisitorEvent, _Mapping]]] = ...) -> None: ...

class CollectRequest(_message.Message):
    __slots__ = ("visits",)
    VISITS_FIELD_NUMBER: _ClassVar[int]
    visits: _containers.RepeatedCompositeFieldContainer[Visit]
    def __init__(self, visits: _Optional[_Iterable[_Union[Visit, _Mapping]]] = ...) -> None: ...

class VisitResult(_message.Message):
    __slots__ = ("results", "known")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EventResult]
    known: bool
    def __init__(self, results: _Optional[_Iterable[_Union[EventResult, _Mapping]]] = ..., known: _Optional[bool] = ...) -> None: ...

class CollectReply(_message.Message):
    __slots__ = ("visits",)
    VISITS_FIELD_NUMBER: _ClassVar[int]
    visits: _containers.RepeatedCompositeFieldContainer[VisitResult]
    def __init__(self, visits: _Optional[_Iterable[_Union[VisitResult, _Mapping]]] = ...) -> None: ...

class IdentifyVisitorRequest(_message.Message):
    __slots__ = ("visitor_id", "lead_id", "fields_json")
    VISITOR_ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_JSON_FIELD_NUMBER: _ClassVar[int]
    visitor_id: str
    lead_id: str
    fields_json: str
    def __init__(self, visitor_id: _Optional[str] = ..., lead_id: _Optional[str] = ..., fields_json: _Optional[str] = ...) -> None: ...

class IdentifyVisitorReply(_message.Message):
    __slots__ = ("lead_id", "created", "merged")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    created: bool
    merged: int
    def __init__(self, lead_id: _Optional[str] = ..., created: _Optional[bool] = ..., merged: _Optional[int] = ...) -> None: ...

class VisitorRequest(_message.Message):
    __slots__ = ("visitor_id",)
    VISITOR_ID_FIELD_NUMBER: _ClassVar[int]
    visitor_id: str
    def __init__(self, visitor_id: _Optional[str] = ...) -> None: ...

class VisitorReply(_message.Message):
    __slots__ = ("lead_id", "profile", "anonymous_events")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_EVENTS_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    profile: Lead
    anonymous_events: int
    def __init__(self, lead_id: _Optional[str] = ..., profile: _Optional[_Union[Lead, _Mapping]] = ..., anonymous_events: _Optional[int] = ...) -> None: ...

class FormField(_message.Message):
    __slots__ = ("key", "label", "kind", "choices")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    key: str
    label: str
    kind: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., label: _Optional[str] = ..., kind: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ...) -> None: ...

class NextFieldsRequest(_message.Message):
    __slots__ = ("visitor_id", "limit")
    VISITOR_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    visitor_id: str
    limit: int
    def __init__(self, visitor_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class NextFieldsReply(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedCompositeFieldContainer[FormField]
    def __init__(self, fields: _Optional[_Iterable[_Union[FormField, _Mapping]]] = ...) -> None: ...

class SubmitFormRequest(_message.Message):
    __slots__ = ("visitor_id", "answers_json")
    VISITOR_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_JSON_FIELD_NUMBER: _ClassVar[int]
    visitor_id: str
    answers_json: str
    def __init__(self, visitor_id: _Optional[str] = ..., answers_json: _Optional[str] = ...) -> None: ...

class SubmitFormReply(_message.Message):
    __slots__ = ("lead_id", "stored", "merged")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    stored: int
    merged: int
    def __init__(self, lead_id: _Optional[str] = ..., stored: _Optional[int] = ..., merged: _Optional[int] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class EchoReply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...
