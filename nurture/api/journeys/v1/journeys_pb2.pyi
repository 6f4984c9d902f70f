import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Enrollment(_message.Message):
    __slots__ = ("journey", "version", "stage", "step", "status", "next_step_at", "entered_at", "instance", "outcome")
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_AT_FIELD_NUMBER: _ClassVar[int]
    ENTERED_AT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    journey: str
    version: int
    stage: str
    step: str
    status: str
    next_step_at: _timestamp_pb2.Timestamp
    entered_at: _timestamp_pb2.Timestamp
    instance: str
    outcome: str
    def __init__(self, journey: _Optional[str] = ..., version: _Optional[int] = ..., stage: _Optional[str] = ..., step: _Optional[str] = ..., status: _Optional[str] = ..., next_step_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., entered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., instance: _Optional[str] = ..., outcome: _Optional[str] = ...) -> None: ...

class LeadJourneysRequest(_message.Message):
    __slots__ = ("lead_id",)
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    def __init__(self, lead_id: _Optional[str] = ...) -> None: ...

class LeadJourneysReply(_message.Message):
    __slots__ = ("enrollments",)
    ENROLLMENTS_FIELD_NUMBER: _ClassVar[int]
    enrollments: _containers.RepeatedCompositeFieldContainer[Enrollment]
    def __init__(self, enrollments: _Optional[_Iterable[_Union[Enrollment, _Mapping]]] = ...) -> None: ...

class LeadsJourneysRequest(_message.Message):
    __slots__ = ("lead_ids",)
    LEAD_IDS_FIELD_NUMBER: _ClassVar[int]
    lead_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lead_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LeadEnrollments(_message.Message):
    __slots__ = ("lead_id", "enrollments")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENTS_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    enrollments: _containers.RepeatedCompositeFieldContainer[Enrollment]
    def __init__(self, lead_id: _Optional[str] = ..., enrollments: _Optional[_Iterable[_Union[Enrollment, _Mapping]]] = ...) -> None: ...

class LeadsJourneysReply(_message.Message):
    __slots__ = ("leads",)
    LEADS_FIELD_NUMBER: _ClassVar[int]
    leads: _containers.RepeatedCompositeFieldContainer[LeadEnrollments]
    def __init__(self, leads: _Optional[_Iterable[_Union[LeadEnrollments, _Mapping]]] = ...) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ("journey", "stage", "status", "cursor", "limit", "step")
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    journey: str
    stage: str
    status: str
    cursor: str
    limit: int
    step: str
    def __init__(self, journey: _Optional[str] = ..., stage: _Optional[str] = ..., status: _Optional[str] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ..., step: _Optional[str] = ...) -> None: ...

class MembersReply(_message.Message):
    __slots__ = ("lead_ids", "next_cursor")
    LEAD_IDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    lead_ids: _containers.RepeatedScalarFieldContainer[str]
    next_cursor: str
    def __init__(self, lead_ids: _Optional[_Iterable[str]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class JourneySummary(_message.Message):
    __slots__ = ("key", "name", "kind", "published_version", "status", "latest_version", "priority", "mode", "templates")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    key: str
    name: str
    kind: str
    published_version: int
    status: str
    latest_version: int
    priority: int
    mode: str
    templates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., published_version: _Optional[int] = ..., status: _Optional[str] = ..., latest_version: _Optional[int] = ..., priority: _Optional[int] = ..., mode: _Optional[str] = ..., templates: _Optional[_Iterable[str]] = ...) -> None: ...

class ListJourneysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJourneysReply(_message.Message):
    __slots__ = ("journeys",)
    JOURNEYS_FIELD_NUMBER: _ClassVar[int]
    journeys: _containers.RepeatedCompositeFieldContainer[JourneySummary]
    def __init__(self, journeys: _Optional[_Iterable[_Union[JourneySummary, _Mapping]]] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "status", "created_at", "published_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    status: str
    created_at: _timestamp_pb2.Timestamp
    published_at: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., status: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetJourneyRequest(_message.Message):
    __slots__ = ("key", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetJourneyReply(_message.Message):
    __slots__ = ("summary", "definition_json", "version", "versions")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    summary: JourneySummary
    definition_json: str
    version: int
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, summary: _Optional[_Union[JourneySummary, _Mapping]] = ..., definition_json: _Optional[str] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class PutJourneyRequest(_message.Message):
    __slots__ = ("key", "definition_json", "validate_only")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    key: str
    definition_json: str
    validate_only: bool
    def __init__(self, key: _Optional[str] = ..., definition_json: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class PutJourneyReply(_message.Message):
    __slots__ = ("version", "problems")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    version: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("key", "version", "migrate", "step_mapping", "dry_run")
    class StepMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_FIELD_NUMBER: _ClassVar[int]
    STEP_MAPPING_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    migrate: bool
    step_mapping: _containers.ScalarMap[str, str]
    dry_run: bool
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., migrate: _Optional[bool] = ..., step_mapping: _Optional[_Mapping[str, str]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("version", "published", "report_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    published: bool
    report_json: str
    def __init__(self, version: _Optional[int] = ..., published: _Optional[bool] = ..., report_json: _Optional[str] = ...) -> None: ...

class ArchiveRequest(_message.Message):
    __slots__ = ("key", "archived")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    key: str
    archived: bool
    def __init__(self, key: _Optional[str] = ..., archived: _Optional[bool] = ...) -> None: ...

class ArchiveReply(_message.Message):
    __slots__ = ("status", "version", "changed")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    status: str
    version: int
    changed: bool
    def __init__(self, status: _Optional[str] = ..., version: _Optional[int] = ..., changed: _Optional[bool] = ...) -> None: ...

class AnalyticsRequest(_message.Message):
    __slots__ = ("key", "to", "without_stages")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_STAGES_FIELD_NUMBER: _ClassVar[int]
    key: str
    to: _timestamp_pb2.Timestamp
    without_stages: bool
    def __init__(self, key: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., without_stages: _Optional[bool] = ..., **kwargs) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("report_json",)
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    def __init__(self, report_json: _Optional[str] = ...) -> None: ...

class SimulateRequest(_message.Message):
    __slots__ = ("request_json",)
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    request_json: str
    def __init__(self, request_json: _Optional[str] = ...) -> None: ...

class LiveStepsRequest(_message.Message):
    __slots__ = ("journey",)
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    journey: str
    def __init__(self, journey: _Optional[str] = ...) -> None: ...

class LiveStepsReply(_message.Message):
    __slots__ = ("leads",)
    class LeadsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LEADS_FIELD_NUMBER: _ClassVar[int]
    leads: _containers.ScalarMap[str, int]
    def __init__(self, leads: _Optional[_Mapping[str, int]] = ...) -> None: ...

class WhyNotRequest(_message.Message):
    __slots__ = ("lead_id", "journey")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    journey: str
    def __init__(self, lead_id: _Optional[str] = ..., journey: _Optional[str] = ...) -> None: ...

class CountedLeadsRequest(_message.Message):
    __slots__ = ("journey", "step", "measure", "reason", "to", "cursor", "limit")
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    journey: str
    step: str
    measure: str
    reason: str
    to: _timestamp_pb2.Timestamp
    cursor: str
    limit: int
    def __init__(self, journey: _Optional[str] = ..., step: _Optional[str] = ..., measure: _Optional[str] = ..., reason: _Optional[str] = ..., to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cursor: _Optional[str] = ..., limit: _Optional[int] = ..., **kwargs) -> None: ...

class CountedLead(_message.Message):
    __slots__ = ("lead_id", "times")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    TIMES_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    times: int
    def __init__(self, lead_id: _Optional[str] = ..., times: _Optional[int] = ...) -> None: ...

class CountedLeadsReply(_message.Message):
    __slots__ = ("leads", "next_cursor", "total", "leads_total")
    LEADS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    LEADS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    leads: _containers.RepeatedCompositeFieldContainer[CountedLead]
    next_cursor: str
    total: int
    leads_total: int
    def __init__(self, leads: _Optional[_Iterable[_Union[CountedLead, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., total: _Optional[int] = ..., leads_total: _Optional[int] = ...) -> None: ...
