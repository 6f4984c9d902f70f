"""Response bodies declared by their handlers' return types, documented without being re-validated.

Every JSON route returns a TypedDict naming its body's fields (`-> Lead`, `-> LeadPage`): mypy checks
each body the handler builds against it, and the OpenAPI document shows it as the route's success
schema. FastAPI would also validate and re-serialise a body against its return type, which costs a
pass over every response and changes what it sends (an integer in a float field becomes 1.0, keys are
re-ordered, a key the type does not name is dropped). So `DocumentedRoute` moves the return type into
the route's documented responses and serialises the handler's dict as it is: the type is a promise the
type checker holds while building, and the fuzz test (tests/fuzz) holds the server to it at run time.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.utils import get_typed_return_annotation
from fastapi.routing import APIRoute
from starlette.responses import Response
from typing_extensions import TypedDict

# Bodies are spelled with this TypedDict: pydantic, which writes their schemas, refuses typing's own
# before Python 3.12.
__all__ = ["DocumentedRoute", "TypedDict"]


def _documentable(shape: object) -> bool:
    """A return type that is a JSON body: not a Response, nor a union holding one (a CSV or a JSON report)."""
    if shape is None:
        return False
    union = typing.get_origin(shape) in (typing.Union, types.UnionType)
    parts = typing.get_args(shape) if union else (shape,)
    return not any(isinstance(p, type) and issubclass(p, Response) for p in parts)


class DocumentedRoute(APIRoute):
    """An APIRoute whose inferred response model documents the success status and validates nothing."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if isinstance(kwargs.get("response_model", DefaultPlaceholder(None)), DefaultPlaceholder):
            shape = get_typed_return_annotation(endpoint)
            if _documentable(shape):
                status = kwargs.get("status_code") or 200
                kwargs["responses"] = {status: {"model": shape}, **(kwargs.get("responses") or {})}
            kwargs["response_model"] = None
        super().__init__(path, endpoint, **kwargs)
