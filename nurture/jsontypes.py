"""The names of free-form JSON, in one place.

Most of what crosses a module boundary is a typed record (a dataclass, a pydantic model, a generated
proto). Some of it is JSON whose keys are data, not code: an event's properties, a lead's attributes,
a rule condition in the grammar of `nurture.rules`, a report row built for the HTTP API. Those are
spelled with these aliases rather than `dict[str, Any]`, so a reader can tell "free-form on purpose"
from "a structure nobody typed yet", and `tools/typecount.py` counts them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

JsonValue: TypeAlias = Any
"""Any JSON value: str, int, float, bool, None, a list or an object of them."""

JsonObject: TypeAlias = dict[str, JsonValue]
"""A JSON object whose keys are data (event properties, attributes, a report row)."""

JsonMapping: TypeAlias = Mapping[str, JsonValue]
"""A JSON object only read (a rule condition, a definition document)."""
