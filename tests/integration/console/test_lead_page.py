"""A lead's page over the real scoring and journeys services: profile, journeys, the timeline with its
reasons (`data-kind` hooks) and "why not" for a chosen journey."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from nurture.settings import Settings
from tests.integration.console.conftest import KEYS, sign_in
from tests.integration.console.mesh import console_mesh

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with console_mesh(settings, with_scoring=True) as mesh:
        yield mesh.client


async def test_lead_page_timeline_and_why_not(client: httpx.AsyncClient) -> None:
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/leads/f-5", params={"why_not": "skilled_professional"})
    assert page.status_code == 200, page.text
    text = html.unescape(page.text)
    # The timeline as the API gives it, each entry with its kind, and the exit with its reason.
    api = await client.get("/v1/leads/f-5/timeline", headers={"Authorization": f"Bearer {KEYS['viewer']}"})
    assert re.findall(r'<li data-kind="([^"]+)"', page.text) == [i["kind"] for i in api.json()["items"]]
    exits = re.findall(r'<li data-kind="journey" data-type="exited">.*?<span class="summary">(.*?)</span>\s*'
                       r'<span class="reason">(.*?)</span>', page.text, re.S)
    assert ("family: exited: unsubscribed", "rule: unsubscribed") in exits
    assert '<tr data-journey="family">' in page.text
    # Why not: a family does not meet the skilled professionals' entry, and the page says which clause.
    row = re.search(r'<tr data-rule="segment_skilled_professional" data-met="no">(.*?)</tr>', text, re.S)
    assert row is not None and "lead.segment is 'family', needs eq 'skilled_professional'" in row.group(1)
    own = await client.get("/console/leads/f-5", params={"why_not": "family"})
    assert 'data-rule="segment_family" data-met="yes"' in own.text
    assert "exited at" in own.text


async def test_the_profile_reads_as_words_not_python(client: httpx.AsyncClient) -> None:
    """Consent and list attributes read as a marketer would write them: "email: yes", "CA, AU", not the
    Python values the page printed ("email: True", "['CA', 'AU']")."""
    created = await client.post("/v1/leads", headers={"Authorization": f"Bearer {KEYS['editor']}"}, json={
        "id": "ana", "email": "ana@example.com", "consent": {"email": True, "sms": False},
        "attributes": {"profession": "nurse", "countries_of_interest": ["CA", "AU"]}})
    assert created.status_code == 201, created.text
    await sign_in(client, KEYS["viewer"])
    page = await client.get("/console/leads/ana")
    assert page.status_code == 200, page.text
    profile = html.unescape(re.sub(r"<[^>]+>", " ", re.search(r'<section class="profile">(.*?)</section>',
                                                                page.text, re.S).group(1)))  # type: ignore[union-attr]
    words = " ".join(profile.split())
    assert "email: yes" in words and "sms: no" in words, words
    assert "countries_of_interest: CA, AU" in words, words
    assert not re.search(r"\bTrue\b|\bFalse\b|\bNone\b|\['", words), words


async def test_a_lead_without_a_name_is_headed_by_its_email_else_its_id(client: httpx.AsyncClient) -> None:
    """The heading named the lead by first and last name only: a lead without them had an empty one."""
    editor = {"Authorization": f"Bearer {KEYS['editor']}"}
    for body in ({"id": "noname", "email": "bo@example.com"}, {"id": "bare"}):
        created = await client.post("/v1/leads", headers=editor, json=body)
        assert created.status_code == 201, created.text
    await sign_in(client, KEYS["viewer"])

    def heading(page: httpx.Response) -> str:
        found = re.search(r"<h1>(.*?)<small>", page.text, re.S)
        assert found is not None, page.text
        return html.unescape(found.group(1)).strip()

    assert heading(await client.get("/console/leads/noname")) == "bo@example.com"
    assert heading(await client.get("/console/leads/bare")) == "bare"
