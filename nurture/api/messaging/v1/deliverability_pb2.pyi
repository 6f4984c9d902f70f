import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DkimRecord(_message.Message):
    __slots__ = ("domain", "selector", "dns_txt", "signing")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    DNS_TXT_FIELD_NUMBER: _ClassVar[int]
    SIGNING_FIELD_NUMBER: _ClassVar[int]
    domain: str
    selector: str
    dns_txt: str
    signing: bool
    def __init__(self, domain: _Optional[str] = ..., selector: _Optional[str] = ..., dns_txt: _Optional[str] = ..., signing: _Optional[bool] = ...) -> None: ...

class ProviderRate(_message.Message):
    __slots__ = ("domain", "provider", "sent", "bounced_hard", "bounced_soft", "complaints", "complaint_rate", "hard_bounce_rate", "warnings")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    BOUNCED_HARD_FIELD_NUMBER: _ClassVar[int]
    BOUNCED_SOFT_FIELD_NUMBER: _ClassVar[int]
    COMPLAINTS_FIELD_NUMBER: _ClassVar[int]
    COMPLAINT_RATE_FIELD_NUMBER: _ClassVar[int]
    HARD_BOUNCE_RATE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    domain: str
    provider: str
    sent: int
    bounced_hard: int
    bounced_soft: int
    complaints: int
    complaint_rate: float
    hard_bounce_rate: float
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, domain: _Optional[str] = ..., provider: _Optional[str] = ..., sent: _Optional[int] = ..., bounced_hard: _Optional[int] = ..., bounced_soft: _Optional[int] = ..., complaints: _Optional[int] = ..., complaint_rate: _Optional[float] = ..., hard_bounce_rate: _Optional[float] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ProviderPause(_message.Message):
    __slots__ = ("provider", "since", "why")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    provider: str
    since: _timestamp_pb2.Timestamp
    why: str
    def __init__(self, provider: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., why: _Optional[str] = ...) -> None: ...

class WarmupDomain(_message.Message):
    __slots__ = ("domain", "day", "limit", "sent_today")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DAY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SENT_TODAY_FIELD_NUMBER: _ClassVar[int]
    domain: str
    day: int
    limit: int
    sent_today: int
    def __init__(self, domain: _Optional[str] = ..., day: _Optional[int] = ..., limit: _Optional[int] = ..., sent_today: _Optional[int] = ...) -> None: ...

class DeliverabilityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeliverabilityReply(_message.Message):
    __slots__ = ("dkim", "bounce_smtp", "bounce_domain", "rates", "paused", "warmup", "window_days")
    DKIM_FIELD_NUMBER: _ClassVar[int]
    BOUNCE_SMTP_FIELD_NUMBER: _ClassVar[int]
    BOUNCE_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    WINDOW_DAYS_FIELD_NUMBER: _ClassVar[int]
    dkim: _containers.RepeatedCompositeFieldContainer[DkimRecord]
    bounce_smtp: str
    bounce_domain: str
    rates: _containers.RepeatedCompositeFieldContainer[ProviderRate]
    paused: _containers.RepeatedCompositeFieldContainer[ProviderPause]
    warmup: _containers.RepeatedCompositeFieldContainer[WarmupDomain]
    window_days: int
    def __init__(self, dkim: _Optional[_Iterable[_Union[DkimRecord, _Mapping]]] = ..., bounce_smtp: _Optional[str] = ..., bounce_domain: _Optional[str] = ..., rates: _Optional[_Iterable[_Union[ProviderRate, _Mapping]]] = ..., paused: _Optional[_Iterable[_Union[ProviderPause, _Mapping]]] = ..., warmup: _Optional[_Iterable[_Union[WarmupDomain, _Mapping]]] = ..., window_days: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("provider", "by")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    provider: str
    by: str
    def __init__(self, provider: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class ResumeReply(_message.Message):
    __slots__ = ("was_paused",)
    WAS_PAUSED_FIELD_NUMBER: _ClassVar[int]
    was_paused: bool
    def __init__(self, was_paused: _Optional[bool] = ...) -> None: ...

class DeliveryEvent(_message.Message):
    __slots__ = ("message_id", "recipient", "kind", "detail")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    recipient: str
    kind: str
    detail: str
    def __init__(self, message_id: _Optional[str] = ..., recipient: _Optional[str] = ..., kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ReportEventsRequest(_message.Message):
    __slots__ = ("events", "source")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DeliveryEvent]
    source: str
    def __init__(self, events: _Optional[_Iterable[_Union[DeliveryEvent, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class ReportEventsReply(_message.Message):
    __slots__ = ("applied", "ignored")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FIELD_NUMBER: _ClassVar[int]
    applied: int
    ignored: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, applied: _Optional[int] = ..., ignored: _Optional[_Iterable[str]] = ...) -> None: ...
