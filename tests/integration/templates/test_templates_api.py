"""Templates as versioned data through the gateway, over real scoring, messaging and journeys services:
list with the journeys that use each, drafts refused with every problem, publish, the next send using the
new version (and recording it), previews for a lead, test sends, and the roles (viewer reads, editor writes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.settings import Settings
from tests.conftest import mesh_channel
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

pytestmark = pytest.mark.anyio
KEY = "family.email_01"


@pytest.fixture
async def mesh(settings: Settings, tmp_path: Path) -> AsyncIterator[TemplatesMesh]:
    async with templates_mesh(settings, tmp_path) as m:
        yield m


async def content_of(m: TemplatesMesh, key: str = KEY) -> dict[str, Any]:
    r = await m.client.get(f"/v1/templates/{key}", headers=m.headers("viewer"))
    assert r.status_code == 200, r.text
    return {k: r.json()[k] for k in ("subject", "preheader", "body", "text", "variants")}


async def test_templates_are_listed_with_their_versions_and_the_journeys_that_use_them(mesh: TemplatesMesh) -> None:
    r = await mesh.client.get("/v1/templates", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    items = {i["key"]: i for i in r.json()["items"]}
    assert items[KEY]["published_version"] == 1 and items[KEY]["latest_version"] == 1
    assert items[KEY]["used_by"] == ["family"]
    assert "webinar" in items["webinar.email_01"]["used_by"]
    one = (await mesh.client.get(f"/v1/templates/{KEY}", headers=mesh.headers("viewer"))).json()
    assert one["body"].lstrip().startswith("<mjml") and "{{ unsubscribe_url }}" in one["text"]
    assert one["versions"] == [{"version": 1, "status": "published", "source": "seed",
                                "created_at": one["versions"][0]["created_at"],
                                "published_at": one["versions"][0]["published_at"]}]
    assert {"first_name", "segment", "stage", "countries", "track"} <= {v["name"] for v in one["variables"]}
    assert (await mesh.client.get("/v1/templates/nope.email_01", headers=mesh.headers("viewer"))).status_code == 404


async def test_a_draft_with_problems_is_refused_with_every_problem_and_nothing_is_stored(mesh: TemplatesMesh) -> None:
    draft = await content_of(mesh)
    draft["subject"] = "Hello {{ favourite_colour }}"
    draft["body"] = draft["body"].replace("{{ postal_address }}", "").replace(
        "</mj-body>", '<mj-section><mj-column><mj-text><a href="https://evil.example/x">x</a>'
                      "</mj-text></mj-column></mj-section></mj-body>")
    draft["text"] = draft["text"].replace("{{ unsubscribe_url }}", "")
    r = await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"), json=draft)
    assert r.status_code == 422, r.text
    problems = r.json()["error"]["details"]["problems"]
    assert any("unknown variable 'favourite_colour'" in p for p in problems)
    assert any(p.startswith("body: no postal address") for p in problems)
    assert any(p.startswith("text: no unsubscribe link") for p in problems)
    assert any("link not tracked: 'https://evil.example/x'" in p for p in problems)
    broken = {**await content_of(mesh), "body": "<mjml><mj-body><mj-section>"}
    r = await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"), json=broken)
    assert r.status_code == 422 and any("MJML does not compile" in p for p in r.json()["error"]["details"]["problems"])
    r = await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"), json={"subject": 3})
    assert r.status_code == 422
    r = await mesh.client.put("/v1/templates/Bad Key", headers=mesh.headers("editor"), json=await content_of(mesh))
    assert r.status_code == 422 and any(p.startswith("key:") for p in r.json()["error"]["details"]["problems"])
    assert [v["version"] for v in (await mesh.client.get(f"/v1/templates/{KEY}",
                                                         headers=mesh.headers("viewer"))).json()["versions"]] == [1]


async def test_viewers_read_and_editors_write(mesh: TemplatesMesh) -> None:
    draft = await content_of(mesh)
    assert (await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("viewer"),
                                  json=draft)).status_code == 403
    r = await mesh.client.put(f"/v1/templates/{KEY}?validate_only=true", headers=mesh.headers("editor"), json=draft)
    assert r.status_code == 200 and r.json() == {"key": KEY, "valid": True, "problems": []}
    r = await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"), json=draft)
    assert r.status_code == 201 and r.json() == {"key": KEY, "version": 2, "status": "draft"}
    assert (await mesh.client.post(f"/v1/templates/{KEY}/publish", headers=mesh.headers("viewer"),
                                   json={"version": 2})).status_code == 403
    assert (await mesh.client.post(f"/v1/templates/{KEY}/test-send", headers=mesh.headers("viewer"),
                                   json={"to": "qa@example.com"})).status_code == 403
    assert (await mesh.client.post(f"/v1/templates/{KEY}/publish", headers=mesh.headers("editor"),
                                   json={"version": 9})).status_code == 404
    assert (await mesh.client.post(f"/v1/templates/{KEY}/publish", headers=mesh.headers("editor"),
                                   json={})).status_code == 422


async def test_publish_makes_the_next_send_use_the_new_version_and_sends_record_it(mesh: TemplatesMesh) -> None:
    await mesh.add_lead("ana")
    first = await mesh.send("ana", KEY, occurrence=0)
    draft = await content_of(mesh)
    draft["subject"] = "Version two for {{ first_name }}"
    draft["variants"] = {}     # the seed's A/B variant b has a subject of its own
    draft["body"] = draft["body"].replace("Warm regards,", "Kind regards,")
    version = (await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"), json=draft)).json()
    assert version["version"] == 2
    second = await mesh.send("ana", KEY, occurrence=1)      # a draft is not live
    r = await mesh.client.post(f"/v1/templates/{KEY}/publish", headers=mesh.headers("editor"), json={"version": 2})
    assert r.status_code == 200 and r.json() == {"key": KEY, "version": 2, "previous_version": 1}
    third = await mesh.send("ana", KEY, occurrence=2)
    mails = {m["X-Nurture-Message"]: m for m in mesh.mails()}
    assert set(mails) == {first, second, third}
    assert "Version two" not in str(mails[first]["Subject"]) + str(mails[second]["Subject"])
    assert str(mails[third]["Subject"]) == "Version two for Ana"
    html = mails[third].get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Kind regards," in html and "Warm regards," not in html
    assert mails[third]["List-Unsubscribe"] and "https://nurture.example/t/c/" in html
    messages = (await mesh.client.get("/v1/leads/ana/messages", headers=mesh.headers("viewer"))).json()["items"]
    assert [m["template_version"] for m in messages] == [2, 1, 1]   # newest first
    versions = (await mesh.client.get(f"/v1/templates/{KEY}", headers=mesh.headers("viewer"))).json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "superseded"), (2, "published")]


async def test_preview_for_a_lead_and_a_test_send_marked_as_a_test(mesh: TemplatesMesh) -> None:
    await mesh.add_lead("omar", first_name="Omar")
    r = await mesh.client.get(f"/v1/templates/{KEY}/preview?lead_id=omar&width=phone", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 1 and body["viewport_px"] == 375 and "Hi Omar," in body["html"]
    assert "@media" in body["html"] and "Hi Omar," in body["text"]   # responsive: the column rules stay
    assert "/t/c/" not in body["html"]                                # a preview records nothing
    assert (await mesh.client.get(f"/v1/templates/{KEY}/preview?width=tablet",
                                  headers=mesh.headers("viewer"))).status_code == 422
    assert (await mesh.client.get(f"/v1/templates/{KEY}/preview?lead_id=nobody",
                                  headers=mesh.headers("viewer"))).status_code == 404
    # A variant the version does not have is named, not shown as the default (this run's find).
    r = await mesh.client.get(f"/v1/templates/{KEY}/preview?variant=zzz", headers=mesh.headers("viewer"))
    assert r.status_code == 422 and "'zzz' is not a variant" in r.text, r.text
    for name in (await mesh.client.get(f"/v1/templates/{KEY}", headers=mesh.headers("viewer"))).json()["variants"]:
        r = await mesh.client.get(f"/v1/templates/{KEY}/preview?variant={name}", headers=mesh.headers("viewer"))
        assert r.status_code == 200 and r.json()["variant"] == name, r.text
    r = await mesh.client.post(f"/v1/templates/{KEY}/test-send", headers=mesh.headers("editor"),
                               json={"to": "qa@example.com", "lead_id": "omar"})
    assert r.status_code == 200, r.text
    assert r.json()["test"] is True and r.json()["version"] == 1
    (mail,) = mesh.mails()
    assert str(mail["To"]) == "qa@example.com" and str(mail["Subject"]).startswith("[TEST] ")
    assert mail["X-Nurture-Test"] == "1" and mail["X-Nurture-Template-Version"] == "1"
    assert (await mesh.client.get("/v1/leads/omar/messages", headers=mesh.headers("viewer"))).json()["items"] == []
    r = await mesh.client.post(f"/v1/templates/{KEY}/test-send", headers=mesh.headers("editor"),
                               json={"to": "not an address\r\nBcc: x@example.com"})
    assert r.status_code == 422
    for bad in ("qa@example.com, x@example.com", "qa@", "@example.com"):  # one address, whole
        r = await mesh.client.post(f"/v1/templates/{KEY}/test-send", headers=mesh.headers("editor"), json={"to": bad})
        assert r.status_code == 422, (bad, r.text)
    # Any address a lead may have (checked alike at lead creation), one beyond ASCII too.
    r = await mesh.client.post(f"/v1/templates/{KEY}/test-send", headers=mesh.headers("editor"),
                               json={"to": "zoë@exämple.de"})
    assert r.status_code == 200, r.text
    assert r.json()["to"] == "zoë@exämple.de"
    assert any("zoë@" in str(m["To"]) for m in mesh.mails())


async def test_a_new_journey_whose_templates_are_drafts_says_to_publish_them(mesh: TemplatesMesh) -> None:
    """A new user adding a journey as data (docs/API.md) first PUTs its templates (drafts), then the journey:
    the refusal must say the template has only a draft, not that it is missing (it was just stored)."""
    r = await mesh.client.get("/v1/journeys/cart_abandonment", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    journey = {**r.json()["definition"], "key": "cart_v2", "name": "Cart v2"}
    sends = [s["id"] for s in journey["steps"] if s["type"] == "send"]
    body = await content_of(mesh, "cart_abandonment.email_01")
    for step in sends[:-1]:
        r = await mesh.client.put(f"/v1/templates/cart_v2.{step}", headers=mesh.headers("editor"), json=body)
        assert r.status_code == 201, r.text
    r = await mesh.client.put("/v1/journeys/cart_v2", headers=mesh.headers("editor"), json=journey)
    assert r.status_code == 422, r.text
    problems = r.json()["error"]["details"]["problems"]
    assert f"step {sends[0]}: template 'cart_v2.{sends[0]}' has no published version (draft 1 exists: publish " \
           f"it first, POST /v1/templates/cart_v2.{sends[0]}/publish)" in problems
    assert f"step {sends[-1]}: missing template 'cart_v2.{sends[-1]}'" in problems   # never stored at all
    assert len(problems) == len(sends)
    r = await mesh.client.put(f"/v1/templates/cart_v2.{sends[-1]}", headers=mesh.headers("editor"), json=body)
    assert r.status_code == 201, r.text
    for step in sends:
        r = await mesh.client.post(f"/v1/templates/cart_v2.{step}/publish", headers=mesh.headers("editor"),
                                   json={"version": 1})
        assert r.status_code == 200, r.text
    r = await mesh.client.put("/v1/journeys/cart_v2", headers=mesh.headers("editor"), json=journey)
    assert r.status_code == 201 and r.json() == {"key": "cart_v2", "version": 1, "status": "draft"}, r.text


async def publish_a_copy(mesh: TemplatesMesh, key: str) -> None:
    """A new template `key` made through the API (PUT, publish) from the seeded one's content."""
    body = await content_of(mesh)
    body["variants"] = {}
    r = await mesh.client.put(f"/v1/templates/{key}", headers=mesh.headers("editor"), json=body)
    assert r.status_code == 201, r.text
    r = await mesh.client.post(f"/v1/templates/{key}/publish", headers=mesh.headers("editor"), json={"version": 1})
    assert r.status_code == 200, r.text


async def sent_details(mesh: TemplatesMesh, lead_id: str, key: str, occurrence: int = 0) -> dict[str, Any]:
    """Send `key` to the lead; what its timeline's message_sent item says of that message."""
    mid = await mesh.send(lead_id, key, occurrence)
    r = await mesh.client.get(f"/v1/leads/{lead_id}/timeline", headers=mesh.headers("viewer"))
    details: dict[str, Any] = next(i["details"] for i in r.json()["items"]
                                   if i["type"] == "message_sent" and i["details"].get("message_id") == mid)
    return details


async def test_a_template_made_through_the_api_is_about_its_journeys_topic_in_the_default_format(
        mesh: TemplatesMesh) -> None:
    """A new email added to the family journey as data (PUT, publish) is content like the catalog's: its
    sends carry the journey's topic and the default format, which analytics groups content by (the
    seed's "content performance by topic and format"); they carried neither, a row keyed ''."""
    await mesh.add_lead("ana")
    await publish_a_copy(mesh, "family.email_99")
    sent = {key: await sent_details(mesh, "ana", key) for key in ("family.email_99", KEY)}
    assert (sent[KEY]["topic"], sent[KEY]["format"]) == ("family_relocation", "newsletter")
    assert (sent["family.email_99"]["topic"], sent["family.email_99"]["format"]) == ("family_relocation", "newsletter")


async def test_a_template_of_a_journey_added_as_data_is_about_that_journey(mesh: TemplatesMesh) -> None:
    """A journey the catalog's topics do not name (added as data, as cart_v2 above) is its own topic:
    analytics by topic shows its emails under its key, not in a row keyed ''."""
    await mesh.add_lead("ben")
    await publish_a_copy(mesh, "cart_v2.email_01")
    sent = await sent_details(mesh, "ben", "cart_v2.email_01")
    assert (sent["topic"], sent["format"]) == ("cart_v2", "newsletter"), sent


async def _settle(mesh: TemplatesMesh, *services: str) -> None:
    for service in services:
        async with mesh_channel(mesh.settings.address_of(service)) as ch:
            await common_pb2_grpc.AdminStub(ch).Settle(common_pb2.SettleRequest(), timeout=60)


async def _engagement_by(mesh: TemplatesMesh, group_by: str) -> dict[str | None, dict[str, Any]]:
    r = await mesh.client.get("/v1/analytics/engagement", headers=mesh.headers("viewer"), params={
        "group_by": group_by, "from": "2026-01-01T00:00:00Z", "to": "2026-12-31T00:00:00Z"})
    assert r.status_code == 200, r.text
    return {row["group"]: row for row in r.json()["rows"]}


async def test_a_template_names_its_topic_and_format_and_its_sends_and_analytics_carry_them(
        settings: Settings, tmp_path: Path) -> None:
    """A new user's guide added to the family journey through the API could say neither what it is about
    nor that it is a guide: engagement by topic and format counted it as a family_relocation newsletter.
    The version names both; its sends (and an open of one, after a later version went live) carry them."""
    key = "family.costs_guide"
    async with templates_mesh(settings, tmp_path, extra=("analytics",)) as mesh:
        await mesh.add_lead("gia")
        body = {**await content_of(mesh), "variants": {}, "topic": "relocation_costs", "format": "guide"}
        r = await mesh.client.put(f"/v1/templates/{key}", headers=mesh.headers("editor"), json=body)
        assert r.status_code == 201, r.text
        shown = (await mesh.client.get(f"/v1/templates/{key}?version=1", headers=mesh.headers("viewer"))).json()
        assert (shown["topic"], shown["format"]) == ("relocation_costs", "guide")
        seeded = (await mesh.client.get(f"/v1/templates/{KEY}", headers=mesh.headers("viewer"))).json()
        assert (seeded["topic"], seeded["format"]) == ("family_relocation", "newsletter")   # the defaults, shown
        r = await mesh.client.post(f"/v1/templates/{key}/publish", headers=mesh.headers("editor"), json={"version": 1})
        assert r.status_code == 200, r.text
        sent = await sent_details(mesh, "gia", key)
        assert (sent["topic"], sent["format"]) == ("relocation_costs", "guide"), sent
        # Version 2 names neither: its sends take the defaults again, and version 1's message keeps its own.
        body = {k: v for k, v in body.items() if k not in ("topic", "format")}
        assert (await mesh.client.put(f"/v1/templates/{key}", headers=mesh.headers("editor"),
                                      json=body)).status_code == 201
        assert (await mesh.client.post(f"/v1/templates/{key}/publish", headers=mesh.headers("editor"),
                                       json={"version": 2})).status_code == 200
        shown = (await mesh.client.get(f"/v1/templates/{key}", headers=mesh.headers("viewer"))).json()
        assert (shown["version"], shown["topic"], shown["format"]) == (2, "family_relocation", "newsletter")
        later = await sent_details(mesh, "gia", key, occurrence=1)
        assert (later["topic"], later["format"]) == ("family_relocation", "newsletter"), later
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "gia", "type": "email_opened", "properties": {"message_id": sent["message_id"]}})
        assert r.status_code == 202, r.text
        await _settle(mesh, "scoring", "messaging", "scoring", "analytics")
        topics, formats = await _engagement_by(mesh, "topic"), await _engagement_by(mesh, "format")
        assert (topics["relocation_costs"]["sent"], topics["relocation_costs"]["opened"]) == (1, 1), topics
        assert (formats["guide"]["sent"], formats["guide"]["opened"]) == (1, 1), formats
        assert topics["family_relocation"]["sent"] == 1 and topics["family_relocation"]["opened"] == 0, topics
        assert "" not in topics and "" not in formats


@pytest.mark.parametrize("fields,problem", [
    ({"topic": "Relocation Costs"}, "topic: "),
    ({"topic": "x" * 61}, "topic: "),
    ({"topic": "costs\n"}, "topic: "),
    ({"format": "podcast"}, "format: 'podcast' is not one of newsletter, guide"),
    ({"format": "<b>guide</b>"}, "format: "),
])
async def test_a_topic_or_format_that_is_not_a_known_slug_is_refused_naming_the_field(
        mesh: TemplatesMesh, fields: dict[str, str], problem: str) -> None:
    body = {**await content_of(mesh), **fields}
    for validate_only in ("false", "true"):
        r = await mesh.client.put(f"/v1/templates/{KEY}?validate_only={validate_only}",
                                  headers=mesh.headers("editor"), json=body)
        assert r.status_code == 422, r.text
        problems = r.json()["error"]["details"]["problems"]
        assert any(p.startswith(problem) for p in problems), problems
    r = await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"),
                              json={**body, **{name: 3 for name in fields}})
    assert r.status_code == 422 and set(r.json()["error"]["details"]["fields"]) == set(fields), r.text
    assert [v["version"] for v in (await mesh.client.get(f"/v1/templates/{KEY}",
                                                         headers=mesh.headers("viewer"))).json()["versions"]] == [1]
    r = await mesh.client.put(f"/v1/templates/{KEY}?validate_only=true", headers=mesh.headers("editor"),
                              json={**await content_of(mesh), "topic": "relocation_costs", "format": "case_study"})
    assert r.status_code == 200, r.text


async def test_a_journey_added_as_data_has_its_steps_stages_in_sends_and_stage_analytics(
        settings: Settings, tmp_path: Path) -> None:
    """A marketer adds a journey with stages and its templates through the API only. Its sends carried no
    stage (a template made through the API has no catalog entry, where the seed's stages are), so
    analytics' stage conversion and velocity for it, and the console's stage table, stayed empty ("No stage
    entered in this range") while the journey's own funnel showed each stage entered. The stage is the
    sending step's, as the journey names it."""
    async with templates_mesh(settings, tmp_path, extra=("analytics", "crm_sync")) as mesh:
        for step in ("email_01", "email_02"):
            await publish_a_copy(mesh, f"student.{step}")
        journey = {
            "key": "student", "name": "International Student Nurturing", "kind": "sequence",
            "category": "transactional", "stages": [{"id": "welcome", "name": "Welcome"},
                                                    {"id": "permits", "name": "Permits and funding"}],
            "entry": [{"name": "plan_started", "events": ["study_plan_started"]}],
            "steps": [{"id": "email_01", "type": "send", "stage": "welcome"},
                      {"id": "wait_02", "type": "wait", "delay": "1d"},
                      {"id": "email_02", "type": "send", "stage": "permits"},
                      {"id": "done", "type": "end"}]}
        r = await mesh.client.put("/v1/journeys/student", headers=mesh.headers("editor"), json=journey)
        assert r.status_code == 201, r.text
        r = await mesh.client.post("/v1/journeys/student/publish", headers=mesh.headers("editor"), json={"version": 1})
        assert r.status_code == 200, r.text
        await mesh.add_lead("priya")
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"),
                                   json={"lead_id": "priya", "type": "study_plan_started", "properties": {}})
        assert r.status_code == 202, r.text
        r = await mesh.client.post("/v1/admin/clock/advance", headers=mesh.headers("admin"),
                                   json={"seconds": 2 * 86400})
        assert r.status_code == 200, r.text
        r = await mesh.client.get("/v1/leads/priya/timeline", headers=mesh.headers("viewer"))
        sent = {i["details"]["step"]: i["details"] for i in r.json()["items"] if i["type"] == "message_sent"}
        assert (sent["email_01"]["stage"], sent["email_02"]["stage"]) == ("welcome", "permits"), sent
        # The gateway credits a posted open by the message's content (ListMessages): the stage too.
        r = await mesh.client.post("/v1/events", headers=mesh.headers("editor"), json={
            "lead_id": "priya", "type": "email_opened", "properties": {"message_id": sent["email_02"]["message_id"]}})
        assert r.status_code == 202, r.text
        await _settle(mesh, "scoring", "messaging", "scoring", "analytics")
        r = await mesh.client.get("/v1/leads/priya/timeline", headers=mesh.headers("viewer"))
        opened = [i["details"] for i in r.json()["items"] if i["type"] == "email_opened"]
        assert [o["properties"]["stage"] for o in opened] == ["permits"], opened
        r = await mesh.client.get("/v1/analytics/progression", headers=mesh.headers("viewer"), params={
            "journey": "student", "from": "2026-01-01T00:00:00Z", "to": "2026-12-31T00:00:00Z"})
        assert r.status_code == 200, r.text
        stages = {row["stage"]: (row["entered"], row["advanced"]) for row in r.json()["stages"]}
        assert stages == {"welcome": (1, 1), "permits": (1, 0)}, r.json()["stages"]


async def test_a_template_merges_any_of_the_leads_own_fields(mesh: TemplatesMesh) -> None:
    """A segment added as data brings fields of its own (a student's study level). A template could merge
    only the variables listed in code: `{{ study_level }}` was an unknown variable, and no other name
    reached the lead's attributes. `attributes.<name>` does; a lead without the field reads it empty."""
    await mesh.add_lead("priya", first_name="Priya", attributes={"study_level": "a master's"})
    await mesh.add_lead("mateo", first_name="Mateo", attributes={})
    body = await content_of(mesh)
    body["variants"] = {}
    body["subject"] = "Your {{ attributes.study_level or 'study' }} plan, {{ first_name }}"
    body["text"] = body["text"].replace("Hi {{ first_name }},", "Hi {{ first_name }}, [{{ attributes.study_level }}]")
    r = await mesh.client.put("/v1/templates/student.email_01", headers=mesh.headers("editor"), json=body)
    assert r.status_code == 201, r.text
    assert (await mesh.client.post("/v1/templates/student.email_01/publish", headers=mesh.headers("editor"),
                                   json={"version": 1})).status_code == 200
    shown = {}
    for lead in ("priya", "mateo"):
        r = await mesh.client.get(f"/v1/templates/student.email_01/preview?lead_id={lead}",
                                  headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        shown[lead] = r.json()
    assert shown["priya"]["subject"] == "Your a master's plan, Priya"
    assert "Hi Priya, [a master's]" in shown["priya"]["text"]
    assert shown["mateo"]["subject"] == "Your study plan, Mateo" and "Hi Mateo, []" in shown["mateo"]["text"]
    # And a real send, not only a preview.
    sent = await sent_details(mesh, "mateo", "student.email_01")
    assert sent["subject"] == "Your study plan, Mateo", sent
    r = await mesh.client.get("/v1/templates/student.email_01", headers=mesh.headers("viewer"))
    assert "attributes" in {v["name"] for v in r.json()["variables"]}


CTA_BODY = ('<mjml><mj-body><mj-section><mj-column><mj-text>Hi {{ first_name }},</mj-text>'
            '<mj-button href="{{ cta_url }}">{{ cta_label }}</mj-button>'
            '<mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ postal_address }}</mj-text>'
            '</mj-column></mj-section></mj-body></mjml>')
CTA_TEXT = ("Hi {{ first_name }},\n{{ cta_label }}: {{ cta_url }}\nUnsubscribe: {{ unsubscribe_url }}\n"
            "{{ postal_address }}\n")


async def test_a_template_made_through_the_api_names_its_buttons_label_and_page(mesh: TemplatesMesh) -> None:
    """Found by a user: a template made through the API linked its button to the site root with the label
    "Learn more", and only catalog.yaml could say otherwise. A version now names its call to action's label
    and page (a path, or an https address on the site), shown on read, used by previews and sends."""
    key = "family.email_98"
    editor = mesh.headers("editor")
    await mesh.add_lead("ana")
    body = {"subject": "Plans for {{ first_name }}", "body": CTA_BODY, "text": CTA_TEXT,
            "cta_label": "See the family plans", "cta_path": "/plans/family"}
    r = await mesh.client.put(f"/v1/templates/{key}", headers=editor, json=body)
    assert r.status_code == 201, r.text
    r = await mesh.client.put(f"/v1/templates/{key}", headers=editor, json={
        **body, "cta_label": "Book a call", "cta_path": "https://www.borderbridge.example/book"})
    assert r.status_code == 201, r.text
    r = await mesh.client.put(f"/v1/templates/{key}", headers=editor, json={**body, "cta_label": "", "cta_path": ""})
    assert r.status_code == 201, r.text
    r = await mesh.client.post(f"/v1/templates/{key}/publish", headers=editor, json={"version": 1})
    assert r.status_code == 200, r.text

    got = (await mesh.client.get(f"/v1/templates/{key}?version=1", headers=mesh.headers("viewer"))).json()
    assert (got["cta_label"], got["cta_path"]) == ("See the family plans", "/plans/family")
    shown = {}
    for version in (1, 2, 3):
        r = await mesh.client.get(f"/v1/templates/{key}/preview?lead_id=ana&version={version}",
                                  headers=mesh.headers("viewer"))
        assert r.status_code == 200, r.text
        shown[version] = r.json()
    utm = "?utm_source=nurture&utm_medium=email&utm_campaign=family&utm_content=email_98"
    assert "See the family plans" in shown[1]["html"] and "Learn more" not in shown[1]["html"]
    assert f"See the family plans: https://www.borderbridge.example/plans/family{utm}" in shown[1]["text"]
    assert f"Book a call: https://www.borderbridge.example/book{utm}" in shown[2]["text"]
    # Neither named: the template's own, as before.
    assert f"Learn more: https://www.borderbridge.example/{utm}" in shown[3]["text"]

    mid = await mesh.send("ana", key)
    (mail,) = [m for m in mesh.mails() if m["X-Nurture-Message"] == mid]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "See the family plans" in html and "Learn more" not in html


@pytest.mark.parametrize("fields, problem", [
    ({"cta_path": "https://evil.example/plans"}, "cta_path: "),      # another site
    ({"cta_path": "http://www.borderbridge.example/plans"}, "cta_path: "),   # not https
    ({"cta_path": "//evil.example/plans"}, "cta_path: "),            # another host, protocol-relative
    ({"cta_path": "plans/family"}, "cta_path: "),                   # not a path from the root
    ({"cta_path": "/plans?x=1"}, "cta_path: "),                      # the send adds the query
    ({"cta_path": "/plans/{{ ctx.plan }}"}, "cta_path: "),
    ({"cta_path": "javascript:alert(1)"}, "cta_path: "),
    ({"cta_label": "x" * 61}, "cta_label: "),
    ({"cta_label": "Two\nlines"}, "cta_label: "),
])
async def test_a_call_to_action_off_the_site_or_too_long_is_refused_naming_the_field(
        mesh: TemplatesMesh, fields: dict[str, str], problem: str) -> None:
    body = {**await content_of(mesh), **fields}
    for validate_only in ("false", "true"):
        r = await mesh.client.put(f"/v1/templates/{KEY}?validate_only={validate_only}",
                                  headers=mesh.headers("editor"), json=body)
        assert r.status_code == 422, r.text
        problems = r.json()["error"]["details"]["problems"]
        assert any(p.startswith(problem) for p in problems), problems
    r = await mesh.client.put(f"/v1/templates/{KEY}", headers=mesh.headers("editor"),
                              json={**body, **{name: 3 for name in fields}})
    assert r.status_code == 422 and set(r.json()["error"]["details"]["fields"]) == set(fields), r.text
    assert [v["version"] for v in (await mesh.client.get(f"/v1/templates/{KEY}",
                                                         headers=mesh.headers("viewer"))).json()["versions"]] == [1]
