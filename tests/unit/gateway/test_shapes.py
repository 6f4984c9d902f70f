"""gateway.shapes: a route's return type documents its body and does not rewrite it."""

from __future__ import annotations

from typing import NotRequired

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import Response

from gateway.shapes import DocumentedRoute, TypedDict

pytestmark = pytest.mark.anyio


class Price(TypedDict):
    amount: float
    currency: str
    note: NotRequired[str]


def _app() -> FastAPI:
    router = APIRouter(route_class=DocumentedRoute)

    @router.get("/price")
    async def price() -> Price:
        # An integer in a float field, keys not in the type's order: sent as built.
        return {"currency": "CAD", "amount": 12}

    @router.post("/made", status_code=201)
    async def made() -> Price:
        return {"amount": 1.5, "currency": "CAD", "note": "new"}

    @router.get("/report")
    async def report() -> Response | dict[str, int]:
        return {"rows": 0}

    app = FastAPI()
    app.include_router(router)
    return app


async def test_the_body_is_sent_as_the_handler_built_it() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        price = await client.get("/price")
        made = await client.post("/made")
        report = await client.get("/report")
    # FastAPI's own response model would send {"amount":12.0,"currency":"CAD"}.
    assert price.content == b'{"currency":"CAD","amount":12}'
    assert made.status_code == 201 and made.json() == {"amount": 1.5, "currency": "CAD", "note": "new"}
    assert report.json() == {"rows": 0}


def test_the_return_type_is_the_success_status_schema() -> None:
    doc = _app().openapi()
    ref = {"$ref": "#/components/schemas/Price"}
    assert doc["paths"]["/price"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == ref
    assert doc["paths"]["/made"]["post"]["responses"]["201"]["content"]["application/json"]["schema"] == ref
    price = doc["components"]["schemas"]["Price"]
    assert price["required"] == ["amount", "currency"]
    assert price["properties"]["amount"]["type"] == "number"
    # A route that may answer a Response (CSV) documents no JSON shape.
    assert doc["paths"]["/report"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {}
