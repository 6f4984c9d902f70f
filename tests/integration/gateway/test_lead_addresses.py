"""Email addresses at lead creation through the gateway and a real scoring service: refused with a 422
naming the problem when they are not addresses, stored normalised, role and disposable ones flagged in
`attributes.email_flags` (addresses.yaml), never dropped."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from nurture.service import Running

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


@pytest.mark.parametrize("address", ["ana", "ana@", "ana@@example.com", "a b@example.com", "ana.@example.com",
                                     "ana@example", "ana@reject.invalid", "ana@localhost"])
async def test_an_address_that_is_none_is_a_422(api: tuple[httpx.AsyncClient, FastAPI, Running], address: str) -> None:
    client, _, _ = api
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "l-1", "email": address, "segment": "nope"})
    assert r.status_code == 422, r.text
    fields = r.json()["error"]["details"]["fields"]
    assert fields["email"].startswith("is not an email address: ") and "segment" in fields   # every problem
    assert (await client.get("/v1/leads/l-1", headers=AUTH)).status_code == 404


async def test_addresses_are_normalised_and_flagged_not_dropped(
        api: tuple[httpx.AsyncClient, FastAPI, Running]) -> None:
    client, _, _ = api
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "l-1", "email": "Ana@Example.COM"})
    assert r.status_code == 201 and r.json()["email"] == "Ana@example.com"
    assert "email_flags" not in r.json()["attributes"]
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "l-2", "email": "INFO@borderbridge-partner.com",
                                                          "attributes": {"email_flags": ["forged"], "x": 1}})
    assert r.status_code == 201 and r.json()["attributes"] == {"x": 1, "email_flags": ["role"]}
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "l-3", "email": "sales@Mailinator.com"})
    assert r.json()["attributes"]["email_flags"] == ["role", "disposable"]
    # The flags follow the address: a new ordinary address clears them.
    r = await client.patch("/v1/leads/l-3", headers=AUTH, json={"email": "bo@example.com"})
    assert r.status_code == 200 and "email_flags" not in r.json()["attributes"]
    # The same mailbox with the domain in another case is the same lead's address (not a second lead).
    r = await client.post("/v1/leads", headers=AUTH, json={"id": "l-4", "email": "ana@EXAMPLE.com"})
    assert r.status_code == 409, r.text
