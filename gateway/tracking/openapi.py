"""The tracking endpoints' part of /openapi.json (gateway.openapi merges it): request bodies with
schemas and examples, and the statuses they answer (403 for a key or origin refused, 429 per key or
visitor, 202 for collect)."""

from __future__ import annotations

from collections.abc import Callable

from nurture.jsontypes import JsonObject

JSON = "application/json"
REF = "#/components/schemas/"
_VISITOR = {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$",
            "description": "the snippet's first-party anonymous id of this browser"}

# JSON Schema documents: JSON whose keys are the schema language's, not ours.
SCHEMAS: dict[str, JsonObject] = {
    "CollectInput": {
        "type": "object", "required": ["visitor_id", "events"], "additionalProperties": False,
        "properties": {"visitor_id": _VISITOR, "events": {"type": "array", "minItems": 1, "maxItems": 50, "items": {
            "type": "object", "required": ["id", "type"], "additionalProperties": False,
            "properties": {"id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$",
                                  "description": "the snippet's id of the event: a resend is a duplicate"},
                           "type": {"type": "string", "description": "one of gateway/tracking/data/collect.yaml"},
                           "properties": {"type": "object"}}}}},
        "example": {"visitor_id": "3f2a9c0e4b1d4e6f8a7b6c5d4e3f2a1b", "events": [
            {"id": "lx1-0-ab12", "type": "page_viewed", "properties": {"page": "/pricing", "category": "pricing"}}]},
    },
    "IdentifyInput": {
        "type": "object", "required": ["visitor_id"], "additionalProperties": False,
        "properties": {"visitor_id": _VISITOR, "email": {"type": "string", "maxLength": 254, "format": "email"},
                       "first_name": {"type": "string", "maxLength": 200},
                       "last_name": {"type": "string", "maxLength": 200},
                       "link": {"type": "string", "maxLength": 1024,
                                "description": "the nurture_id token an email click brought to the site"}},
        "example": {"visitor_id": "3f2a9c0e4b1d4e6f8a7b6c5d4e3f2a1b", "email": "ana@example.com"},
    },
    "FormInput": {
        "type": "object", "required": ["visitor_id", "answers"], "additionalProperties": False,
        "properties": {"visitor_id": _VISITOR, "answers": {
            "type": "object", "description": "field key: value, for fields of GET /t/v1/form"}},
        "example": {"visitor_id": "3f2a9c0e4b1d4e6f8a7b6c5d4e3f2a1b",
                    "answers": {"countries_of_interest": ["CA"], "timeline": "within_6_months"}},
    },
}

BODIES: dict[tuple[str, str], tuple[str, bool]] = {
    ("post", "/t/v1/collect"): ("CollectInput", True),
    ("post", "/t/v1/identify"): ("IdentifyInput", True),
    ("post", "/t/v1/form"): ("FormInput", True),
}


def complete(doc: JsonObject, error: Callable[[int], JsonObject]) -> None:
    """Statuses of the tracking routes beyond the common ones; `error(status)` is gateway.openapi's."""
    for path, operations in doc.get("paths", {}).items():
        if not path.startswith("/t/v1/"):
            continue
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            for status in (403, 429):
                responses[str(status)] = error(status)
            responses[str(403)]["description"] = "an unknown site key, or an origin the key does not allow"
            if method == "post" and path == "/t/v1/collect":
                responses.pop("200", None)
                accepted = responses.get("202", {}).get("content") or {JSON: {"schema": {"type": "object"}}}
                responses["202"] = {"description": "accepted (ignored: bots, prefetches, Do-Not-Track as configured)",
                                    "content": accepted}
    snippet = doc.get("paths", {}).get("/t/nurture.js", {}).get("get")
    if snippet is not None:
        snippet["responses"] = {"200": {"description": "the snippet",
                                        "content": {"text/javascript": {"schema": {"type": "string"}}}},
                                "400": error(400)}
