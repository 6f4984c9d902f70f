"""A segment's copy as versioned data through the gateway, over real scoring, messaging (with an SMTP sink)
and journeys services: a segment added as data (a scoring model draft published through the API) got the
catalog's fallback copy ("Explorer", "Wherever you are in your research") in every email and the free
guides on the website, its own copy being in a file only. Its label, intro and website recommendations
are now drafts, checked (422 with every problem, nothing stored), published and used by the next send."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nurture.settings import Settings
from tests.integration.console.conftest import KEYS, csrf_of, sign_in
from tests.integration.templates.mesh import TemplatesMesh, templates_mesh

pytestmark = pytest.mark.anyio

STUDENT = {
    "label": "Student",
    "intro": "{% if attributes.study_level %}As a {{ attributes.study_level }} student{% else %}As a student"
             "{% endif %}{% if countries %} looking at {{ countries_text }}{% endif %}, the right study route "
             "can also be your way to stay.",
    "recommended_content": [{"title": "Compare study visas", "path": "/guides/study-visas"},
                            {"title": "Work while you study", "path": "https://www.borderbridge.example/guides/work"}],
}
FALLBACK_INTRO = "Wherever you are in your research"


@pytest.fixture
async def mesh(settings: Settings, tmp_path: Path) -> AsyncIterator[TemplatesMesh]:
    async with templates_mesh(settings, tmp_path) as m:
        yield m


async def add_student_segment(m: TemplatesMesh) -> None:
    """The scoring model gains the segment `student` as data (a draft published through the API)."""
    live = (await m.client.get("/v1/scoring/model", headers=m.headers("viewer"))).json()
    draft = copy.deepcopy(live["definition"])
    draft["segments"].insert(0, {"segment": "student", "when": {"fact": "attributes.profession", "eq": "student"}})
    r = await m.client.put("/v1/scoring/model", headers=m.headers("editor"), json=draft)
    assert r.status_code == 201, r.text
    r = await m.client.post("/v1/scoring/model/publish", headers=m.headers("editor"),
                            json={"version": r.json()["version"]})
    assert r.status_code == 200, r.text


async def student_lead(m: TemplatesMesh, lead_id: str) -> None:
    await m.add_lead(lead_id, first_name="Priya", segment="student",
                     attributes={"study_level": "master's", "countries_of_interest": ["CA"]})


async def put_copy(m: TemplatesMesh, segment: str, body: Any, role: str = "editor") -> Any:
    return await m.client.put(f"/v1/templates/segments/{segment}", headers=m.headers(role), json=body)


async def publish_copy(m: TemplatesMesh, segment: str, body: dict[str, Any]) -> int:
    r = await put_copy(m, segment, body)
    assert r.status_code == 201, r.text
    version = int(r.json()["version"])
    assert r.headers["Location"] == f"/v1/templates/segments/{segment}?version={version}"
    r = await m.client.post(f"/v1/templates/segments/{segment}/publish", headers=m.headers("editor"),
                            json={"version": version})
    assert r.status_code == 200, r.text
    return version


def mail(m: TemplatesMesh, message_id: str) -> Any:
    (found,) = [e for e in m.mails() if e["X-Nurture-Message"] == message_id]
    return found


def body_text(mail: Any) -> str:
    return str(mail.get_body(preferencelist=("plain",)).get_content())


def html_text(mail: Any) -> str:
    return str(mail.get_body(preferencelist=("html",)).get_content())


async def test_the_catalogs_segments_are_seeded_as_version_one(mesh: TemplatesMesh) -> None:
    r = await mesh.client.get("/v1/templates/segments", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    items = {i["segment"]: i for i in r.json()["items"]}
    assert {"skilled_professional", "family", "entrepreneur", "_default"} <= set(items)
    assert items["_default"]["label"] == "Explorer" and items["family"]["published_version"] == 1
    one = (await mesh.client.get("/v1/templates/segments/family", headers=mesh.headers("viewer"))).json()
    assert one["label"] == "Family" and one["intro"].startswith("Moving{% if children_text %}")
    assert one["recommended_content"] == []
    assert one["versions"] == [{"version": 1, "status": "published", "source": "seed",
                                "created_at": one["versions"][0]["created_at"],
                                "published_at": one["versions"][0]["published_at"]}]
    r = await mesh.client.get("/v1/templates/segments/student", headers=mesh.headers("viewer"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "segment_not_found", r.text


async def test_a_segment_added_through_the_api_gets_its_own_copy_in_a_real_email(mesh: TemplatesMesh) -> None:
    await add_student_segment(mesh)
    await student_lead(mesh, "priya")
    before = body_text(mail(mesh, await mesh.send("priya", "family.email_01", 0)))
    assert FALLBACK_INTRO in before   # what a segment added as data got: the fallback's copy
    # A draft changes nothing until it is published.
    r = await put_copy(mesh, "student", STUDENT)
    assert r.status_code == 201, r.text
    assert FALLBACK_INTRO in body_text(mail(mesh, await mesh.send("priya", "family.email_01", 1)))
    r = await mesh.client.post("/v1/templates/segments/student/publish", headers=mesh.headers("editor"),
                               json={"version": 1})
    assert r.status_code == 200 and r.json() == {"segment": "student", "version": 1, "previous_version": None}
    sent = mail(mesh, await mesh.send("priya", "family.email_01", 2))
    intro = "As a master's student looking at Canada, the right study route can also be your way to stay."
    assert intro in body_text(sent) and FALLBACK_INTRO not in body_text(sent)
    assert "As a master&#39;s student looking at Canada" in html_text(sent) or intro in html_text(sent)
    # `segment_label` is the copy's label in a template that names it.
    body = (await mesh.client.get("/v1/templates/family.email_01", headers=mesh.headers("viewer"))).json()
    draft = {k: body[k] for k in ("preheader", "body", "text")}
    draft["subject"] = "A plan for every {{ segment_label }}"
    r = await mesh.client.put("/v1/templates/student.email_01", headers=mesh.headers("editor"), json=draft)
    assert r.status_code == 201, r.text
    assert (await mesh.client.post("/v1/templates/student.email_01/publish", headers=mesh.headers("editor"),
                                   json={"version": 1})).status_code == 200
    assert mail(mesh, await mesh.send("priya", "student.email_01"))["Subject"] == "A plan for every Student"
    # A second version, published, is what the next email says; the first is kept as superseded.
    await publish_copy(mesh, "student", {**STUDENT, "label": "International Student"})
    sent = mail(mesh, await mesh.send("priya", "student.email_01", 1))
    assert sent["Subject"] == "A plan for every International Student"
    shown = (await mesh.client.get("/v1/templates/segments/student", headers=mesh.headers("viewer"))).json()
    assert [(v["version"], v["status"], v["source"]) for v in shown["versions"]] == [
        (1, "superseded", "api"), (2, "published", "api")]
    # The fallback's copy is data too: a segment without copy of its own gets `_default`'s.
    await publish_copy(mesh, "_default", {"label": "Reader", "intro": "Thanks for reading, {{ first_name }}."})
    await mesh.add_lead("olga", first_name="Olga", attributes={})   # no segment the model gives
    assert "Thanks for reading, Olga." in body_text(mail(mesh, await mesh.send("olga", "family.email_01")))


async def test_the_website_recommends_a_segment_added_as_data_its_own_pages(mesh: TemplatesMesh) -> None:
    await add_student_segment(mesh)
    await student_lead(mesh, "priya")
    r = await mesh.client.get("/v1/leads/priya/personalization", headers=mesh.headers("viewer"))
    assert r.status_code == 200, r.text
    assert [c["key"] for c in r.json()["recommended_content"]] == ["lead_magnet.email_01"]   # the fallback
    await publish_copy(mesh, "student", STUDENT)
    r = await mesh.client.get("/v1/leads/priya/personalization", headers=mesh.headers("viewer"))
    shown = r.json()["recommended_content"]
    assert [(c["title"], c["url"].split("?")[0], c["reason"]) for c in shown] == [
        ("Compare study visas", "https://www.borderbridge.example/guides/study-visas", "segment student"),
        ("Work while you study", "https://www.borderbridge.example/guides/work", "segment student")]
    assert "utm_campaign=student" in shown[0]["url"]
    assert r.json()["featured_countries"] == ["CA"]


async def test_bad_copy_is_refused_with_every_problem_and_nothing_is_stored(mesh: TemplatesMesh) -> None:
    bad = {"label": "Student\nVisa", "intro": "As {{ favourite_colour }} {% if x %}",
           "recommended_content": [{"title": "Elsewhere", "path": "https://evil.example/x"}]}
    r = await put_copy(mesh, "student", bad)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_segment_copy"
    problems = r.json()["error"]["details"]["problems"]
    assert any(p.startswith("label:") for p in problems), problems
    assert any(p.startswith("intro: template syntax error") for p in problems), problems
    r = await put_copy(mesh, "student", {**STUDENT, "intro": "As {{ favourite_colour }} {% if x %}"})
    assert r.status_code == 422 and any(p.startswith("intro: template syntax error")
                                        for p in r.json()["error"]["details"]["problems"]), r.text
    r = await put_copy(mesh, "student", {**STUDENT, "intro": "As {{ favourite_colour }}",
                                         "recommended_content": [{"title": "Elsewhere",
                                                                  "path": "https://evil.example/x"}]})
    problems = r.json()["error"]["details"]["problems"]
    assert r.status_code == 422 and any("unknown variable 'favourite_colour'" in p for p in problems), r.text
    assert any(p.startswith("recommended_content.0.path:") and "not a page of the site" in p
               for p in problems), problems
    # Valid Jinja2 that fails for a lead without countries: caught before a send fails on it.
    r = await put_copy(mesh, "student", {**STUDENT, "intro": "Looking at {{ countries[0] | upper }}."})
    assert r.status_code == 422 and any(p.startswith("intro: does not render")
                                        for p in r.json()["error"]["details"]["problems"]), r.text
    for body in ({}, {"label": ""}, {"label": "x" * 61}, {"label": 3}, {**STUDENT, "colour": "red"},
                 {**STUDENT, "recommended_content": "guides"},
                 {**STUDENT, "recommended_content": [STUDENT["recommended_content"][0]] * 4},
                 {**STUDENT, "recommended_content": [{"title": "No page"}]}, ["label"]):
        r = await put_copy(mesh, "student", body)
        assert r.status_code == 422, (body, r.text)
    r = await put_copy(mesh, "bad%20name", STUDENT)
    assert r.status_code == 422 and any(p.startswith("segment:") for p in r.json()["error"]["details"]["problems"])
    r = await mesh.client.put("/v1/templates/segments/student?validate_only=true", headers=mesh.headers("editor"),
                              json=STUDENT)
    assert r.status_code == 200 and r.json() == {"segment": "student", "valid": True, "problems": []}, r.text
    # None of it stored: not the new segment, not a version of the family's.
    assert (await mesh.client.get("/v1/templates/segments/student", headers=mesh.headers("viewer"))).status_code == 404
    r = await put_copy(mesh, "family", {"label": "Family", "intro": "{{ nope }}"})
    assert r.status_code == 422
    family = (await mesh.client.get("/v1/templates/segments/family", headers=mesh.headers("viewer"))).json()
    assert [v["version"] for v in family["versions"]] == [1]
    # Publishing what does not exist.
    for version in (0, "1", None):
        r = await mesh.client.post("/v1/templates/segments/family/publish", headers=mesh.headers("editor"),
                                   json={"version": version})
        assert r.status_code == 422, r.text
    r = await mesh.client.post("/v1/templates/segments/family/publish", headers=mesh.headers("editor"),
                               json={"version": 9})
    assert r.status_code == 404, r.text


async def test_viewers_read_and_editors_write_segment_copy(mesh: TemplatesMesh) -> None:
    assert (await put_copy(mesh, "student", STUDENT, role="viewer")).status_code == 403
    assert (await mesh.client.post("/v1/templates/segments/family/publish", headers=mesh.headers("viewer"),
                                   json={"version": 1})).status_code == 403
    assert (await mesh.client.get("/v1/templates/segments", headers=mesh.headers("viewer"))).status_code == 200
    assert (await mesh.client.get("/v1/templates/segments")).status_code == 401
    assert (await put_copy(mesh, "student", STUDENT)).status_code == 201


async def test_the_console_lists_edits_and_publishes_a_segments_copy(mesh: TemplatesMesh) -> None:
    await sign_in(mesh.client, KEYS["viewer"])
    listing = await mesh.client.get("/console/templates")
    assert listing.status_code == 200 and 'data-segment="_default"' in listing.text and ">Explorer<" in listing.text
    shown = await mesh.client.get("/console/templates/segments/family")
    assert shown.status_code == 200 and 'id="label">Family<' in shown.text and "segment-editor" not in shown.text
    r = await mesh.client.post("/console/templates/segments/family/publish",
                               data={"csrf": csrf_of(shown.text), "version": "1"})
    assert r.status_code == 403
    await sign_in(mesh.client, KEYS["editor"])
    opened = await mesh.client.get("/console/templates/segments?segment=student", follow_redirects=True)
    assert opened.status_code == 200 and 'id="no-copy"' in opened.text and "segment-editor" in opened.text
    fields = {"label": "Student", "intro": "As {{ nope }}", "recommended_content": "[]"}
    assert (await mesh.client.post("/console/templates/segments/student", data=fields)).status_code == 403  # no CSRF
    fields["csrf"] = csrf_of(opened.text)
    r = await mesh.client.post("/console/templates/segments/student", data=fields)
    assert r.status_code == 422 and "unknown variable &#39;nope&#39;" in r.text
    assert (await mesh.client.get("/v1/templates/segments/student", headers=mesh.headers("viewer"))).status_code == 404
    r = await mesh.client.post("/console/templates/segments/student", data={**fields, "recommended_content": "{"})
    assert r.status_code == 422 and "recommended_content: not JSON" in r.text
    r = await mesh.client.post("/console/templates/segments/student", data={
        **fields, "intro": STUDENT["intro"], "recommended_content": '[{"title": "Compare study visas", '
                                                                    '"path": "/guides/study-visas"}]'})
    assert r.status_code == 200 and 'id="notice"' in r.text and 'data-publish="1"' in r.text, r.text
    r = await mesh.client.post("/console/templates/segments/student/publish",
                               data={"csrf": fields["csrf"], "version": "1"})
    assert r.status_code == 200 and "Version 1 is published" in r.text
    live = (await mesh.client.get("/v1/templates/segments/student", headers=mesh.headers("viewer"))).json()
    assert (live["label"], live["status"], live["recommended_content"]) == (
        "Student", "published", [{"title": "Compare study visas", "path": "/guides/study-visas"}])
