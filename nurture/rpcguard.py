"""Every gRPC entry checks its request against `nurture.limits` before the servicer sees it.

`@guard_requests()` on a servicer class wraps each of its RPC methods: a request with a string that
breaks a limit (NUL, too long), a `*_json` field that is not a JSON document within the limits, or a
Timestamp outside the time range is answered INVALID_ARGUMENT with a short JSON message
(`{"code": "invalid", "message", "details": {"fields"}}`, which the gateway turns into a 422) and
never reaches the domain. A method may check one field itself (`own={"IngestEvents": "events"}`): a
batch's repeated field, whose items it checks with `message_problems` so that one bad item is
rejected alone and the good ones are taken; or a document whose limit problems it lists together
with its domain's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from nurture import limits
from nurture.errors import abort, invalid_fields

T = TypeVar("T")
_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


def _timestamp_problem(ts: Message) -> str | None:
    seconds = getattr(ts, "seconds", 0)
    if not limits.TIME_MIN.timestamp() <= seconds <= limits.TIME_MAX.timestamp():
        return f"must be between {limits.TIME_MIN.date()} and {limits.TIME_MAX.date()} (UTC)"
    return None


def _string_problems(name: str, value: str, problems: dict[str, str]) -> None:
    if name.endswith("_json"):
        if not value:
            return
        if len(value) > limits.MAX_DOCUMENT_BYTES:
            problems[name] = f"is larger than {limits.MAX_DOCUMENT_BYTES} bytes"
            return
        try:
            limits.parse_json(value, field=name)
        except limits.InputError as exc:
            problems.update(exc.problems)
        return
    problem = limits.text_problem(value)
    if problem:
        problems[name] = problem


def message_problems(msg: Message, *, prefix: str = "", skip: str | None = None) -> dict[str, str]:
    """Every limit the set fields of `msg` break, by field path (`events[3].properties_json`)."""
    problems: dict[str, str] = {}
    for fd, value in msg.ListFields():
        if fd.name == skip:
            continue
        name = prefix + fd.name
        if fd.type == _STRING:
            values = value if _repeated(fd) else [value]
            for i, v in enumerate(values):
                _string_problems(f"{name}[{i}]" if _repeated(fd) else name, v, problems)
        elif fd.type == _MESSAGE and fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                for k, v in value.items():
                    if isinstance(k, str) and limits.text_problem(k, limits.MAX_KEY_CHARS):
                        problems[f"{name}.{limits.shown(k)}"] = "key " + str(limits.text_problem(k))
                    if isinstance(v, str):
                        _string_problems(f"{name}.{limits.shown(k)}", v, problems)
                continue
            items = list(value) if _repeated(fd) else [value]
            for i, item in enumerate(items):
                path = f"{name}[{i}]" if _repeated(fd) else name
                if fd.message_type.full_name == "google.protobuf.Timestamp":
                    problem = _timestamp_problem(item)
                    if problem:
                        problems[path] = problem
                else:
                    problems.update(message_problems(item, prefix=path + "."))
        if len(problems) >= limits.MAX_PROBLEMS:
            break
    return problems


def _repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def problem_text(problems: dict[str, str]) -> str:
    """One line for a batch item's error message."""
    return "; ".join(f"{k} {v}" for k, v in problems.items())


def guard_requests(*, own: dict[str, str] | None = None) -> Callable[[type[T]], type[T]]:
    """Class decorator for a servicer: check every unary request against the limits before the
    method runs (server-streaming methods are not wrapped: they check their own request).
    `own` maps a method to the one field it checks itself."""
    skip_of = own or {}

    def decorate(cls: type[T]) -> type[T]:
        for base in cls.__mro__[1:]:
            if not base.__name__.endswith("Servicer") or base is object:
                continue
            for name, attr in vars(base).items():
                if name.startswith("_") or not callable(attr):
                    continue
                method = getattr(cls, name)
                setattr(cls, name, _wrap(method, skip_of.get(name)))
        return cls

    return decorate


def _wrap(method: Callable[..., Any], skip: str | None) -> Callable[..., Any]:
    import inspect

    if not inspect.iscoroutinefunction(method):
        return method  # streaming handlers (async generators) check their own requests

    @functools.wraps(method)
    async def checked(self: Any, request: Message, context: grpc.aio.ServicerContext) -> Any:
        problems = message_problems(request, skip=skip)
        if problems:
            await abort(context, invalid_fields(problems))
        return await method(self, request, context)

    return checked
