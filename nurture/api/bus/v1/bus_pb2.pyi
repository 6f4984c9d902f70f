from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("version", "message")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    version: int
    message: BusMessage
    def __init__(self, version: _Optional[int] = ..., message: _Optional[_Union[BusMessage, _Mapping]] = ...) -> None: ...

class BusMessage(_message.Message):
    __slots__ = ("id", "lead_id", "type", "properties", "occurred_at", "lead", "score_delta", "rules", "signals", "source")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    LEAD_FIELD_NUMBER: _ClassVar[int]
    SCORE_DELTA_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    lead_id: str
    type: str
    properties: _struct_pb2.Struct
    occurred_at: str
    lead: LeadSnapshot
    score_delta: int
    rules: _containers.RepeatedCompositeFieldContainer[RuleHit]
    signals: _containers.RepeatedScalarFieldContainer[str]
    source: str
    def __init__(self, id: _Optional[str] = ..., lead_id: _Optional[str] = ..., type: _Optional[str] = ..., properties: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., occurred_at: _Optional[str] = ..., lead: _Optional[_Union[LeadSnapshot, _Mapping]] = ..., score_delta: _Optional[int] = ..., rules: _Optional[_Iterable[_Union[RuleHit, _Mapping]]] = ..., signals: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ...) -> None: ...

class RuleHit(_message.Message):
    __slots__ = ("rule", "points", "why")
    RULE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    rule: str
    points: int
    why: str
    def __init__(self, rule: _Optional[str] = ..., points: _Optional[int] = ..., why: _Optional[str] = ...) -> None: ...

class LeadSnapshot(_message.Message):
    __slots__ = ("id", "email", "first_name", "last_name", "segment", "timezone", "locale", "attributes", "consent", "score", "grade", "lifecycle_stage", "counters", "interests", "crm_id", "version", "created_at", "updated_at", "last_engaged_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_NAME_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GRADE_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    INTERESTS_FIELD_NUMBER: _ClassVar[int]
    CRM_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ENGAGED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    first_name: str
    last_name: str
    segment: str
    timezone: str
    locale: str
    attributes: _struct_pb2.Struct
    consent: _struct_pb2.Struct
    score: int
    grade: str
    lifecycle_stage: str
    counters: _struct_pb2.Struct
    interests: _struct_pb2.Struct
    crm_id: str
    version: int
    created_at: str
    updated_at: str
    last_engaged_at: str
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., first_name: _Optional[str] = ..., last_name: _Optional[str] = ..., segment: _Optional[str] = ..., timezone: _Optional[str] = ..., locale: _Optional[str] = ..., attributes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., consent: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., score: _Optional[int] = ..., grade: _Optional[str] = ..., lifecycle_stage: _Optional[str] = ..., counters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., interests: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., crm_id: _Optional[str] = ..., version: _Optional[int] = ..., created_at: _Optional[str] = ..., updated_at: _Optional[str] = ..., last_engaged_at: _Optional[str] = ...) -> None: ...
