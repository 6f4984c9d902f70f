"""The whole mesh as a user runs it (`nurture up --clock virtual`): a BorderBridge lead goes through
scoring, its segment journey, real mail to the SMTP sink, unsubscribe and erasure."""

from __future__ import annotations

import email
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bench._mesh import Mesh, child_processes, private_mesh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with private_mesh(clock="virtual") as running:
        yield running


@pytest.fixture(scope="module")
def cluster_mesh() -> Iterator[Mesh]:
    with private_mesh(clock="virtual", redis_cluster=3) as running:
        yield running


def mails(mesh: Mesh) -> list[email.message.Message]:
    folder = Path(mesh.data_dir) / "mail"
    return [email.message_from_bytes(p.read_bytes()) for p in sorted(folder.rglob("*.eml"))]


def test_a_lead_from_sign_up_to_erasure(mesh: Mesh) -> None:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text
        r = api.post("/v1/leads", json={
            "id": "ana", "email": "ana@example.com", "first_name": "Ana", "consent": {"email": True},
            "timezone": "Asia/Kolkata", "attributes": {"profession": "nurse", "countries_of_interest": ["CA"]}})
        assert r.status_code == 201 and r.json()["segment"] == "skilled_professional"
        assert api.post("/v1/admin/clock/advance", json={"seconds": 3 * 86400}).status_code == 200
        lead = api.get("/v1/leads/ana").json()
        assert any(j["journey"] == "skilled_professional" and j["status"] == "active" for j in lead["journeys"])
        sent = [m for m in api.get("/v1/leads/ana/messages").json()["items"] if m["status"] == "sent"]
        assert sent and sent[-1]["template"] == "skilled_professional.email_01"   # newest first
        received = [m for m in mails(mesh) if m["To"] and "ana@example.com" in m["To"]]
        assert len(received) == len(sent)
        assert received[0]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

        r = api.post("/v1/events", json={"lead_id": "ana", "type": "page_viewed",
                                         "properties": {"category": "bottom_funnel"}})
        assert r.status_code == 202
        assert api.post("/v1/admin/clock/advance", json={"seconds": 60}).status_code == 200
        timeline = api.get("/v1/leads/ana/timeline").json()["items"]
        kinds = {i["kind"] for i in timeline}
        assert {"event", "score", "journey", "message"} <= kinds
        assert any(i["kind"] == "score" and "bottom_funnel" in i["summary"] for i in timeline)
        # The seed's bottom-funnel trigger alerts sales once, though a journey trigger and a crm rule both ask.
        created = [i for i in timeline if i["kind"] == "crm" and i["type"] == "task_created"]
        assert len([i for i in created if i["details"]["kind"] == "sales_alert"]) == 1

        link = re.search(r"<(http[^>]+/u/[^>]+)>", received[0]["List-Unsubscribe"])
        assert link
        token_path = httpx.URL(link.group(1)).path
        assert httpx.post(f"{mesh.url}{token_path}", data={"List-Unsubscribe": "One-Click"}).status_code in (200, 204)
        assert api.post("/v1/admin/clock/advance", json={"seconds": 30 * 86400}).status_code == 200
        timeline = api.get("/v1/leads/ana/timeline").json()["items"]
        assert any(i["kind"] == "event" and i["type"] == "unsubscribed" for i in timeline)
        # The one-click unsubscribe of a nurture email stops nurture mail at once and for good.
        after = [m for m in api.get("/v1/leads/ana/messages").json()["items"] if m["status"] == "sent"]
        assert [m for m in after if m["category"] == "nurture"] == [m for m in sent if m["category"] == "nurture"]
        assert len([m for m in mails(mesh) if m["To"] and "ana@example.com" in m["To"]]) == len(after)
        # The lead shows what she unsubscribed from; transactional mail still reaches her.
        lead = api.get("/v1/leads/ana").json()
        assert lead["subscriptions"]["email"] == {"nurture": False, "transactional": True}
        assert {(s["scope"], s["reason"]) for s in lead["subscriptions"]["suppressed"]} == {("nurture", "unsubscribed")}

        assert api.delete("/v1/leads/ana").status_code == 200
        assert api.get("/v1/leads/ana").status_code == 404
        # Signed up again with the same address: the suppression of the erased person holds, and shows.
        again = api.post("/v1/leads", json={"id": "ana-2", "email": "ANA@example.com", "consent": {"email": True}})
        assert again.status_code == 201
        assert again.json()["subscriptions"]["email"] == {"nurture": False, "transactional": False}


def test_urgent_timeline_jumps_to_decision_and_conversion_ends_nurture(mesh: Mesh) -> None:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        api.post("/v1/leads", json={"id": "sam", "email": "sam@example.com", "consent": {"email": True},
                                    "timezone": "Asia/Manila", "attributes": {"profession": "engineer"}})
        api.post("/v1/events", json={"lead_id": "sam", "type": "form_submitted", "properties": {"timeline": "urgent"}})
        assert api.post("/v1/admin/clock/advance", json={"seconds": 60}).status_code == 200
        journey = next(j for j in api.get("/v1/leads/sam").json()["journeys"] if j["journey"] == "skilled_professional")
        assert journey["stage"] == "decision"
        timeline = api.get("/v1/leads/sam/timeline").json()["items"]
        assert any("jumped to decision stage" in i["summary"] and "urgent_timeline" in i["summary"] for i in timeline)
        api.post("/v1/events", json={"lead_id": "sam", "type": "subscribed", "properties": {"plan": "pro"}})
        assert api.post("/v1/admin/clock/advance", json={"seconds": 86400}).status_code == 200
        lead = api.get("/v1/leads/sam").json()
        assert lead["lifecycle_stage"] == "customer"
        segment = next(j for j in lead["journeys"] if j["journey"] == "skilled_professional")
        assert segment["status"] != "active"


def test_segment_read_from_behaviour_enrols_and_audiences_follow_journeys(mesh: Mesh) -> None:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        # No profile clues: funding content (no points) makes her an entrepreneur, and the
        # entrepreneur workflow starts with its welcome email.
        api.post("/v1/leads", json={"id": "eve", "email": "eve@example.com", "consent": {"email": True},
                                    "timezone": "Europe/Lisbon"})
        r = api.post("/v1/events", json={"lead_id": "eve", "type": "page_viewed",
                                         "properties": {"category": "funding"}})
        assert r.status_code == 202
        assert api.post("/v1/admin/clock/advance", json={"seconds": 3600}).status_code == 200
        lead = api.get("/v1/leads/eve").json()
        assert lead["segment"] == "entrepreneur"
        assert any(j["journey"] == "entrepreneur" and j["status"] == "active" for j in lead["journeys"])
        sent = [m["template"] for m in api.get("/v1/leads/eve/messages").json()["items"]]
        assert "entrepreneur.email_01" in sent
        # Audiences are journeys (or journey.stage); a name that is neither is 404.
        assert "eve" in api.get("/v1/audiences/entrepreneur").json()["members"]
        r = api.get("/v1/audiences/no_such_audience")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert api.get("/v1/leads/ghost/messages").status_code == 404


def test_webinar_attendance_reported_after_the_no_show_decision_counts_as_attended(mesh: Mesh) -> None:
    # The seed's webinar sequence: +1h attended → thank-you, no-show → missed-you. Attendance the
    # platform reports later than +1h is still attendance: the lead gets the attended path from then on.
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        api.post("/v1/leads", json={"id": "wes", "email": "wes@example.com", "first_name": "Wes",
                                    "consent": {"email": True}, "timezone": "UTC"})
        now = datetime.fromisoformat(api.get("/v1/admin/clock").json()["now"].replace("Z", "+00:00"))
        starts = (now + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
        r = api.post("/v1/events", json={"lead_id": "wes", "type": "webinar_registered",
                                         "properties": {"webinar_id": "w-late", "starts_at": starts.isoformat(),
                                                        "webinar_title": "Canada 101",
                                                        "join_url": "https://zoom.example/j/42"}})
        assert r.status_code == 202
        late = starts + timedelta(hours=1, minutes=30) - now
        assert api.post("/v1/admin/clock/advance", json={"seconds": late.total_seconds()}).status_code == 200
        r = api.post("/v1/events", json={"lead_id": "wes", "type": "webinar_attended",
                                         "properties": {"webinar_id": "w-late"}})
        assert r.status_code == 202
        assert api.post("/v1/admin/clock/advance", json={"seconds": 86400}).status_code == 200
        sent = [m["template"] for m in api.get("/v1/leads/wes/messages").json()["items"]
                if m["journey"] == "webinar" and m["status"] == "sent"]
        assert sent == [f"webinar.email_0{n}" for n in (6, 4, 5, 3, 2, 1)]   # newest first
        timeline = api.get("/v1/leads/wes/timeline").json()["items"]
        assert any(i["kind"] == "journey" and "matched rule attended_late" in i["summary"] for i in timeline)
        received = {m["X-Nurture-Template"]: m for m in mails(mesh) if m["To"] and "wes@example.com" in m["To"]}
        assert "webinar.email_04" in received and "webinar.email_06" in received
        # The registration's title reaches the emails, and the final reminder's button is its access link.
        final = received["webinar.email_03"].get_payload()[0].get_payload(decode=True).decode()
        assert "Webinar: Canada 101." in final
        click = re.search(r"(http\S+/t/c/\S+)", final)
        assert click
        r = httpx.get(click.group(1), follow_redirects=False)
        assert r.status_code in (302, 303, 307) and r.headers["location"] == "https://zoom.example/j/42"


def test_day_14_re_engagement_is_one_email_with_the_segments_content(mesh: Mesh) -> None:
    # The seed asks, on 14 days without opens, for the segment's re-engagement content and the
    # Re-Engagement workflow's check-in: one moment, one email. The re-engagement journey sends it, with
    # the segment's content (re_engagement.yaml's first branch); the segment journey only enrols.
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        api.post("/v1/leads", json={"id": "ina", "email": "ina@example.com", "consent": {"email": True},
                                    "timezone": "UTC", "attributes": {"profession": "engineer"}})
        assert api.post("/v1/admin/clock/advance", json={"seconds": 15 * 86400}).status_code == 200
        items = api.get("/v1/leads/ina/messages").json()["items"]
        reach = [m for m in items if m["journey"] == "re_engagement" or m["step"] == "reengagement"]
        assert [(m["journey"], m["step"], m["template"], m["status"]) for m in reach] == [
            ("re_engagement", "email_01_skilled_professional", "re_engagement.email_01_skilled_professional", "sent")]


def test_subscribing_again_after_a_nurture_unsubscribe_resumes_the_journey_without_repeats(mesh: Mesh) -> None:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        assert api.get("/readyz").status_code == 200
        r = api.post("/v1/leads", json={
            "id": "ravi", "email": "ravi@example.com", "first_name": "Ravi", "consent": {"email": True},
            "timezone": "UTC", "attributes": {"profession": "engineer", "countries_of_interest": ["AU"]}})
        assert r.status_code == 201 and r.json()["segment"] == "skilled_professional"
        assert api.post("/v1/admin/clock/advance", json={"seconds": 2 * 86400}).status_code == 200
        first = [m for m in mails(mesh) if m["To"] and "ravi@example.com" in m["To"]]
        assert first
        link = re.search(r"<(http[^>]+/u/[^>]+)>", first[0]["List-Unsubscribe"])
        assert link
        assert httpx.post(f"{mesh.url}{httpx.URL(link.group(1)).path}",
                          data={"List-Unsubscribe": "One-Click"}).status_code in (200, 204)
        assert api.post("/v1/admin/clock/advance", json={"seconds": 10 * 86400}).status_code == 200
        stopped = {m["template"] for m in api.get("/v1/leads/ravi/messages").json()["items"] if m["status"] == "sent"}
        journeys = {j["journey"]: j for j in api.get("/v1/leads/ravi").json()["journeys"]}
        assert journeys["skilled_professional"]["status"] == "exited"

        # She subscribes to email again (the preference centre, a form): the unsubscribe is lifted and
        # the segment journey goes on from where it stood; nothing already sent is sent again.
        r = api.post("/v1/events", json={"lead_id": "ravi", "type": "subscribed",
                                         "properties": {"channel": "email", "source": "preference_centre"}})
        assert r.status_code == 202
        assert api.post("/v1/admin/clock/advance", json={"seconds": 20 * 86400}).status_code == 200
        lead = api.get("/v1/leads/ravi").json()
        assert lead["subscriptions"]["email"] == {"nurture": True, "transactional": True}
        journeys = {j["journey"]: j for j in lead["journeys"]}
        assert journeys["skilled_professional"]["status"] == "active"
        sent = [m["template"] for m in api.get("/v1/leads/ravi/messages").json()["items"] if m["status"] == "sent"]
        resumed = [t for t in sent if t.startswith("skilled_professional.") and t not in stopped]
        assert resumed and len(sent) == len(set(sent))
        timeline = api.get("/v1/leads/ravi/timeline").json()["items"]
        assert any("re-entered after email consent was given again" in i["summary"] for i in timeline)


def test_sales_make_a_proposal_the_prospect_reads_by_link_and_receives_once(mesh: Mesh) -> None:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as api:
        r = api.post("/v1/leads", json={
            "id": "omar", "email": "omar@example.com", "first_name": "Omar", "consent": {"email": True},
            "attributes": {"business_sector": "logistics", "investment_capacity": "500k"}, "segment": "entrepreneur"})
        assert r.status_code == 201, r.text
        assert api.post("/v1/leads/omar/proposals", json={"plan": "gold"}).status_code == 422
        assert api.post("/v1/leads/omar/proposals", json={"plan": 7}).status_code == 422
        assert api.post("/v1/leads/omar/proposals", json={"colour": "red"}).status_code == 422
        assert api.post("/v1/leads/nobody/proposals", json={}).status_code == 404
        made = api.post("/v1/leads/omar/proposals", json={"deal_id": "deal-77"})
        assert made.status_code == 201, made.text
        p = made.json()["proposal"]
        assert p["plan"] == "investor" and p["total"] >= 4900 and p["url"].startswith(mesh.url + "/p/")
        again = api.post("/v1/leads/omar/proposals", json={"deal_id": "deal-77"})
        assert again.status_code == 200 and again.json()["proposal"]["id"] == p["id"]
        # The prospect's link needs no key, shows the document with a CSP that allows no script.
        page = httpx.get(p["url"])
        assert page.status_code == 200 and "Investor &amp; Entrepreneur Advisory" in page.text
        assert "script-src" not in page.headers["content-security-policy"]
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert httpx.get(p["url"][:-3] + "abc").status_code == 404
        assert api.get(f"/v1/proposals/{p['id']}").json()["html"] == page.text
        assert api.post(f"/v1/proposals/{p['id']}/send", json={"to": "x@example.com"}).status_code == 422
        sent = api.post(f"/v1/proposals/{p['id']}/send", json={})
        assert sent.status_code == 200 and sent.json()["status"] in ("scheduled", "sent")
        assert api.post(f"/v1/proposals/{p['id']}/send", json={}).json()["status"] == "duplicate"
        assert api.post("/v1/admin/clock/advance", json={"seconds": 120}).status_code == 200
        got = [m for m in mails(mesh) if m["To"] and "omar@example.com" in m["To"]
               and m["Subject"] == "Your proposal: Investor & Entrepreneur Advisory"]
        assert len(got) == 1
        [listed] = api.get("/v1/leads/omar/proposals").json()["proposals"]
        assert listed["status"] == "sent"
        timeline = api.get("/v1/leads/omar/timeline").json()["items"]
        assert {"proposal_generated", "proposal_sent"} <= {i["type"] for i in timeline if i["kind"] == "crm"}


@pytest.mark.cluster
def test_a_lead_from_sign_up_to_erasure_on_a_redis_cluster(cluster_mesh: Mesh) -> None:
    """The same story on `nurture up --redis-cluster 3`: every service on the cluster's clients."""
    test_a_lead_from_sign_up_to_erasure(cluster_mesh)


def test_the_consumers_and_the_stand_ins_they_call_run_behind_the_accept_path(mesh: Mesh) -> None:
    # The accept path (scoring, the gateway) keeps the scheduler's normal weight; the bus consumers and
    # the local stand-ins only they call (the CRM's and the ad platform's emulators, the SMTP sink) run
    # at NURTURE_CONSUMER_NICE (19): their autogroup's nice is what ranks them against other sessions.
    if not Path("/proc/self/autogroup").exists():
        pytest.skip("no scheduler autogroups here")
    niceness: dict[str, str] = {}
    for entry, argv in child_processes(mesh.pid):
        try:
            group = (entry / "autogroup").read_text().split()  # "/autogroup-<n> nice <nice>"
        except OSError:
            continue
        if b"-m" in argv and group:
            niceness[argv[argv.index(b"-m") + 1].decode()] = group[-1]
    assert niceness.get("services.scoring") == "0" and niceness.get("gateway") == "0", niceness
    for behind in ("services.journeys", "services.messaging", "services.crm_sync", "services.analytics",
                   "services.crm_sync.emulator", "services.messaging.ads_emulator", "services.messaging.smtp_sink"):
        assert niceness.get(behind) == "19", (behind, niceness)
