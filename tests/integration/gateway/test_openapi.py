"""/openapi.json describes the API as it is: request bodies with schemas and examples, the bearer
scheme on keyed routes, our error shape on every error status, the real media types."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.openapi import BODYLESS
from nurture.settings import load_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
async def doc() -> dict[str, Any]:
    app = create_app(load_settings(environ={}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


async def test_every_json_write_declares_its_body_with_a_schema_and_an_example(doc) -> None:
    writes = [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()
              if method in ("post", "put", "patch") and not path.startswith("/u/")]
    assert {(p, m) for p, m, _ in writes} >= {("/v1/leads", "post"), ("/v1/leads/{lead_id}", "patch"),
                                              ("/v1/events", "post"), ("/v1/events:batch", "post")}
    for path, method, op in writes:
        body = op.get("requestBody")
        if (method, path) in BODYLESS:   # an action named by its path alone: declared without a body
            assert body is None, (method, path)
            continue
        assert body and body["required"], (method, path)
        media = body["content"]["application/json"]
        assert media["schema"]["$ref"].startswith("#/components/schemas/") and "example" in media, (method, path)
    event = doc["components"]["schemas"]["EventInput"]
    assert event["required"] == ["lead_id", "type"]


async def test_keyed_routes_name_the_bearer_scheme_and_public_ones_none(doc) -> None:
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearerAuth": []}] and "401" in op["responses"], (method, path)
            else:
                assert op["security"] == [], (method, path)


async def test_errors_have_our_shape_and_statuses_are_the_contracts(doc) -> None:
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "Error" in schemas
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and "application/json" in response.get("content", {}):
                    if path == "/readyz":
                        continue
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if path.startswith("/v1/"):
                assert {"400", "401", "422", "429", "503"} <= set(op["responses"]), (method, path)
    assert {"409", "413"} <= set(doc["paths"]["/v1/leads"]["post"]["responses"])
    assert "Retry-After" in doc["paths"]["/v1/leads"]["get"]["responses"]["503"]["headers"]


async def test_media_types_are_the_real_ones(doc) -> None:
    pixel = doc["paths"]["/t/o/{token}"]["get"]["responses"]["200"]["content"]
    assert list(pixel) == ["image/gif"]
    assert "302" in doc["paths"]["/t/c/{token}"]["get"]["responses"]
    assert "text/html" in doc["paths"]["/u/{token}"]["get"]["responses"]["200"]["content"]
    assert "application/x-www-form-urlencoded" in doc["paths"]["/u/{token}"]["post"]["requestBody"]["content"]
    assert "application/yaml" in doc["paths"]["/v1/journeys/{key}"]["put"]["requestBody"]["content"]


def _success(doc: dict[str, Any], path: str, method: str, status: str = "200") -> dict[str, Any]:
    """The success body's schema of an operation, its $ref followed."""
    schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    name = schema["$ref"].removeprefix("#/components/schemas/")
    found: dict[str, Any] = doc["components"]["schemas"][name]
    return found


async def test_json_bodies_are_described_field_by_field(doc) -> None:
    """Each body's schema is its handler's return type (gateway.shapes): every field it always sends."""
    lead = _success(doc, "/v1/leads/{lead_id}", "get")
    assert {"id", "email", "score", "grade", "lifecycle_stage", "journeys", "created_at",
            "subscriptions"} <= set(lead["required"])
    assert _success(doc, "/v1/leads", "post", "201") == _success(doc, "/v1/leads", "post", "200") == lead
    page = _success(doc, "/v1/leads", "get")
    assert page["required"] == ["items", "next_cursor"]
    timeline = _success(doc, "/v1/leads/{lead_id}/timeline", "get")
    assert timeline["required"] == ["items"] and "incomplete" in timeline["properties"]
    assert _success(doc, "/v1/leads/{lead_id}", "delete")["required"] == ["id", "erased", "removed"]
    assert _success(doc, "/v1/events", "post", "202")["required"] == ["event_id", "duplicate"]
    assert _success(doc, "/v1/events:batch", "post", "202")["required"] == ["accepted", "duplicates", "event_ids",
                                                                            "rejected"]
    journey = _success(doc, "/v1/journeys/{key}", "get")
    assert {"key", "published_version", "definition", "versions"} <= set(journey["required"])
    assert _success(doc, "/v1/journeys/{key}", "put")["required"] == ["key", "valid", "problems"]  # validate_only
    assert _success(doc, "/v1/journeys/{key}", "put", "201")["required"] == ["key", "version", "status"]
    template = _success(doc, "/v1/templates/{key}", "get")
    assert {"key", "subject", "used_by", "versions", "variables", "variants"} <= set(template["required"])
    assert _success(doc, "/v1/templates/{key}", "put", "201")["required"] == ["key", "version", "status"]
    assert _success(doc, "/v1/scoring/model", "put", "201")["required"] == ["version", "status"]
    proposal = _success(doc, "/v1/proposals/{proposal_id}", "get")
    assert "html" in proposal["properties"] and "html" not in proposal["required"]
    assert _success(doc, "/v1/leads/{lead_id}/proposals", "post", "200") == _success(
        doc, "/v1/leads/{lead_id}/proposals", "post", "201")
    assert _success(doc, "/v1/deliverability", "get")["required"] == [
        "dkim", "dkim_records", "bounce_smtp", "bounce_domain", "window_days", "rates", "paused", "warmup"]
    assert "template_version" in doc["components"]["schemas"]["Message"]["required"]
    assert _success(doc, "/v1/admin/stats", "get")["required"] == ["services"]
    assert _success(doc, "/healthz", "get")["required"] == ["status"]
    assert _success(doc, "/t/v1/collect", "post", "202")["required"] == ["accepted", "duplicates", "rejected"]
    assert _success(doc, "/t/v1/identify", "post")["required"] == ["identified", "merged"]
