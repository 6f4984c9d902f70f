import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Contact(_message.Message):
    __slots__ = ("crm_id", "email", "first_name", "last_name", "properties_json", "modified_at", "lead_id")
    CRM_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    FIRST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_NAME_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_JSON_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    crm_id: str
    email: str
    first_name: str
    last_name: str
    properties_json: str
    modified_at: _timestamp_pb2.Timestamp
    lead_id: str
    def __init__(self, crm_id: _Optional[str] = ..., email: _Optional[str] = ..., first_name: _Optional[str] = ..., last_name: _Optional[str] = ..., properties_json: _Optional[str] = ..., modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lead_id: _Optional[str] = ...) -> None: ...

class UpsertContactsRequest(_message.Message):
    __slots__ = ("contacts",)
    CONTACTS_FIELD_NUMBER: _ClassVar[int]
    contacts: _containers.RepeatedCompositeFieldContainer[Contact]
    def __init__(self, contacts: _Optional[_Iterable[_Union[Contact, _Mapping]]] = ...) -> None: ...

class ContactResult(_message.Message):
    __slots__ = ("crm_id", "lead_id", "status", "error_code", "error_message", "conflicts")
    CRM_ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    crm_id: str
    lead_id: str
    status: str
    error_code: str
    error_message: str
    conflicts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, crm_id: _Optional[str] = ..., lead_id: _Optional[str] = ..., status: _Optional[str] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., conflicts: _Optional[_Iterable[str]] = ...) -> None: ...

class UpsertContactsReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ContactResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ContactResult, _Mapping]]] = ...) -> None: ...

class Activity(_message.Message):
    __slots__ = ("activity_id", "crm_id", "lead_id", "kind", "outcome", "body", "reason", "occurred_at", "modified_at", "properties_json")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    CRM_ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_JSON_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    crm_id: str
    lead_id: str
    kind: str
    outcome: str
    body: str
    reason: str
    occurred_at: _timestamp_pb2.Timestamp
    modified_at: _timestamp_pb2.Timestamp
    properties_json: str
    def __init__(self, activity_id: _Optional[str] = ..., crm_id: _Optional[str] = ..., lead_id: _Optional[str] = ..., kind: _Optional[str] = ..., outcome: _Optional[str] = ..., body: _Optional[str] = ..., reason: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., properties_json: _Optional[str] = ...) -> None: ...

class RecordActivityRequest(_message.Message):
    __slots__ = ("activity",)
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    activity: Activity
    def __init__(self, activity: _Optional[_Union[Activity, _Mapping]] = ...) -> None: ...

class InboundReply(_message.Message):
    __slots__ = ("lead_id", "status", "event_id")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    status: str
    event_id: str
    def __init__(self, lead_id: _Optional[str] = ..., status: _Optional[str] = ..., event_id: _Optional[str] = ...) -> None: ...

class Deal(_message.Message):
    __slots__ = ("deal_id", "crm_id", "lead_id", "stage", "amount", "currency", "reason", "modified_at", "properties_json")
    DEAL_ID_FIELD_NUMBER: _ClassVar[int]
    CRM_ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_JSON_FIELD_NUMBER: _ClassVar[int]
    deal_id: str
    crm_id: str
    lead_id: str
    stage: str
    amount: float
    currency: str
    reason: str
    modified_at: _timestamp_pb2.Timestamp
    properties_json: str
    def __init__(self, deal_id: _Optional[str] = ..., crm_id: _Optional[str] = ..., lead_id: _Optional[str] = ..., stage: _Optional[str] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., reason: _Optional[str] = ..., modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., properties_json: _Optional[str] = ...) -> None: ...

class ReportDealRequest(_message.Message):
    __slots__ = ("deal",)
    DEAL_FIELD_NUMBER: _ClassVar[int]
    deal: Deal
    def __init__(self, deal: _Optional[_Union[Deal, _Mapping]] = ...) -> None: ...

class WatchChangesRequest(_message.Message):
    __slots__ = ("cursor", "follow", "limit")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    follow: bool
    limit: int
    def __init__(self, cursor: _Optional[str] = ..., follow: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class LeadChange(_message.Message):
    __slots__ = ("cursor", "lead_id", "crm_id", "changed", "score", "grade", "lifecycle_stage", "journeys_json", "engagement_json", "at", "segment")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    CRM_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    GRADE_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    JOURNEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    ENGAGEMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    lead_id: str
    crm_id: str
    changed: _containers.RepeatedScalarFieldContainer[str]
    score: int
    grade: str
    lifecycle_stage: str
    journeys_json: str
    engagement_json: str
    at: _timestamp_pb2.Timestamp
    segment: str
    def __init__(self, cursor: _Optional[str] = ..., lead_id: _Optional[str] = ..., crm_id: _Optional[str] = ..., changed: _Optional[_Iterable[str]] = ..., score: _Optional[int] = ..., grade: _Optional[str] = ..., lifecycle_stage: _Optional[str] = ..., journeys_json: _Optional[str] = ..., engagement_json: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., segment: _Optional[str] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("dedupe_key", "lead_id", "kind", "title", "priority", "due_at", "details_json")
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DUE_AT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    dedupe_key: str
    lead_id: str
    kind: str
    title: str
    priority: str
    due_at: _timestamp_pb2.Timestamp
    details_json: str
    def __init__(self, dedupe_key: _Optional[str] = ..., lead_id: _Optional[str] = ..., kind: _Optional[str] = ..., title: _Optional[str] = ..., priority: _Optional[str] = ..., due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details_json: _Optional[str] = ...) -> None: ...

class TaskReply(_message.Message):
    __slots__ = ("task_id", "owner", "duplicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    owner: str
    duplicate: bool
    def __init__(self, task_id: _Optional[str] = ..., owner: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ProposalRequest(_message.Message):
    __slots__ = ("lead_id", "plan", "deal_id", "requested_by")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    DEAL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    plan: str
    deal_id: str
    requested_by: str
    def __init__(self, lead_id: _Optional[str] = ..., plan: _Optional[str] = ..., deal_id: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class ProposalLine(_message.Message):
    __slots__ = ("kind", "key", "name", "price", "rule")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    name: str
    price: float
    rule: str
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ..., name: _Optional[str] = ..., price: _Optional[float] = ..., rule: _Optional[str] = ...) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("id", "lead_id", "deal_id", "plan", "lines", "total", "currency", "created_at", "valid_until", "url", "status", "message_id", "task_id", "html", "pathways")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    DEAL_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    PATHWAYS_FIELD_NUMBER: _ClassVar[int]
    id: str
    lead_id: str
    deal_id: str
    plan: str
    lines: _containers.RepeatedCompositeFieldContainer[ProposalLine]
    total: float
    currency: str
    created_at: _timestamp_pb2.Timestamp
    valid_until: _timestamp_pb2.Timestamp
    url: str
    status: str
    message_id: str
    task_id: str
    html: str
    pathways: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., lead_id: _Optional[str] = ..., deal_id: _Optional[str] = ..., plan: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[ProposalLine, _Mapping]]] = ..., total: _Optional[float] = ..., currency: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., url: _Optional[str] = ..., status: _Optional[str] = ..., message_id: _Optional[str] = ..., task_id: _Optional[str] = ..., html: _Optional[str] = ..., pathways: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateProposalReply(_message.Message):
    __slots__ = ("proposal", "duplicate")
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    proposal: Proposal
    duplicate: bool
    def __init__(self, proposal: _Optional[_Union[Proposal, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ListProposalsRequest(_message.Message):
    __slots__ = ("lead_id",)
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    def __init__(self, lead_id: _Optional[str] = ...) -> None: ...

class ListProposalsReply(_message.Message):
    __slots__ = ("proposals",)
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedCompositeFieldContainer[Proposal]
    def __init__(self, proposals: _Optional[_Iterable[_Union[Proposal, _Mapping]]] = ...) -> None: ...

class GetProposalRequest(_message.Message):
    __slots__ = ("id", "token")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    token: str
    def __init__(self, id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class SendProposalRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SendProposalReply(_message.Message):
    __slots__ = ("message_id", "status", "reason")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    status: str
    reason: str
    def __init__(self, message_id: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
