"""crm_sync decisions without network: ownership, outbound properties, backoff, rules against the
reference evaluator, the recommendation document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nurture.rules import reference_evaluate
from services.crm_sync import domain

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def cfg() -> domain.SyncConfig:
    return domain.load_config()


def lead(**kw: object) -> dict:
    base = {"id": "l1", "email": "a@example.com", "first_name": "Ana", "last_name": None, "segment": "family",
            "attributes": {}, "score": 10, "grade": "C", "lifecycle_stage": "lead", "counters": {},
            "interests": {"countries": [], "topics": []}}
    base.update(kw)
    return base


def test_most_recent_keeps_a_newer_platform_change(cfg: domain.SyncConfig) -> None:
    state = {"first_name": {"platform_at": (T0 + timedelta(hours=1)).isoformat()}}
    merged = domain.merge_inbound(cfg, {"firstname": "Anna"}, T0, lead(), state)
    assert "first_name" not in merged.fields
    assert merged.conflicts[0]["winner"] == "platform" and merged.conflicts[0]["field"] == "first_name"
    newer = domain.merge_inbound(cfg, {"firstname": "Anna"}, T0 + timedelta(hours=2), lead(), state)
    assert newer.fields == {"first_name": "Anna"} and newer.conflicts[0]["winner"] == "crm"


def test_a_value_set_back_is_sent_though_the_copy_of_the_lead_already_shows_it(cfg: domain.SyncConfig) -> None:
    """X → Y → X before the bus brings the lead after Y: crm_sync's copy still shows X, the CRM's
    previous version said Y. The CRM changed the field, so X is sent (scoring writes only a difference)."""
    copy = lead(first_name="Zoe", attributes={"company": "Xco", "profession": "nurse"})
    props = {"firstname": "Zoe", "company": "Xco", "jobtitle": "nurse"}
    first = domain.merge_inbound(cfg, props, T0, copy, {})
    # The CRM owns company: sent always; first name and profession (most_recent) equal the copy: not sent.
    assert first.fields == {"attributes": {"company": "Xco"}} and first.changed == []
    middle = domain.merge_inbound(cfg, {"firstname": "Zed", "company": "Yco", "jobtitle": "teacher"},
                                  T0 + timedelta(minutes=1), copy, first.state)
    assert sorted(middle.changed) == ["attributes.company", "attributes.profession", "first_name"]
    back = domain.merge_inbound(cfg, props, T0 + timedelta(minutes=2), copy, middle.state)
    assert back.fields == {"first_name": "Zoe", "attributes": {"company": "Xco", "profession": "nurse"}}
    assert sorted(back.changed) == ["attributes.company", "attributes.profession", "first_name"]
    assert back.conflicts == []


def test_prefer_crm_unless_blank_and_always_crm(cfg: domain.SyncConfig) -> None:
    current = lead(attributes={"company": "Acme", "phone": "1"})
    merged = domain.merge_inbound(cfg, {"company": "", "phone": ""}, T0, current, {})
    # A blank company keeps the platform's; the CRM always owns the phone, blank included (cleared).
    assert merged.fields == {"attributes": {"phone": None}} and merged.conflicts == []
    merged = domain.merge_inbound(cfg, {"company": "Beta"}, T0, current, {})
    assert merged.fields == {"attributes": {"company": "Beta"}}
    assert merged.conflicts[0]["winner"] == "crm"


def test_do_not_sync_and_platform_owned_fields_are_ignored_inbound(cfg: domain.SyncConfig) -> None:
    merged = domain.merge_inbound(cfg, {"nurture_internal_notes": "x", "nurture_score": "99", "favourite": "blue"},
                                  T0, lead(), {})
    assert merged.fields == {"attributes": {"crm_favourite": "blue"}}


def test_outbound_properties_follow_ownership(cfg: domain.SyncConfig) -> None:
    current = lead(attributes={"company": "Acme", "phone": "1", "notes_internal": "secret"})
    computed = domain.computed_values(cfg, current, [{"journey": "family", "status": "active"}], owner="o@x",
                                      converted_at=None)
    created = domain.outbound_properties(cfg, current, {}, computed, contact_exists=False)
    assert created["email"] == "a@example.com" and created["phone"] == "1" and "nurture_internal_notes" not in created
    assert created["nurture_journeys"] == "family:active" and created["lifecyclestage"] == "lead"
    state = {"email": {"crm_value": "a@example.com"}, "attributes.company": {"crm_value": None},
             "first_name": {"crm_value": "Ann", "crm_at": T0.isoformat(),
                            "platform_at": (T0 + timedelta(minutes=1)).isoformat()}}
    later = domain.outbound_properties(cfg, current, state, computed, contact_exists=True)
    assert "email" not in later and "phone" not in later  # CRM-owned once the contact exists
    assert later["company"] == "Acme" and later["firstname"] == "Ana"


def test_platform_changes_from_the_crm_do_not_count(cfg: domain.SyncConfig) -> None:
    state = domain.track_platform_changes(cfg, lead(first_name="X"), {}, T0, from_crm=True)
    assert "platform_at" not in state["first_name"]
    state = domain.track_platform_changes(cfg, lead(first_name="Y"), state, T0, from_crm=False)
    assert state["first_name"]["platform_at"] == T0.isoformat()


def test_retry_delay_grows_caps_and_honours_retry_after() -> None:
    delays = [domain.retry_delay(7, a, None) for a in range(1, domain.MAX_ATTEMPTS)]
    assert delays[0] < delays[3] < delays[8]
    assert max(delays) <= domain.MAX_DELAY_S * 1.2
    assert sum(delays) > 3600  # an hour-long outage is outlasted
    assert domain.retry_delay(7, 1, 120) == 120
    assert domain.retry_delay(7, 1, 10**9) == domain.MAX_RETRY_AFTER_S
    assert domain.retry_delay(7, 3, None) == domain.retry_delay(7, 3, None)  # deterministic


def test_projection_changes() -> None:
    a = domain.projection(lead(counters={"opens_7d": 1}), [])
    b = domain.projection(lead(score=20, counters={"opens_7d": 2}), [{"journey": "family", "status": "active"}])
    assert domain.changed_keys(a, b) == ["score", "journeys", "engagement"]
    assert domain.changed_keys(a, a) == []


def test_assignment_tasks_and_notifications(cfg: domain.SyncConfig) -> None:
    facts = domain.facts_for(lead(segment="entrepreneur", score=45), [], None)
    assert domain.pick_team(cfg, facts) == ("investor_desk", "entrepreneur_qualified")
    facts = domain.facts_for(lead(interests={"countries": ["canada"]}), [], None)
    assert domain.pick_team(cfg, facts) == ("north_america", "north_america_interest")
    # The API's own shape: ISO codes, from a page view's country or the profile's countries of interest.
    for shaped in (lead(interests={"countries": ["CA"]}), lead(attributes={"countries_of_interest": ["AU", "US"]})):
        assert domain.pick_team(cfg, domain.facts_for(shaped, [], None)) == ("north_america", "north_america_interest")
    assert domain.pick_team(cfg, domain.facts_for(lead(segment=None), [], None)) == ("general", "everyone_else")
    plans = domain.planned_tasks(cfg, "l1", domain.facts_for(lead(score=80), ["sales_alert"], None), T0)
    assert [(p.kind, p.priority) for p in plans] == [("sales_alert", "high"), ("notify", "high")]
    assert [p.dedupe_key for p in plans] == ["rule:sales_alert:l1:2026-01-05", "notify:high_priority_lead:l1"]
    assert plans[0].due_at == T0 + timedelta(hours=4)
    assert domain.planned_tasks(cfg, "l1", domain.facts_for(lead(), [], None), T0) == []


leads = st.fixed_dictionaries({
    "id": st.just("l"), "segment": st.sampled_from(["family", "entrepreneur", "skilled_professional", ""]),
    "score": st.integers(0, 120), "grade": st.sampled_from("ABCD"),
    "interests": st.fixed_dictionaries({"countries": st.lists(st.sampled_from(["canada", "usa", "uk"]))}),
    "attributes": st.fixed_dictionaries({}, optional={"country": st.sampled_from(["Canada", "France"])}),
})


@settings(max_examples=150, deadline=None)
@given(leads, st.lists(st.sampled_from(["sales_alert", "mql_reached", "high_engagement", "other"]), unique=True))
def test_engine_agrees_with_reference(lead_facts: dict, signals: list[str]) -> None:
    cfg = domain.load_config()
    facts = domain.facts_for(lead_facts, signals, None)
    for compiled in (cfg.assignment, cfg.tasks, cfg.notifications):
        assert [m.rule for m in compiled.evaluate(facts)] == reference_evaluate(compiled.specs, facts)


def test_recommendation_document_is_escaped() -> None:
    doc = domain.recommendation_document(
        lead(first_name="<script>", segment="entrepreneur", attributes={"budget": "500k"},
             interests={"countries": ["canada"], "topics": []}),
        [{"journey": "entrepreneur", "status": "active", "stage": "consideration"}], owner="o@x",
        meeting_link="https://meet.example/o", task_title="Call", why="Sales alert")
    assert "<script>" not in doc and "&lt;script&gt;" in doc
    assert "investor-visa" in doc and "https://meet.example/o" in doc and "canada" in doc


def test_timeline_reads_back_in_the_order_written_within_one_instant() -> None:
    # Under a virtual clock a cascade (assigned, task created, merged, pushed) shares one time: the
    # lead's timeline must still show cause before effect.
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from services.crm_sync import storage
    from services.crm_sync.tables import metadata

    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    written = ["assigned", "task_created", "task_merged", "task_pushed", "contact_pushed"] * 4
    with Session(engine) as s:
        for kind in written:
            storage.add_timeline(s, "l1", T0, kind, kind, {})
        s.commit()
        assert [i.type for i in storage.get_timeline(s, "l1", 100)] == written


def test_modification_times_ahead_of_the_clock(cfg: domain.SyncConfig) -> None:
    assert cfg.max_clock_skew == timedelta(minutes=30)
    assert domain.ahead_of_clock(cfg, "deal.modified_at", T0 + timedelta(minutes=29), T0) is None
    assert domain.ahead_of_clock(cfg, "deal.modified_at", T0 - timedelta(days=400), T0) is None
    why = domain.ahead_of_clock(cfg, "deal.modified_at", T0 + timedelta(days=3), T0)
    assert why and why.startswith("deal.modified_at 2026-01-08T09:00:00") and "3.0 d ahead" in why


@pytest.mark.parametrize(("crm_value", "pushed"), [
    ("ana@crm.example", False),   # the CRM's own value, different from the platform's: the CRM keeps it
    ("a@example.com", False),     # the same value: nothing to push
    (None, True),                 # the CRM's is blank: the platform's value is kept and pushed
])
def test_a_crm_preferred_field_is_not_pushed_back_over_the_crms_value(cfg: domain.SyncConfig, crm_value: str | None,
                                                                      pushed: bool) -> None:
    current = lead(attributes={"company": "Acme"})
    computed = domain.computed_values(cfg, current, [], owner=None, converted_at=None)
    state = {"email": {"crm_value": crm_value, "crm_at": T0.isoformat(),
                       "platform_at": (T0 + timedelta(hours=1)).isoformat()},
             "attributes.company": {"crm_value": None if pushed else "Globex", "crm_at": T0.isoformat()}}
    props = domain.outbound_properties(cfg, current, state, computed, contact_exists=True)
    assert ("email" in props) is pushed and ("company" in props) is pushed
    if pushed:
        assert (props["email"], props["company"]) == ("a@example.com", "Acme")
    # The same lead on a contact that does not exist yet: every known value goes.
    created = domain.outbound_properties(cfg, current, state, computed, contact_exists=False)
    assert (created["email"], created["company"]) == ("a@example.com", "Acme")


@pytest.mark.parametrize(("platform_after_crm", "pushed"), [
    (timedelta(seconds=-1), False), (timedelta(0), False), (timedelta(seconds=1), True)])
def test_most_recent_pushes_only_a_platform_change_newer_than_the_crms(cfg: domain.SyncConfig,
                                                                       platform_after_crm: timedelta,
                                                                       pushed: bool) -> None:
    current = lead(first_name="Ana")
    computed = domain.computed_values(cfg, current, [], owner=None, converted_at=None)
    state = {"first_name": {"crm_value": "Anna", "crm_at": T0.isoformat(),
                            "platform_at": (T0 + platform_after_crm).isoformat()}}
    props = domain.outbound_properties(cfg, current, state, computed, contact_exists=True)
    assert ("firstname" in props) is pushed
    # Inbound, the same instants: the CRM's change wins a tie (it is applied), a newer platform one does not.
    merged = domain.merge_inbound(cfg, {"firstname": "Anna"}, T0, current, state)
    assert ("first_name" in merged.fields) is (not pushed)


def test_computed_values_are_exactly_what_the_crm_is_told(cfg: domain.SyncConfig) -> None:
    current = lead(score=72.9, grade="A", segment="entrepreneur", lifecycle_stage="sql", last_engaged_at="2026-01-04",
                   counters={"opens_7d": 3, "clicks_7d": 0, "downloads": 2, "last_engagement_at": "x"})
    values = domain.computed_values(cfg, current, [{"journey": "entrepreneur", "status": "active"},
                                                   {"journey": "webinar", "status": "completed"}],
                                    owner="rep@example.com", converted_at=T0)
    assert values == {
        "score": "72", "grade": "A", "segment": "entrepreneur",
        "lifecycle_stage": cfg.lifecycle_map.get("sql", "sql"), "qualification": "SQL",
        "journeys": "entrepreneur:active;webinar:completed", "engagement_summary": "opens_7d=3, downloads=2",
        "last_engaged_at": "2026-01-04", "converted_at": T0.isoformat(), "owner": "rep@example.com"}
    bare = domain.computed_values(cfg, {"lifecycle_stage": None}, [], owner=None, converted_at=None)
    assert bare == {"score": "0", "grade": "", "segment": "", "lifecycle_stage": cfg.lifecycle_map.get("", ""),
                    "qualification": "NURTURING", "journeys": "", "engagement_summary": "none",
                    "last_engaged_at": "", "converted_at": "", "owner": ""}
    for stage, qualification in (("mql", "MQL"), ("customer", "CUSTOMER"), ("trial", "TRIAL"), ("lead", "NURTURING")):
        assert domain.computed_values(cfg, {"lifecycle_stage": stage}, [], owner=None,
                                      converted_at=None)["qualification"] == qualification


def test_the_projection_the_change_feed_follows(cfg: domain.SyncConfig) -> None:
    current = lead(score=None, counters={"opens_7d": 0, "clicks_30d": 4, "pricing_views": None, "other": 9})
    assert domain.projection(current, [{"journey": "family", "status": "active", "stage": "welcome"},
                                       {"journey": "webinar", "status": "exited"}]) == {
        "score": 0, "grade": "C", "lifecycle_stage": "lead", "segment": "family",
        "journeys": [{"journey": "family", "status": "active", "stage": "welcome"},
                     {"journey": "webinar", "status": "exited", "stage": ""}],
        "engagement": {"opens_7d": 0, "clicks_30d": 4}}
    assert domain.projection({}, []) == {"score": 0, "grade": "", "lifecycle_stage": "", "segment": "",
                                         "journeys": [], "engagement": {}}


@pytest.mark.parametrize(("ahead", "span"), [
    (timedelta(0), None), (timedelta(minutes=30), None),            # at most the allowed skew: taken
    (timedelta(minutes=30, seconds=1), "30 min"), (timedelta(minutes=59, seconds=59), "59 min"),
    (timedelta(hours=1), "1.0 h"), (timedelta(days=1), "1.0 d"), (timedelta(days=2, hours=12), "2.5 d"),
])
def test_a_crm_time_ahead_of_our_clock_by_more_than_the_skew_is_refused(cfg: domain.SyncConfig, ahead: timedelta,
                                                                        span: str | None) -> None:
    why = domain.ahead_of_clock(cfg, "modified", T0 + ahead, T0)
    if span is None:
        assert why is None
    else:
        assert why == (f"modified {(T0 + ahead).isoformat()} is {span} ahead of the service clock "
                       f"({T0.isoformat()}); at most 30 min of clock skew is accepted: check the sender's clock "
                       "and time zone")


def test_spans_read_in_the_largest_whole_unit() -> None:
    assert [domain._span(timedelta(seconds=s)) for s in (0, 59, 60, 3599, 3600, 86399, 86400)] == [
        "0 s", "59 s", "1 min", "59 min", "1.0 h", "24.0 h", "1.0 d"]


@pytest.mark.parametrize(("job", "attempt", "retry_after", "seconds"), [
    (1, 1, None, 1.816), (1, 2, None, 4.564), (7, 3, None, 8.472), (7, 30, None, 1965.6), (7, 0, None, 2.25),
    (7, 1, 1000.0, 1000.0), (7, 1, 10**6, 3600.0), (7, 1, 0.5, 1.734),
])
def test_retry_delay_is_exponential_with_a_fixed_spread_and_honours_retry_after(
        job: int, attempt: int, retry_after: float | None, seconds: float) -> None:
    assert domain.retry_delay(job, attempt, retry_after) == seconds
    base = min(2.0 * 2 ** max(0, attempt - 1), 1800.0)
    if retry_after is None:
        assert 0.8 * base <= seconds <= 1.2 * base


def test_the_recommendation_document_for_the_salesperson() -> None:
    lead_ = {"first_name": "Ana", "last_name": "Diaz <x>", "email": "a@example.com", "segment": "family", "score": 55,
             "grade": "B", "lifecycle_stage": "mql", "interests": {"countries": ["CA", "AU"], "topics": ["education"]},
             "counters": {"opens_7d": 3, "clicks_7d": 0, "downloads": 1},
             "attributes": {"profession": "nurse", "crm_x": "hidden", "children": 2}}
    doc = domain.recommendation_document(
        lead_, [{"journey": "family", "status": "active", "stage": "consideration"},
                {"journey": "webinar", "status": "completed"}],
        owner="rep@example.com", meeting_link="https://meet.example/rep?a=1&b=2", task_title="Call <Ana>",
        why="score 55 & pricing")
    assert doc == (
        '<!doctype html><html><head><meta charset="utf-8"><title>Recommendation for Ana Diaz &lt;x&gt;</title></head>'
        '<body><h1>Call &lt;Ana&gt;</h1><p>score 55 &amp; pricing</p><h2>Ana Diaz &lt;x&gt;</h2><p>Segment: family'
        ' · Score 55 · Grade B · Stage mql</p><p>Countries: CA, AU; topics: education</p><h3>Profile</h3><table><tr>'
        '<th>children</th><td>2</td></tr><tr><th>profession</th><td>nurse</td></tr></table><h3>Journeys</h3><ul><li>'
        'family: active (consideration)</li><li>webinar: completed</li></ul><h3>Engagement</h3><ul><li>opens_7d: 3'
        '</li><li>downloads: 1</li></ul><h3>Recommended next steps</h3><ol><li>Discuss schooling and healthcare in '
        'the destination</li><li>Share the family relocation timeline</li><li>Book a family consultation</li></ol>'
        '<p>Meeting link: <a href="https://meet.example/rep?a=1&amp;b=2">https://meet.example/rep?a=1&amp;b=2</a>'
        '</p><p>Owner: rep@example.com</p></body></html>')
    bare = domain.recommendation_document({"email": "z@example.com"}, [], owner=None, meeting_link=None,
                                          task_title="T", why="W")
    assert bare == (
        '<!doctype html><html><head><meta charset="utf-8"><title>Recommendation for z@example.com</title></head>'
        '<body><h1>T</h1><p>W</p><h2>z@example.com</h2><p>Segment: unknown · Score 0 · Grade  · Stage </p><p>'
        'Countries: not stated; topics: not stated</p><h3>Profile</h3><table></table><h3>Journeys</h3><ul><li>none'
        '</li></ul><h3>Engagement</h3><ul><li>none recorded</li></ul><h3>Recommended next steps</h3><ol><li>Qualify '
        'needs and timeline</li><li>Book a consultation</li></ol><p>Owner: unassigned</p></body></html>')


def test_an_inbound_contact_merges_field_by_field_with_each_conflict_and_state_recorded(
        cfg: domain.SyncConfig) -> None:
    current = lead(attributes={"company": "Acme", "phone": "1", "profession": "nurse"})
    later = (T0 + timedelta(hours=1)).isoformat()
    state = {"first_name": {"platform_at": later, "platform_value": "Ana"}}
    props = {"firstname": "Anna", "company": "Beta", "phone": "2", "jobtitle": "nurse", "lifecycle_note": "x",
             "empty": ""}
    merged = domain.merge_inbound(cfg, props, T0, current, state)
    at = T0.isoformat()
    assert merged.fields == {"attributes": {"company": "Beta", "phone": "2", "crm_lifecycle_note": "x"}}
    assert merged.conflicts == [
        {"field": "first_name", "crm_property": "firstname", "policy": "most_recent", "crm_value": "Anna",
         "platform_value": "Ana", "winner": "platform", "crm_modified_at": at, "platform_changed_at": later},
        {"field": "attributes.company", "crm_property": "company", "policy": "prefer_crm_unless_blank",
         "crm_value": "Beta", "platform_value": "Acme", "winner": "crm", "crm_modified_at": at,
         "platform_changed_at": None},
        {"field": "attributes.phone", "crm_property": "phone", "policy": "always_crm", "crm_value": "2",
         "platform_value": "1", "winner": "crm", "crm_modified_at": at, "platform_changed_at": None}]
    assert merged.state == {
        "first_name": {"crm_at": at, "crm_value": "Anna", "platform_at": later, "platform_value": "Ana"},
        "attributes.company": {"crm_at": at, "crm_value": "Beta", "platform_value": "Beta"},
        "attributes.phone": {"crm_at": at, "crm_value": "2", "platform_value": "2"},
        "attributes.profession": {"crm_at": at, "crm_value": "nurse"}}
    assert state == {"first_name": {"platform_at": later, "platform_value": "Ana"}}   # the input is not changed
    # The platform changes a field afterwards: noted with its time (for most_recent), others left alone.
    changed = domain.track_platform_changes(cfg, {**current, "attributes": {"company": "Beta", "phone": "2",
                                                                           "profession": "nurse"}},
                                            merged.state, T0 + timedelta(hours=2), from_crm=False)
    two = (T0 + timedelta(hours=2)).isoformat()
    assert changed["attributes.company"] == {"crm_at": at, "crm_value": "Beta", "platform_value": "Beta"}
    assert changed["attributes.profession"] == {"crm_at": at, "crm_value": "nurse", "platform_value": "nurse",
                                                "platform_at": two}
    assert changed["email"] == {"platform_value": "a@example.com", "platform_at": two}
    assert changed["first_name"] == merged.state["first_name"]
