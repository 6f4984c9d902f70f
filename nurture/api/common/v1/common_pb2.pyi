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
