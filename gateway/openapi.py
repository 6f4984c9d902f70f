"""The OpenAPI document as the API really is (`GET /openapi.json`).

FastAPI derives a document from the routes, but the routes read their bodies themselves (JSON or
YAML, checked against nurture.limits), answer errors in our shape, and some answer GIF, HTML or a
redirect. So the derived document is completed here, in one place: request bodies with schemas and
examples, the `bearerAuth` scheme on every keyed route, every status the contract (docs/API.md)
lists with the error schema, and the real media types. The fuzz test (tests/fuzz) holds the server
to this document: a response it does not describe fails the build.
"""

from __future__ import annotations

import copy

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.tracking import openapi as tracking_openapi
from nurture import limits
from nurture.jsontypes import JsonObject

JSON = "application/json"
REF = "#/components/schemas/"

_STRING = {"type": "string", "maxLength": limits.MAX_STRING_CHARS}
_NULLABLE_STRING = {"type": ["string", "null"], "maxLength": 200}
_DATA = {"type": "object", "description": f"Any JSON object within the input limits (nesting at most "
                                          f"{limits.MAX_DEPTH} levels, strings at most "
                                          f"{limits.MAX_STRING_CHARS} characters, no NUL or lone "
                                          f"surrogates, integers within +/-(2^53-1)); see docs/INPUT-LIMITS.md"}

# The document and its schemas are JSON in OpenAPI's and JSON Schema's vocabularies: JsonObject.
SCHEMAS: dict[str, JsonObject] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message", "details"],
            "properties": {"code": {"type": "string", "description": "a machine word, e.g. invalid"},
                           "message": {"type": "string", "description": "for a person"},
                           "details": {"type": "object", "description": "e.g. fields: {name: problem}"}}}},
        "example": {"error": {"code": "invalid", "message": "occurred_at must be between 1900-01-01 and "
                              "9000-01-01 (UTC)", "details": {"fields": {"occurred_at": "must be between ..."}}}},
    },
    "LeadInput": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,128}$",
                   "description": "client-supplied; generated when absent (POST only)"},
            "email": {"type": ["string", "null"], "maxLength": 254, "format": "email"},
            "first_name": _NULLABLE_STRING, "last_name": _NULLABLE_STRING,
            "segment": {"type": ["string", "null"], "maxLength": 64,
                        "description": "one of the live scoring model's segments (GET /v1/scoring/model: the seed's "
                                       "skilled_professional, family, entrepreneur), or null"},
            "timezone": {"type": ["string", "null"], "maxLength": 64, "description": "an IANA time zone"},
            "locale": {"type": ["string", "null"], "maxLength": 35},
            "crm_id": {"type": ["string", "null"], "maxLength": 128},
            "attributes": {**_DATA, "description": "custom fields (merged by PATCH). " + _DATA["description"]},
            "consent": {"type": "object", "properties": {c: {"type": "boolean"} for c in ("email", "sms", "in_app")},
                        "additionalProperties": False},
        },
        "additionalProperties": False,
        "example": {"id": "ana", "email": "ana@example.com", "first_name": "Ana", "consent": {"email": True},
                    "timezone": "Asia/Kolkata",
                    "attributes": {"profession": "nurse", "countries_of_interest": ["CA"]}},
    },
    "EventInput": {
        "type": "object", "required": ["lead_id", "type"],
        "properties": {
            "lead_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,128}$"},
            "type": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$", "example": "page_viewed"},
            "properties": {**_DATA, "type": ["object", "null"]},
            "occurred_at": {"type": ["string", "null"], "format": "date-time",
                            "description": "RFC 3339 with a zone, 1900-01-01..9000-01-01 UTC, at most a day ahead"},
            "idempotency_key": {"type": ["string", "null"], "minLength": 1, "maxLength": 200},
        },
        "additionalProperties": False,
        "example": {"lead_id": "ana", "type": "page_viewed", "properties": {"category": "pricing"},
                    "idempotency_key": "web-123"},
    },
    "BatchInput": {
        "type": "object", "required": ["events"],
        "properties": {"events": {"type": "array", "maxItems": 1000, "items": {"$ref": REF + "EventInput"}}},
        "example": {"events": [{"lead_id": "ana", "type": "page_viewed", "properties": {"category": "pricing"}}]},
    },
    "Publish": {
        "type": "object",
        "properties": {"version": {"type": "integer", "minimum": 0, "maximum": limits.INT32_MAX},
                       "migrate": {"type": "boolean"}, "dry_run": {"type": "boolean"},
                       "step_mapping": {"type": "object", "additionalProperties": {"type": "string"}}},
        "example": {"version": 2, "migrate": True, "dry_run": True, "step_mapping": {"email_4": "email_5"}},
    },
    "Simulation": {
        "type": "object",
        "properties": {"journeys": {"type": "array", "items": {"anyOf": [
                           {"type": "string"},
                           {"type": "object", "required": ["key"],
                            "properties": {"key": {"type": "string"},
                                           "version": {"type": "integer", "minimum": 0,
                                                       "maximum": limits.INT32_MAX}}}]}},
                       "leads": {"type": "integer", "minimum": 0}, "days": {"type": "integer", "minimum": 0},
                       "seed": {"type": "integer", "minimum": 0, "maximum": limits.MAX_SAFE_INTEGER},
                       "behaviour": {"type": "object"}},
        "example": {"journeys": ["skilled_professional"], "leads": 100, "days": 30, "seed": 7},
    },
    "ClockAdvance": {
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 34_560_000},
                       "to": {"type": "string", "format": "date-time"}},
        "example": {"seconds": 86400},
    },
    "JourneyDefinition": {**_DATA, "description": "a journey definition, the same document as "
                          "services/journeys/data/playbook/<key>.yaml (JSON, or YAML with a yaml Content-Type)"},
    "ScoringModelDefinition": {**_DATA, "description": "a scoring model, the same document as "
                               "services/scoring/data/model.yaml (JSON, or YAML with a yaml Content-Type)"},
    "ScoringPublish": {
        "type": "object", "required": ["version"],
        "properties": {"version": {"type": "integer", "minimum": 1, "maximum": limits.INT32_MAX},
                       "dry_run": {"type": "boolean"}},
        "example": {"version": 2, "dry_run": True},
    },
    "ProposalRequest": {
        "type": "object", "additionalProperties": False,
        "properties": {"plan": {"type": "string", "maxLength": 128,
                                "description": "a plan of services/crm_sync/data/proposals.yaml; empty: by its rules"},
                       "deal_id": {"type": "string", "maxLength": 128,
                                   "description": "the CRM deal it is for: one proposal per deal"}},
        "example": {"plan": "professional", "deal_id": "D-1042"},
    },
    "ProposalSend": {"type": "object", "maxProperties": 0, "description": "no fields: the proposal goes to its lead",
                     "example": {}},
    "DeliverabilityResume": {
        "type": "object", "required": ["provider"],
        "properties": {"provider": {"type": "string", "minLength": 1, "maxLength": 64}},
        "example": {"provider": "gmail"},
    },
    "DeliveryEvents": {
        "description": "delivery outcomes from a provider's webhook: our shape, a SendGrid-like list of events "
                       "(custom argument nurture_message_id), or an SES-like Bounce or Complaint notification "
                       "(our X-Nurture-Message among mail.headers)",
        "anyOf": [
            {"type": "object", "required": ["events"], "properties": {"events": {"type": "array", "items": {
                "type": "object", "properties": {
                    "message_id": {"type": "string"}, "recipient": {"type": "string"},
                    "kind": {"type": "string", "enum": ["delivered", "hard_bounce", "soft_bounce", "complaint"]},
                    "detail": {"type": "string"}}}}}},
            {"type": "array", "items": {"type": "object", "required": ["event"],
                                        "properties": {"event": {"type": "string"}, "email": {"type": "string"},
                                                       "nurture_message_id": {"type": "string"},
                                                       "status": {"type": "string"},
                                                       "reason": {"type": "string"}}}},
            {"type": "object", "required": ["notificationType"],
             "properties": {"notificationType": {"type": "string", "enum": ["Bounce", "Complaint"]},
                            "bounce": {"type": "object"}, "complaint": {"type": "object"},
                            "mail": {"type": "object"}}}],
        "example": {"events": [{"message_id": "m0123456789abcdef0123456789abcdef", "recipient": "ana@gmail.com",
                                "kind": "hard_bounce", "detail": "550 5.1.1 no such user"}]},
    },
    "TemplateDraft": {
        "type": "object", "required": ["subject", "body", "text"],
        "properties": {"subject": _STRING, "preheader": _STRING, "body": _STRING, "text": _STRING,
                       "variants": {"type": "object", "maxProperties": 8, "additionalProperties": {
                           "type": "object", "properties": {"subject": _STRING, "preheader": _STRING,
                                                            "intro": _STRING,
                                                            "weight": {"type": "number", "exclusiveMinimum": 0,
                                                                       "maximum": 1000}}}}},
        "example": {"subject": "Hi {{ first_name }}", "preheader": "Your next step",
                    "body": "<mjml><mj-body><mj-section><mj-column><mj-text>Hi {{ first_name }}</mj-text>"
                            "<mj-button href=\"{{ cta_url }}\">Start</mj-button><mj-text>"
                            "<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> {{ postal_address }}</mj-text>"
                            "</mj-column></mj-section></mj-body></mjml>",
                    "text": "Hi {{ first_name }}\n{{ cta_url }}\nUnsubscribe: {{ unsubscribe_url }}\n"
                            "{{ postal_address }}\n",
                    "variants": {"b": {"subject": "{{ first_name }}, one step left", "weight": 1}}},
    },
    "TemplatePublish": {
        "type": "object", "required": ["version"],
        "properties": {"version": {"type": "integer", "minimum": 1, "maximum": limits.INT32_MAX}},
        "example": {"version": 2},
    },
    "TemplateTestSend": {
        "type": "object", "required": ["to"],
        "properties": {"to": {"type": "string", "maxLength": 320}, "lead_id": {"type": "string", "maxLength": 128},
                       "version": {"type": "integer", "minimum": 0, "maximum": limits.INT32_MAX}},
        "example": {"to": "qa@example.com", "lead_id": "ana", "version": 2},
    },
    "SegmentCopyDraft": {
        "type": "object", "required": ["label"],
        "properties": {"label": {"type": "string", "minLength": 1, "maxLength": 60},
                       "intro": {"type": "string", "maxLength": 50_000, "description": "Jinja2, the lead's variables"},
                       "recommended_content": {"type": "array", "maxItems": 3, "items": {
                           "type": "object", "required": ["title", "path"],
                           "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 60},
                                          "path": {"type": "string", "minLength": 1, "maxLength": 400}}}}},
        "example": {"label": "Student",
                    "intro": "{% if attributes.study_level %}As a {{ attributes.study_level }} student{% else %}"
                             "As a student{% endif %}, the right study route opens the door to staying after.",
                    "recommended_content": [{"title": "Compare study visas", "path": "/guides/study-visas"}]},
    },
    "Readiness": {"type": "object", "required": ["services"],
                  "properties": {"services": {"type": "object", "additionalProperties": {
                      "type": "object", "properties": {"address": {"type": "string"}, "status": {"type": "string"}}}}}},
}

SCHEMAS.update(tracking_openapi.SCHEMAS)

# What each status means here, from the contract's Conventions.
_WHY = {400: "malformed (not JSON, a NUL in the URL)", 401: "missing or wrong API key",
        403: "forbidden", 404: "not found", 409: "conflict", 413: "body too large",
        422: "well-formed but invalid (every problem listed in details.fields)",
        429: "rate limited (see Retry-After)", 503: "a service behind the gateway is down (see Retry-After)"}

# Request bodies: (schema, required).
_BODIES: dict[tuple[str, str], tuple[str, bool]] = {
    ("post", "/v1/leads"): ("LeadInput", True),
    ("patch", "/v1/leads/{lead_id}"): ("LeadInput", True),
    ("post", "/v1/events"): ("EventInput", True),
    ("post", "/v1/events:batch"): ("BatchInput", True),
    ("put", "/v1/journeys/{key}"): ("JourneyDefinition", True),
    ("post", "/v1/journeys/{key}/publish"): ("Publish", True),
    ("post", "/v1/simulations"): ("Simulation", True),
    ("post", "/v1/admin/clock/advance"): ("ClockAdvance", True),
    ("put", "/v1/scoring/model"): ("ScoringModelDefinition", True),
    ("post", "/v1/scoring/model/publish"): ("ScoringPublish", True),
    ("post", "/v1/leads/{lead_id}/proposals"): ("ProposalRequest", True),
    ("post", "/v1/proposals/{proposal_id}/send"): ("ProposalSend", True),
    ("post", "/v1/deliverability/resume"): ("DeliverabilityResume", True),
    ("post", "/v1/deliverability/events"): ("DeliveryEvents", True),
    **tracking_openapi.BODIES,
    ("put", "/v1/templates/{key}"): ("TemplateDraft", True),
    ("post", "/v1/templates/{key}/publish"): ("TemplatePublish", True),
    ("post", "/v1/templates/{key}/test-send"): ("TemplateTestSend", True),
    ("put", "/v1/templates/segments/{segment}"): ("SegmentCopyDraft", True),
    ("post", "/v1/templates/segments/{segment}/publish"): ("TemplatePublish", True),
}
# Writes that take no body: an action named by its path alone.
BODYLESS = frozenset({("post", "/v1/journeys/{key}/archive"), ("post", "/v1/journeys/{key}/unarchive")})
_PUBLIC = ("/healthz", "/readyz", "/t/", "/u/", "/p/")


_COUNTS: JsonObject = {m: {"type": "integer", "minimum": 0}
           for m in ("sent", "delivered", "hard_bounced", "soft_bounced", "complaints")}
_DELIVERABILITY_ROW: JsonObject = {
    "type": "object", "required": [*_COUNTS, "delivery_rate", "hard_bounce_rate", "soft_bounce_rate", "complaint_rate"],
    "properties": {**_COUNTS, **{r: {"type": ["number", "null"], "description": "null over nothing"} for r in (
        "delivery_rate", "hard_bounce_rate", "soft_bounce_rate", "complaint_rate")}}}
# Report bodies documented beyond "an object" (docs/API.md "Analytics").
_ANALYTICS_SCHEMAS: dict[str, JsonObject] = {
    "/v1/analytics/deliverability": {
        "type": "object", "required": ["totals", "by_domain", "by_provider", "points", "interval"],
        "properties": {
            "totals": _DELIVERABILITY_ROW,
            "by_domain": {"type": "array", "items": {**_DELIVERABILITY_ROW, "required": [
                "domain", *_DELIVERABILITY_ROW["required"]], "properties": {
                "domain": {"type": "string"}, **_DELIVERABILITY_ROW["properties"]}}},
            "by_provider": {"type": "array", "items": {**_DELIVERABILITY_ROW, "required": [
                "provider", *_DELIVERABILITY_ROW["required"]], "properties": {
                "provider": {"type": "string", "description": "messaging's deliverability.yaml name, or other"},
                **_DELIVERABILITY_ROW["properties"]}}},
            "points": {"type": "array", "items": {"type": "object", "required": ["t", *_COUNTS], "properties": {
                "t": {"type": "string", "format": "date", "description": "the day, or the Monday of the week"},
                **_COUNTS}}},
            "interval": {"type": "string", "enum": ["day", "week"]}}},
}


def _error(status: int) -> JsonObject:
    response: JsonObject = {"description": _WHY.get(status, "error"),
                                "content": {JSON: {"schema": {"$ref": REF + "Error"}}}}
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _statuses(method: str, path: str, keyed: bool) -> list[int]:
    """The error statuses an operation can answer."""
    out = [400, 404, 422]  # 400: a NUL in the URL or a bad Content-Length, on any route
    if keyed:
        out += [401, 429]
    if method in ("post", "put", "patch"):
        out += [409, 413]
    if path not in ("/healthz",):
        out.append(503)
    return sorted(set(out))


def build_document(app: FastAPI) -> JsonObject:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    clash = set(schemas) & set(SCHEMAS)
    if clash:  # a route's body type named like a schema of ours: one would silently replace the other
        raise RuntimeError(f"response body types named like hand-written schemas: {', '.join(sorted(clash))}")
    schemas.update(copy.deepcopy(SCHEMAS))
    components["securitySchemes"] = {"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "Authorization: Bearer <api key>. The scheme is case-insensitive (RFC 7235): "
                       "bearer and BEARER are accepted too; a wrong or missing key answers 401."}}
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            keyed = path.startswith("/v1/")
            op["security"] = [{"bearerAuth": []}] if keyed else []
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's own validation shape: ours is the Error schema
            for status in _statuses(method, path, keyed):
                responses[str(status)] = _error(status)
            body = _BODIES.get((method, path))
            if body is not None:
                name, required = body
                content: JsonObject = {JSON: {"schema": {"$ref": REF + name},
                                                  "example": SCHEMAS[name].get("example", {})}}
                if name in ("JourneyDefinition", "ScoringModelDefinition"):
                    content["application/yaml"] = {"schema": {"$ref": REF + name}}
                op["requestBody"] = {"required": required, "content": content}
    _special_cases(doc)
    tracking_openapi.complete(doc, _error)
    return doc


def _special_cases(doc: JsonObject) -> None:
    paths = doc["paths"]
    pixel = paths["/t/o/{token}"]["get"]
    pixel["responses"] = {"200": {"description": "a 1x1 transparent GIF, whether or not the token verifies",
                                  "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}},
                          "400": _error(400), "422": _error(422)}
    click = paths["/t/c/{token}"]["get"]
    click["responses"] = {
        "302": {"description": "recorded; redirects to the destination signed into the token",
                "headers": {"Location": {"schema": {"type": "string"}}}},
        "400": _error(400), "422": _error(422), "503": _error(503)}
    html = {"text/html": {"schema": {"type": "string"}}}
    for method in ("get", "post"):
        op = paths["/u/{token}"][method]
        op["responses"] = {"200": {"description": "the page", "content": html},
                           "400": {"description": "the link is not valid (a page saying so), or a malformed "
                                                  "request", "content": {**html, **_error(400)["content"]}},
                           "422": _error(422), "503": _error(503)}
    proposal = paths["/p/{token}"]["get"]
    proposal["responses"] = {"200": {"description": "the proposal document", "content": html},
                             "400": _error(400),
                             "404": {"description": "no proposal has this link (a page saying so)", "content": html},
                             "422": _error(422), "503": _error(503)}
    paths["/u/{token}"]["post"]["requestBody"] = {"required": False, "content": {
        "application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": {"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]},
                                             "scope": {"type": "string",
                                                       "enum": ["nurture", "transactional", "all"]}}},
            "example": {"List-Unsubscribe": "One-Click"}}}}
    ready = paths["/readyz"]["get"]["responses"]
    readiness = {JSON: {"schema": {"$ref": REF + "Readiness"}}}
    ready["200"]["content"] = readiness
    ready["503"] = {"description": "not every service is serving; the same body",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}}, "content": readiness}
    for path in ("/v1/journeys/{key}", "/v1/templates/{key}", "/v1/scoring/model", "/v1/templates/segments/{segment}"):
        if path in paths:
            # The body's schema is the route's (gateway.shapes); an object where it names none.
            stored = paths[path]["put"]["responses"].get("201", {})
            stored.setdefault("content", {JSON: {"schema": {"type": "object"}}})
            stored.update(description="a new draft version was stored",
                          headers={"Location": {"schema": {"type": "string"}}})
            paths[path]["put"]["responses"]["201"] = stored
    created = paths["/v1/leads"]["post"]["responses"]["201"]
    paths["/v1/leads"]["post"]["responses"]["200"] = {"description": "an existing lead was updated",
                                                      "content": created["content"]}
    for path in [p for p in paths if p.startswith("/v1/analytics/")]:
        paths[path]["get"]["responses"]["200"] = {
            "description": "the report as JSON; with format=csv, its rows as CSV (RFC 4180)",
            "content": {JSON: {"schema": _ANALYTICS_SCHEMAS.get(path, {"type": "object"})},
                        "text/csv": {"schema": {"type": "string"}}}}


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""
    def openapi() -> JsonObject:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
