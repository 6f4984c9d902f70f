import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportQuery(_message.Message):
    __slots__ = ("to", "segment", "journey")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    JOURNEY_FIELD_NUMBER: _ClassVar[int]
    to: _timestamp_pb2.Timestamp
    segment: str
    journey: str
    def __init__(self, to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., segment: _Optional[str] = ..., journey: _Optional[str] = ..., **kwargs) -> None: ...

class EngagementRequest(_message.Message):
    __slots__ = ("query", "group_by")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    query: ReportQuery
    group_by: str
    def __init__(self, query: _Optional[_Union[ReportQuery, _Mapping]] = ..., group_by: _Optional[str] = ...) -> None: ...

class ProgressionRequest(_message.Message):
    __slots__ = ("query", "tables")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    query: ReportQuery
    tables: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, query: _Optional[_Union[ReportQuery, _Mapping]] = ..., tables: _Optional[_Iterable[str]] = ...) -> None: ...

class AttributionRequest(_message.Message):
    __slots__ = ("query", "model", "window_days")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    query: ReportQuery
    model: str
    window_days: int
    def __init__(self, query: _Optional[_Union[ReportQuery, _Mapping]] = ..., model: _Optional[str] = ..., window_days: _Optional[int] = ...) -> None: ...

class RoiRequest(_message.Message):
    __slots__ = ("query",)
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query: ReportQuery
    def __init__(self, query: _Optional[_Union[ReportQuery, _Mapping]] = ...) -> None: ...

class SequencesRequest(_message.Message):
    __slots__ = ("query", "length", "by", "window_days")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    query: ReportQuery
    length: int
    by: str
    window_days: int
    def __init__(self, query: _Optional[_Union[ReportQuery, _Mapping]] = ..., length: _Optional[int] = ..., by: _Optional[str] = ..., window_days: _Optional[int] = ...) -> None: ...

class TimeseriesRequest(_message.Message):
    __slots__ = ("query", "metric", "interval")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    query: ReportQuery
    metric: str
    interval: str
    def __init__(self, query: _Optional[_Union[ReportQuery, _Mapping]] = ..., metric: _Optional[str] = ..., interval: _Optional[str] = ...) -> None: ...

class DeliverabilityRequest(_message.Message):
    __slots__ = ("query", "domain", "provider", "interval")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    query: ReportQuery
    domain: str
    provider: str
    interval: str
    def __init__(self, query: _Optional[_Union[ReportQuery, _Mapping]] = ..., domain: _Optional[str] = ..., provider: _Optional[str] = ..., interval: _Optional[str] = ...) -> None: ...

class RebuildRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebuildReply(_message.Message):
    __slots__ = ("facts",)
    FACTS_FIELD_NUMBER: _ClassVar[int]
    facts: int
    def __init__(self, facts: _Optional[int] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("report_json",)
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    def __init__(self, report_json: _Optional[str] = ...) -> None: ...
