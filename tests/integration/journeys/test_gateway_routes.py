"""The gateway's journeys routes against a real journeys service over gRPC."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from nurture.settings import SERVICES, Settings
from services.journeys.simulation import PARALLEL_FROM_LEADS, default_workers, simulate
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.journeys.fakes import Recorder, start_fakes

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    rec = Recorder(templates=None)
    mport = free_port()
    messaging, crm = await start_fakes(rec, messaging_port=mport)
    addrs = {f"{s}_addr": f"127.0.0.1:{free_port()}" for s in SERVICES}
    addrs["messaging_addr"] = f"127.0.0.1:{mport}"
    journeys = await start_service("journeys", settings.with_overrides(**addrs))
    addrs["journeys_addr"] = journeys.address
    app = create_app(settings.with_overrides(api_key="test-key", **addrs))
    for s in SERVICES:
        app.state.mesh.channels[s] = mesh_channel(app.state.mesh.settings.address_of(s))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c
    await journeys.stop(grace=0.2)
    await messaging.stop(0)
    await crm.stop(0)


async def test_journey_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/journeys", headers=AUTH)
    assert r.status_code == 200
    items = {j["key"]: j for j in r.json()["items"]}
    assert items["webinar"]["kind"] == "sequence" and items["webinar"]["published_version"] == 1
    # API.md's kinds only; the always-on trigger tables are a sequence whose mode says so.
    assert {j["kind"] for j in items.values()} == {"segment", "engagement", "sequence"}
    assert (items["triggers"]["kind"], items["triggers"]["mode"]) == ("sequence", "always_on")
    assert items["webinar"]["mode"] == "flow"
    assert (await client.get("/v1/journeys")).status_code == 401

    r = await client.get("/v1/journeys/cart_abandonment", headers=AUTH)
    doc = r.json()["definition"]
    assert r.json()["versions"][0]["status"] == "published"
    broken = {**doc, "steps": [{"id": "loop", "type": "jump", "to": "loop"}, *doc["steps"]]}
    r = await client.put("/v1/journeys/cart_abandonment", headers=AUTH, json=broken)
    assert r.status_code == 422, r.text
    problems = r.json()["error"]["details"]["problems"]
    assert any("loop without a wait" in p for p in problems)
    assert any("unreachable" in p for p in problems)

    r = await client.put("/v1/journeys/cart_abandonment", headers=AUTH, json=doc)
    # A stored draft is a new version resource: 201 with where to read it.
    assert r.status_code == 201 and r.json()["version"] == 2
    assert r.headers["Location"] == "/v1/journeys/cart_abandonment?version=2"
    # The playbook's own YAML file is accepted as it is; broken YAML is 400, not 500.
    yaml_file = (Path(__file__).parents[3] / "services/journeys/data/playbook/cart_abandonment.yaml").read_bytes()
    r = await client.put("/v1/journeys/cart_abandonment?validate_only=true", content=yaml_file,
                         headers={**AUTH, "Content-Type": "application/yaml"})
    assert r.status_code == 200 and r.json()["valid"] is True, r.text
    r = await client.put("/v1/journeys/cart_abandonment", content=b"steps: [unclosed",
                         headers={**AUTH, "Content-Type": "application/x-yaml"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed"
    r = await client.post("/v1/journeys/cart_abandonment/publish", headers=AUTH, json={"version": 2, "dry_run": True,
                                                                                       "migrate": True})
    assert r.status_code == 200 and r.json()["published"] is False and r.json()["would_move"] == {}
    r = await client.post("/v1/journeys/cart_abandonment/publish", headers=AUTH,
                          json={"version": 2, "step_mapping": {"email_01": "nowhere"}, "migrate": True})
    assert r.status_code == 422
    r = await client.post("/v1/journeys/cart_abandonment/publish", headers=AUTH, json={"version": 2})
    assert r.status_code == 200 and r.json()["published"] is True
    assert (await client.get("/v1/journeys/cart_abandonment", headers=AUTH)).json()["published_version"] == 2

    assert (await client.get("/v1/journeys/nope", headers=AUTH)).status_code == 404
    for query in ("cursor=zzz", "status=martian", "stage=martian"):
        r = await client.get(f"/v1/journeys/family/members?{query}", headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid", (query, r.text)
    r = await client.get("/v1/journeys/family/members?stage=decision&status=active", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    # Audience names are discoverable: every published journey and each of its stages.
    names = {a["name"]: a for a in (await client.get("/v1/audiences", headers=AUTH)).json()["items"]}
    assert {"family", "family.decision", "webinar"} <= set(names)
    assert names["family.decision"]["journey"] == "family" and names["family.decision"]["stage"] == "decision"
    r = await client.get("/v1/journeys/webinar/analytics?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
                         headers=AUTH)
    assert r.status_code == 200 and r.json()["enrolled"] == 0
    assert (await client.get("/v1/journeys/webinar/analytics?from=yesterday", headers=AUTH)).status_code == 422

    body = {"journeys": ["skilled_professional", "triggers"], "leads": 40, "days": 30, "seed": 5,
            "behaviour": {"default": {"open": 0.5}}}
    r = await client.post("/v1/simulations", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    again = await client.post("/v1/simulations", headers=AUTH, json=body)
    # Deterministic to the byte; the wall time is a header.
    assert r.content == again.content and r.headers["Server-Timing"].startswith("simulate;dur=")
    first = r.json()
    steps = first["journeys"]["skilled_professional"]["steps"]
    assert steps[0]["step"] == "email_01" and steps[0]["sent"] > 0 and steps[0]["opened"] > 0
    assert (await client.post("/v1/simulations", headers=AUTH, json={"journeys": ["nope"]})).status_code == 422
    assert (await client.post("/v1/simulations", headers=AUTH, json={"leads": "many"})).status_code == 422
    # A behaviour model it cannot read is a 422 listing every problem, not a 500 or a silent default.
    bad = {"default": "x", "segments": {"family": {"open": "high"}, "martians": {}}, "open": 0.9,
           "actions": {"webinar": 2}}
    r = await client.post("/v1/simulations", headers=AUTH, json={"leads": 5, "days": 3, "behaviour": bad})
    assert r.status_code == 422, r.text
    problems = r.json()["error"]["details"]["problems"]
    assert len(problems) == 5 and any("behaviour.open" in p for p in problems), problems


async def test_a_simulation_split_over_worker_processes_answers_as_one_process(client: httpx.AsyncClient) -> None:
    """From PARALLEL_FROM_LEADS leads the journeys service runs the simulation in worker processes
    (forked from a fork server, not from the service with its gRPC threads): the same report as one
    process computes here."""
    leads = PARALLEL_FROM_LEADS
    assert default_workers(leads) > 1 or (os.cpu_count() or 1) == 1
    body = {"leads": leads, "days": 2, "seed": 8}
    r = await client.post("/v1/simulations", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    served = r.json()
    here = simulate(leads=leads, days=2, seed=8, workers=1)
    here["engine"].pop("wall_seconds")  # (the gateway answers it as the Server-Timing header)
    # The service names the journeys in its published order, the playbook in its files' order.
    assert sorted(served.pop("journey_keys")) == sorted(here.pop("journey_keys"))
    assert served == json.loads(json.dumps(here, default=str))
    assert served["engine"]["steps"] > leads


async def test_a_bad_journey_key_is_named_as_the_problem(client: httpx.AsyncClient) -> None:
    """The new-user run's find: the playbook's own file PUT under a key that cannot be one was answered
    "differs from the URL". The key in the address is checked first and named; a key or a step id longer
    than the 64-character columns it is stored in is refused at PUT, not at its first run."""
    doc = (await client.get("/v1/journeys/cart_abandonment", headers=AUTH)).json()["definition"]
    for bad, why in (("Cart-Abandonment", "snake_case"), ("9lives", "snake_case"),
                     ("é_journey", "snake_case"), ("k" * 65, "at most 64 characters")):
        r = await client.put(f"/v1/journeys/{bad}", headers=AUTH, json=doc)
        assert r.status_code == 422, (bad, r.text)
        error = r.json()["error"]
        assert "journey key" in error["message"] and why in error["message"], error
        assert "differs" not in error["message"]
        assert any(p.startswith("key:") and why in p for p in error["details"]["problems"]), error
    # Without a key in the body the address's is taken: the same answer.
    r = await client.put("/v1/journeys/Bad Key", headers=AUTH, json={k: v for k, v in doc.items() if k != "key"})
    assert r.status_code == 422 and "snake_case" in r.json()["error"]["message"]
    # A good address with another key in the body names both.
    r = await client.put("/v1/journeys/my_cart", headers=AUTH, json=doc)
    assert r.status_code == 422 and "'cart_abandonment'" in r.json()["error"]["message"]
    assert "'my_cart'" in r.json()["error"]["message"]
    # A new journey under a good key of exactly 64 characters is stored.
    long_key = "k" * 64
    r = await client.put(f"/v1/journeys/{long_key}", headers=AUTH, json={**doc, "key": long_key})
    assert r.status_code == 201, r.text
    # A step id past its column is a problem listed at PUT.
    steps = [{**doc["steps"][0], "id": "s" * 65}, *doc["steps"][1:]]
    r = await client.put("/v1/journeys/cart_abandonment", headers=AUTH, json={**doc, "steps": steps})
    assert r.status_code == 422
    assert any("id must be 1 to 64 characters" in p for p in r.json()["error"]["details"]["problems"])


async def test_a_definition_field_of_the_wrong_kind_is_a_422_and_never_breaks_a_listing(
        client: httpx.AsyncClient) -> None:
    """This run's find: a draft with `priority: 10**12` was stored and then every GET /v1/journeys (and the
    console's journeys page) answered 500 (the int32 summary overflowed); `reanchor_events: 5` was a 500."""
    doc = (await client.get("/v1/journeys/cart_abandonment", headers=AUTH)).json()["definition"]
    for field, value in (("priority", 10**12), ("priority", -1001), ("priority", True), ("reanchor_events", 5),
                         ("reanchor_events", [1]), ("pauses", "x"), ("entity", {"x": 1}), ("name", {"x": 1}),
                         ("anchors", {"a": {"b": 1}})):
        r = await client.put("/v1/journeys/cart_abandonment", headers=AUTH, json={**doc, field: value})
        assert r.status_code == 422, (field, value, r.text)
        assert any(p.startswith(f"{field}:") for p in r.json()["error"]["details"]["problems"]), r.json()
    r = await client.put("/v1/journeys/cart_abandonment", headers=AUTH, json={**doc, "priority": 1000})
    assert r.status_code == 201, r.text
    assert (await client.get("/v1/journeys", headers=AUTH)).status_code == 200
    assert (await client.get("/v1/journeys/cart_abandonment", headers=AUTH)).status_code == 200


async def test_a_wait_beyond_ten_years_is_a_422(client: httpx.AsyncClient) -> None:
    """A wait of 10,000,000 days was stored; a lead reaching it would overflow the calendar. 1e20 seconds
    overflowed at PUT itself."""
    doc = (await client.get("/v1/journeys/cart_abandonment", headers=AUTH)).json()["definition"]
    for delay in ("10000000d", "3651d", 1e20, float("inf")):
        steps = [{**s, "delay": delay} if s["id"] == "wait_02" else s for s in doc["steps"]]
        r = await client.put("/v1/journeys/cart_abandonment", content=json.dumps({**doc, "steps": steps}),
                             headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code in (400, 422), (delay, r.text)
    steps = [{**s, "delay": "3650d"} if s["id"] == "wait_02" else s for s in doc["steps"]]
    r = await client.put("/v1/journeys/cart_abandonment", headers=AUTH, json={**doc, "steps": steps})
    assert r.status_code == 201, r.text


async def test_simulating_a_draft_journey_by_its_key_says_it_has_no_published_version(
        client: httpx.AsyncClient) -> None:
    """A new user's journey, stored as a draft (PUT) and not published yet, simulated by its key: it is no
    unknown journey (GET answers it), so the 422 says what to send instead, and that works."""
    doc = (await client.get("/v1/journeys/cart_abandonment", headers=AUTH)).json()["definition"]
    r = await client.put("/v1/journeys/cart_v2", headers=AUTH, json={**doc, "key": "cart_v2", "name": "Cart v2"})
    assert r.status_code == 201, r.text
    body = {"journeys": ["cart_v2"], "leads": 5, "days": 3, "seed": 1}
    r = await client.post("/v1/simulations", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] == 'journey \'cart_v2\' has no published version; name a stored one: ' \
                               '{"key": "cart_v2", "version": 1}'
    assert error["details"]["problems"] == ["journeys: 'cart_v2' has no published version (stored: 1)"]
    named = {**body, "journeys": [{"key": "cart_v2", "version": 1}]}
    r = await client.post("/v1/simulations", headers=AUTH, json=named)
    assert r.status_code == 200 and r.json()["journey_keys"] == ["cart_v2"], r.text
    r = await client.post("/v1/simulations", headers=AUTH, json={**body, "journeys": ["nope"]})
    assert r.status_code == 422 and r.json()["error"]["message"] == "unknown journey 'nope'"


async def test_a_journey_for_a_segment_added_as_data_is_simulated_with_leads_of_that_segment(
        client: httpx.AsyncClient) -> None:
    """A journey for the segment `student` (added to the scoring model as data) enrolled none of the
    simulation's leads: they were spread over the seed's three segments only, and `segment_mix` refused
    any other ("must be a non-empty list of skilled_professional, family, entrepreneur")."""
    r = await client.get("/v1/journeys/cart_abandonment", headers=AUTH)
    email = next(s for s in r.json()["definition"]["steps"] if s["type"] == "send")
    journey = {"key": "student", "name": "International Student Nurturing", "kind": "segment",
               "entry": [{"name": "segment_student", "events": ["lead_created", "lead_updated"],
                          "when": {"all": [{"fact": "lead.segment", "eq": "student"},
                                           {"fact": "lead.consent.email", "eq": True}]}}],
               "steps": [{**{k: v for k, v in email.items() if k != "stage"}, "id": "email_01"},
                         {"id": "done", "type": "end"}]}
    # (the fake messaging lists no templates: journeys then leaves the template check to the send)
    r = await client.put("/v1/journeys/student", headers=AUTH, json=journey)
    assert r.status_code == 201, r.text
    body: dict[str, object] = {"journeys": [{"key": "student", "version": 1}], "leads": 40, "days": 3, "seed": 2}
    r = await client.post("/v1/simulations", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    # Spread over the seed's three segments and the journey's: a quarter of the leads are students.
    assert r.json()["journeys"]["student"]["steps"][0]["entered"] == 10, r.json()
    r = await client.post("/v1/simulations", headers=AUTH, json={**body, "behaviour": {
        "segment_mix": ["student"], "segments": {"student": {"open": 1.0}}}})
    assert r.status_code == 200, r.text
    first = r.json()["journeys"]["student"]["steps"][0]
    assert first["entered"] == first["sent"] == first["opened"] == 40, first
    # Rates for a segment none of the run's leads is in are still a problem, not silently ignored.
    r = await client.post("/v1/simulations", headers=AUTH, json={**body, "behaviour": {
        "segment_mix": ["student"], "segments": {"family": {"open": 1.0}}}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["problems"] == [
        "behaviour.segments.family: no lead of the run is in this segment (theirs: student)"]
