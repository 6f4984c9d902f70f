"""The proposal routes' answers to what a new user sends. POST /v1/proposals/{id}/send takes no fields, so a
caller may send no body at all (`curl -XPOST`), as docs/API.md writes it: that reads as `{}` and reaches
crm_sync (a real one here: an unknown proposal is its 404), where the gateway had answered 400 "a JSON body
is required"; a field is still refused. The proposals of an unknown lead are a 404."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from nurture.service import Running
from nurture.settings import Settings
from tests.conftest import mesh_channel, start_service

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


async def test_sending_a_proposal_needs_no_body(api: tuple[httpx.AsyncClient, FastAPI, Running],
                                                settings: Settings) -> None:
    client, app, _ = api
    crm_sync = await start_service("crm_sync", settings)
    app.state.mesh.channels["crm_sync"] = mesh_channel(crm_sync.address)
    try:
        for body in (b"", b"  ", b"{}"):
            r = await client.post("/v1/proposals/p-unknown/send", content=body, headers=AUTH)
            assert r.status_code == 404, (body, r.text)
            assert r.json()["error"]["code"] == "not_found"
        refused = await client.post("/v1/proposals/p-unknown/send", json={"to": "x@example.com"}, headers=AUTH)
        assert refused.status_code == 422
        assert (await client.post("/v1/proposals/p-unknown/send", content=b"{nope", headers=AUTH)).status_code == 400
    finally:
        await crm_sync.stop(grace=0.2)


async def test_the_proposals_of_an_unknown_lead_are_404(api: tuple[httpx.AsyncClient, FastAPI, Running],
                                                       settings: Settings) -> None:
    """Like its timeline and messages, where it answered 200 with an empty list; a known lead's is a list."""
    client, app, _ = api
    crm_sync = await start_service("crm_sync", settings)
    app.state.mesh.channels["crm_sync"] = mesh_channel(crm_sync.address)
    try:
        missing = await client.get("/v1/leads/nobody/proposals", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        made = await client.post("/v1/leads", json={"id": "ana", "email": "ana@example.com"}, headers=AUTH)
        assert made.status_code == 201
        known = await client.get("/v1/leads/ana/proposals", headers=AUTH)
        assert known.status_code == 200 and known.json() == {"proposals": []}
    finally:
        await crm_sync.stop(grace=0.2)
