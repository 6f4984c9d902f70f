import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TimelineItem(_message.Message):
    __slots__ = ("at", "kind", "type", "summary", "details_json", "id")
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    kind: str
    type: str
    summary: str
    details_json: str
    id: str
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., type: _Optional[str] = ..., summary: _Optional[str] = ..., details_json: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class SettleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SettleReply(_message.Message):
    __slots__ = ("work_done", "next_due_at", "has_next_due")
    WORK_DONE_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    HAS_NEXT_DUE_FIELD_NUMBER: _ClassVar[int]
    work_done: int
    next_due_at: _timestamp_pb2.Timestamp
    has_next_due: bool
    def __init__(self, work_done: _Optional[int] = ..., next_due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., has_next_due: _Optional[bool] = ...) -> None: ...

class TimelineRequest(_message.Message):
    __slots__ = ("lead_id", "limit")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    limit: int
    def __init__(self, lead_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class TimelineReply(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TimelineItem]
    def __init__(self, items: _Optional[_Iterable[_Union[TimelineItem, _Mapping]]] = ...) -> None: ...

class EraseLeadRequest(_message.Message):
    __slots__ = ("lead_id", "email_hash")
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_HASH_FIELD_NUMBER: _ClassVar[int]
    lead_id: str
    email_hash: str
    def __init__(self, lead_id: _Optional[str] = ..., email_hash: _Optional[str] = ...) -> None: ...

class EraseLeadReply(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("counters",)
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    counters: _containers.ScalarMap[str, int]
    def __init__(self, counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class TimersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TimerQueue(_message.Message):
    __slots__ = ("name", "pending", "due_now", "next_due_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DUE_NOW_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    pending: int
    due_now: int
    next_due_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., pending: _Optional[int] = ..., due_now: _Optional[int] = ..., next_due_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TimersReply(_message.Message):
    __slots__ = ("queues", "now")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[TimerQueue]
    now: _timestamp_pb2.Timestamp
    def __init__(self, queues: _Optional[_Iterable[_Union[TimerQueue, _Mapping]]] = ..., now: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeadLettersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("id", "kind", "lead_id", "summary", "error", "at")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LEAD_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    lead_id: str
    summary: str
    error: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., lead_id: _Optional[str] = ..., summary: _Optional[str] = ..., error: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeadLettersReply(_message.Message):
    __slots__ = ("items", "total")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    total: int
    def __init__(self, items: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class RetryDeadLetterRequest(_message.Message):
    __slots__ = ("id", "actor")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor: str
    def __init__(self, id: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class RetryDeadLetterReply(_message.Message):
    __slots__ = ("delivered", "error")
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    delivered: bool
    error: str
    def __init__(self, delivered: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...
