"""CRM sync decisions, with no gRPC, SQL nor HTTP: field ownership (inbound merge, outbound
properties, conflicts), the change-feed projection, retry backoff, rule evaluation for assignment,
tasks and notifications (rules as data in sync.yaml, evaluated by nurture.rules), and the
personalised recommendation document attached to sales tasks."""

from __future__ import annotations

import hashlib
import html
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

from pydantic import Field

from nurture import times
from nurture.datafiles import DataFileError, Open, Seconds, Strict, read_yaml, validate
from nurture.jsontypes import JsonMapping, JsonObject
from nurture.revenue import Rates, convert, load_rates
from nurture.rules import CompiledRules, Match, RuleSpec, compile_rules

POLICIES = ("prefer_crm_unless_blank", "always_crm", "most_recent", "do_not_sync", "always_platform")
INBOUND_POLICIES = ("prefer_crm_unless_blank", "always_crm", "most_recent")
PROFILE_FIELDS = ("email", "first_name", "last_name")
ENGAGEMENT_KEYS = ("opens_7d", "opens_30d", "clicks_7d", "clicks_30d", "downloads", "high_intent_views",
                   "pricing_views", "last_engagement_at")
DEFAULT_CONFIG = Path(__file__).parent / "data" / "sync.yaml"

# Outbound retry schedule: exponential from 2 s, capped at 30 min; 14 tries span about 2 hours, so a
# CRM that is down for an hour loses nothing.
MAX_ATTEMPTS = 14
BASE_DELAY_S = 2.0
MAX_DELAY_S = 1800.0
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True)
class FieldRule:
    lead: str
    crm: str
    policy: str


@dataclass(frozen=True)
class Member:
    owner: str
    meeting_link: str


@dataclass
class SyncConfig:
    version: int
    fields: list[FieldRule]
    lifecycle_map: dict[str, str | None]   # None: the stage is not pushed (the CRM keeps its own)
    deal_events: dict[str, str]
    deal_stages: list[str]
    activity_kinds: list[str]
    teams: dict[str, list[Member]]
    assignment: CompiledRules
    tasks: CompiledRules
    notifications: CompiledRules
    task_holds: CompiledRules | None = None  # sales feedback that holds tasks (closed loop)
    max_clock_skew: timedelta = timedelta(minutes=30)
    by_crm: dict[str, FieldRule] = field(default_factory=dict)
    qualification: Qualification | None = None   # the lead status the CRM is told (sync.yaml `qualification`)
    revenue_currency: str = "USD"   # the one currency revenue is counted in (nurture/revenue.yaml)
    rates: dict[str, float] = field(default_factory=dict)  # units of revenue_currency per unit of each other


class FieldEntry(Strict):
    lead: str
    crm: str
    policy: str


class MemberEntry(Strict):
    owner: str
    meeting_link: str = ""


class RuleEntry(Open):
    """A rule: its name, its condition (checked when compiled), and its action's own keys."""

    name: str
    when: dict[str, Any]


class AssignmentEntry(RuleEntry):
    team: str


# An ISO 4217 code: three capital letters.


class QualificationEntry(Strict):
    by_stage: dict[str, str] = Field(default_factory=dict)
    default: str = "NURTURING"
    rules: list[RuleEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Qualification:
    """The lead status pushed to the CRM: the first matching rule's `status` (sales feedback), else the
    lifecycle stage's, else the default."""

    by_stage: dict[str, str]
    default: str
    rules: CompiledRules


class SyncFile(Strict):
    """sync.yaml's shape (see the file's comments for what each part means)."""

    version: int
    fields: list[FieldEntry]
    lifecycle_map: dict[str, str | None]
    deal_events: dict[str, str]
    deal_stages: list[str]
    activity_kinds: list[str]
    max_clock_skew_s: Seconds = 1800.0
    qualification: QualificationEntry = QualificationEntry(
        by_stage={"mql": "MQL", "sql": "SQL", "customer": "CUSTOMER", "trial": "TRIAL"})
    teams: dict[str, list[MemberEntry]]
    assignment: list[AssignmentEntry]
    tasks: list[RuleEntry]
    task_holds: list[RuleEntry] | None = None
    notifications: list[RuleEntry]


def load_config(path: Path = DEFAULT_CONFIG) -> SyncConfig:
    """Read and validate sync.yaml (a DataFileError listing every problem); compile its rule sets (one
    ruleset name per version)."""
    raw = validate(SyncFile, read_yaml(path, empty={}), path)
    rates = load_rates()  # (shared with the gateway: nurture/revenue.yaml)
    version = raw.version
    fields = [FieldRule(f.lead, f.crm, f.policy) for f in raw.fields]
    problems = [f"field {f.lead}: unknown policy {f.policy}" for f in fields if f.policy not in POLICIES]
    teams = {name: [Member(m.owner, m.meeting_link) for m in members] for name, members in raw.teams.items()}
    problems += [f"assignment {rule.name}: unknown or empty team {rule.team}"
                 for rule in raw.assignment if not teams.get(rule.team)]
    statuses = [(rule.name, (rule.model_extra or {}).get("status")) for rule in raw.qualification.rules]
    problems += [f"qualification.rules {name}: needs a status (a non-empty string)"
                 for name, status in statuses if not isinstance(status, str) or not status]
    if problems:
        raise DataFileError(problems, path)

    def specs(items: Sequence[RuleEntry]) -> list[RuleSpec]:
        return [RuleSpec(i.name, i.when, {k: v for k, v in i.model_dump().items() if k not in ("name", "when")})
                for i in items]

    cfg = SyncConfig(
        version=version, fields=fields, lifecycle_map=dict(raw.lifecycle_map),
        deal_events=dict(raw.deal_events), deal_stages=list(raw.deal_stages),
        activity_kinds=list(raw.activity_kinds), teams=teams,
        assignment=compile_rules(f"crm_sync.assignment.v{version}", specs(raw.assignment)),
        tasks=compile_rules(f"crm_sync.tasks.v{version}", specs(raw.tasks)),
        notifications=compile_rules(f"crm_sync.notifications.v{version}", specs(raw.notifications)),
        task_holds=compile_rules(f"crm_sync.task_holds.v{version}", specs(raw.task_holds or [])),
        max_clock_skew=timedelta(seconds=raw.max_clock_skew_s),
        revenue_currency=rates.currency, rates=dict(rates.rates),
        qualification=Qualification(
            dict(raw.qualification.by_stage), raw.qualification.default,
            compile_rules(f"crm_sync.qualification.v{version}", specs(raw.qualification.rules))),
    )
    cfg.by_crm = {f.crm: f for f in fields}
    return cfg


# ---------------------------------------------------------------------------------------------------
# Field values and ownership


def ahead_of_clock(cfg: SyncConfig, what: str, at: datetime, now: datetime) -> str | None:
    """Why a CRM modification time cannot be taken, or None: more than the allowed skew ahead of our
    clock it would order every real update after it as stale (and win every `most_recent` field)."""
    ahead = at - now
    if ahead <= cfg.max_clock_skew:
        return None
    return (f"{what} {_iso(at)} is {_span(ahead)} ahead of the service clock ({_iso(now)}); at most "
            f"{_span(cfg.max_clock_skew)} of clock skew is accepted: check the sender's clock and time zone")


def revenue(cfg: SyncConfig, amount: float, currency: str) -> tuple[float, str]:
    """A deal's amount in the currency revenue is counted in, and the deal's currency code as read (no
    code: that currency, as a CRM of one currency sends none). Reports add amounts up, so one in another
    currency is converted at sync.yaml's rate; a currency without a rate is an InputError's text, raised
    by the caller (ValueError), since adding it as it is would count 100 JPY as 100 USD. The same
    conversion as an `opportunity_won` posted through the API (nurture.revenue)."""
    return convert(Rates(cfg.revenue_currency, cfg.rates), amount, currency, "deal.currency", "deal.amount")


def _span(d: timedelta) -> str:
    s = int(d.total_seconds())
    if s >= 86400:
        return f"{s / 86400:.1f} d"
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s // 60} min" if s >= 60 else f"{s} s"


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def lead_value(lead: Mapping[str, Any], name: str) -> Any:
    """A mapped field's value in a lead snapshot (`attributes.x` reads the attribute)."""
    if name.startswith("attributes."):
        return (lead.get("attributes") or {}).get(name.split(".", 1)[1])
    return lead.get(name)


def property_problem(cfg: SyncConfig, props: JsonMapping, where: str) -> str | None:
    """Why a contact's properties cannot be applied, or None. A mapped property becomes a lead field's
    text: a list or an object has none (it was stored as Python's repr, `['x']`)."""
    for prop, value in props.items():
        rule = cfg.by_crm.get(prop)
        if rule is not None and isinstance(value, (list, dict)):
            return f"{where}.{prop} must be a string, number or boolean (it maps to {rule.lead})"
    return None


def _text(value: Any) -> str | None:
    return None if blank(value) else str(value)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


_dt = times.parse_utc  # (this one read a time without a zone as naive, which then failed beside aware ones)


class FieldState(TypedDict, total=False):
    """A mapped field's sync state, kept per lead as JSON (`LeadRecord.fields`): the platform's value
    and when the platform last changed it, what the CRM last said and when (times ISO 8601)."""

    platform_value: str | None
    platform_at: str | None
    crm_value: str | None
    crm_at: str | None


class Conflict(TypedDict):
    """Two different non-blank values of a field where one side lost (a timeline line's details)."""

    field: str
    crm_property: str
    policy: str
    crm_value: str
    platform_value: str
    winner: str              # crm | platform
    crm_modified_at: str | None
    platform_changed_at: str | None


@dataclass
class InboundMerge:
    """What to write to the lead, the conflicts found, and the updated per-field state."""

    fields: JsonObject                 # the lead fields to send to scoring (attributes under "attributes")
    conflicts: list[Conflict]
    state: dict[str, FieldState]
    # The mapped fields this version changes: its value differs from crm_sync's copy of the lead or from
    # the CRM's previous version. Empty: the contact is `unchanged` (what is sent then changes nothing).
    changed: list[str] = field(default_factory=list)


# Policies under which the CRM owns a field: its value is sent whether or not it looks changed, so scoring,
# which orders a contact's versions by modification time under the lead's lock, has the final word.
CRM_OWNED = frozenset({"always_crm", "prefer_crm_unless_blank"})


def merge_inbound(
    cfg: SyncConfig, props: JsonMapping, crm_at: datetime, lead: JsonMapping | None,
    state: Mapping[str, FieldState],
) -> InboundMerge:
    """Apply a CRM contact's properties under each field's ownership policy.

    `props` are CRM property names → values (absent = not sent, "" or None = blank); `lead` is the
    platform's current snapshot (None when the lead is new here); `state[field]` holds `platform_at`
    (when the platform last changed the field) and what the CRM last said (`crm_value`, `crm_at`).
    A conflict is two different non-blank values where one side loses; it names the winner.

    `lead` is the bus's copy, behind the lead while the bus carries the CRM's last versions, so it
    cannot decide alone what to send: after X → Y → X in quick succession it still shows X, and the
    third version, judged against it, sent nothing and the lead kept Y. A value the policy applies is
    sent when it differs from that copy or from the CRM's previous version (state `crm_value`: the CRM
    changed it), and always for a field the CRM owns; scoring writes only what differs from the lead."""
    out: JsonObject = {}
    attributes: JsonObject = {}
    conflicts: list[Conflict] = []
    changed: list[str] = []
    new_state = {k: v.copy() for k, v in state.items()}
    for prop, value in props.items():
        rule = cfg.by_crm.get(prop)
        if rule is None:
            # Unmapped CRM properties are kept as attributes so nothing the CRM says is lost.
            if not blank(value):
                attributes[f"crm_{prop}"] = value
                if lead is None or lead_value(lead, f"attributes.crm_{prop}") != value:
                    changed.append(f"attributes.crm_{prop}")
            continue
        if rule.policy not in INBOUND_POLICIES:
            continue
        crm_value = _text(value)
        platform_value = _text(lead_value(lead, rule.lead)) if lead else None
        st = new_state.setdefault(rule.lead, {})
        platform_at = _dt(st.get("platform_at"))
        crm_changed = "crm_value" in st and st["crm_value"] != crm_value
        st["crm_value"], st["crm_at"] = crm_value, _iso(crm_at)
        if rule.policy == "always_crm":
            apply = True
        elif rule.policy == "prefer_crm_unless_blank":
            apply = crm_value is not None
        else:  # most_recent: the platform wins only with a change newer than the CRM's modification
            apply = platform_at is None or crm_at >= platform_at
        differs = crm_value is not None and platform_value is not None and crm_value != platform_value
        if differs:
            assert crm_value is not None and platform_value is not None
            conflicts.append({"field": rule.lead, "crm_property": prop, "policy": rule.policy,
                              "crm_value": crm_value, "platform_value": platform_value,
                              "winner": "crm" if apply else "platform",
                              "crm_modified_at": _iso(crm_at), "platform_changed_at": _iso(platform_at)})
        new = crm_value != platform_value or crm_changed
        if not apply or not (new or rule.policy in CRM_OWNED):
            continue
        if new:
            changed.append(rule.lead)
        if rule.lead.startswith("attributes."):
            attributes[rule.lead.split(".", 1)[1]] = crm_value
        else:
            out[rule.lead] = crm_value
        st["platform_value"] = crm_value
    if attributes:
        out["attributes"] = attributes
    return InboundMerge(fields=out, conflicts=conflicts, state=new_state, changed=changed)


def track_platform_changes(
    cfg: SyncConfig, lead: JsonMapping, state: Mapping[str, FieldState], at: datetime, *, from_crm: bool
) -> dict[str, FieldState]:
    """Note when the platform changed a mapped field (for `most_recent`); changes the CRM itself
    made (source crm:...) are not platform changes."""
    new_state = {k: v.copy() for k, v in state.items()}
    for rule in cfg.fields:
        if rule.policy not in INBOUND_POLICIES:
            continue
        value = _text(lead_value(lead, rule.lead))
        st = new_state.setdefault(rule.lead, {})
        if st.get("platform_value", "\0") != value:
            st["platform_value"] = value
            if not from_crm:
                st["platform_at"] = _iso(at)
    return new_state


def computed_values(
    cfg: SyncConfig, lead: Mapping[str, Any], journeys: Sequence[Mapping[str, Any]], *, owner: str | None,
    converted_at: datetime | None,
) -> dict[str, str]:
    """The platform-owned values pushed to the CRM (score, qualification, nurture participation,
    engagement summary, conversion)."""
    stage = str(lead.get("lifecycle_stage") or "")
    counters = lead.get("counters") or {}
    qualification = _qualification(cfg, lead, journeys, stage)
    summary = ", ".join(f"{k}={counters[k]}" for k in ENGAGEMENT_KEYS[:-1] if counters.get(k))
    values = {
        "score": str(int(lead.get("score") or 0)),
        "grade": str(lead.get("grade") or ""),
        "segment": str(lead.get("segment") or ""),
        "lifecycle_stage": cfg.lifecycle_map.get(stage, stage),
        "qualification": qualification,
        "journeys": ";".join(f"{j.get('journey')}:{j.get('status')}" for j in journeys),
        "engagement_summary": summary or "none",
        "last_engaged_at": str(lead.get("last_engaged_at") or ""),
        "converted_at": converted_at.isoformat() if converted_at else "",
        "owner": owner or "",
    }
    # A stage mapped to null is left to the CRM (not pushed): the lead status tells it apart.
    return {k: v for k, v in values.items() if v is not None}


def _qualification(cfg: SyncConfig, lead: Mapping[str, Any], journeys: Sequence[Mapping[str, Any]],
                   stage: str) -> str:
    """sync.yaml's `qualification`: a rule on the lead and its journeys' statuses (`journeys.<key>`, as the
    task holds read them) first, then the lifecycle stage's (a lead sales turned down is scoring's
    `recycled`, RECYCLED here, so it is not told to the CRM as an MQL again)."""
    q = cfg.qualification
    if q is None:
        return "NURTURING"
    matches = q.rules.evaluate({"lead": dict(lead), "journeys": journey_statuses(journeys)})
    if matches:
        return str(matches[0].meta["status"])
    return q.by_stage.get(stage, q.default)


def outbound_properties(
    cfg: SyncConfig, lead: JsonMapping, state: Mapping[str, FieldState], computed: Mapping[str, str],
    *, contact_exists: bool,
) -> dict[str, str]:
    """CRM properties to write for a lead under each field's policy. Creation sends every known
    value; afterwards CRM-owned fields are left alone."""
    props: dict[str, str] = {}
    for rule in cfg.fields:
        if rule.policy == "do_not_sync":
            continue
        if rule.policy == "always_platform":
            if rule.lead in computed:
                props[rule.crm] = computed[rule.lead]
            continue
        value = _text(lead_value(lead, rule.lead))
        if value is None:
            continue
        st = state.get(rule.lead, {})
        if not contact_exists:
            props[rule.crm] = value
        elif rule.policy == "prefer_crm_unless_blank":
            if st.get("crm_value") is None:
                props[rule.crm] = value
        elif rule.policy == "most_recent":
            platform_at, crm_at = _dt(st.get("platform_at")), _dt(st.get("crm_at"))
            if value != st.get("crm_value") and platform_at is not None and (crm_at is None or platform_at > crm_at):
                props[rule.crm] = value
    return props


def props_hash(props: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(props, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------
# Change feed


def projection(lead: Mapping[str, Any], journeys: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the CRM follows: score, grade, stage, segment, journey participation, engagement."""
    counters = lead.get("counters") or {}
    return {
        "score": int(lead.get("score") or 0),
        "grade": str(lead.get("grade") or ""),
        "lifecycle_stage": str(lead.get("lifecycle_stage") or ""),
        "segment": str(lead.get("segment") or ""),
        "journeys": [{"journey": j.get("journey"), "status": j.get("status"), "stage": j.get("stage", "")}
                     for j in journeys],
        "engagement": {k: counters.get(k) for k in ENGAGEMENT_KEYS if counters.get(k) is not None},
    }


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [k for k in ("score", "grade", "lifecycle_stage", "segment", "journeys", "engagement")
            if old.get(k) != new.get(k)]


# ---------------------------------------------------------------------------------------------------
# Retries


def retry_delay(job_id: int, attempt: int, retry_after: float | None) -> float:
    """Seconds before try `attempt + 1`: exponential with a deterministic ±20 % spread (so virtual
    runs repeat exactly and a recovering CRM is not hit by every job at once), never sooner than the
    CRM's Retry-After."""
    delay = min(BASE_DELAY_S * 2 ** max(0, attempt - 1), MAX_DELAY_S)
    spread = (zlib.crc32(f"{job_id}:{attempt}".encode()) % 401 - 200) / 1000.0
    delay *= 1.0 + spread
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return round(delay, 3)


# ---------------------------------------------------------------------------------------------------
# Process automation


def facts_for(lead: Mapping[str, Any], signals: Sequence[str], event: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"lead": dict(lead), "signals": list(signals), "event": dict(event or {})}


def pick_team(cfg: SyncConfig, facts: Mapping[str, Any]) -> tuple[str, str] | None:
    """(team, rule) of the first assignment rule that matches."""
    matches = cfg.assignment.evaluate(facts)
    if not matches:
        return None
    return str(matches[0].meta["team"]), matches[0].rule


@dataclass(frozen=True)
class TaskPlan:
    rule: str
    kind: str
    title: str
    priority: str
    due_at: datetime
    dedupe_key: str
    why: str
    facts: Mapping[str, Any]


def planned_tasks(cfg: SyncConfig, lead_id: str, facts: Mapping[str, Any], now: datetime) -> list[TaskPlan]:
    """Sales tasks and notifications the rules ask for. Tasks are deduplicated per lead, rule and day
    (one alert a day is enough for a salesperson); notifications once per lead and rule."""
    plans = []
    day = now.date().isoformat()
    for m in cfg.tasks.evaluate(facts):
        plans.append(_plan(m, lead_id, now, f"rule:{m.rule}:{lead_id}:{day}"))
    for m in cfg.notifications.evaluate(facts):
        meta = {**m.meta, "kind": "notify", "priority": "high", "due_hours": 0}
        plans.append(_plan(Match(m.rule, meta, m.facts), lead_id, now, f"notify:{m.rule}:{lead_id}"))
    return plans


def journey_statuses(journeys: Sequence[Any] | None) -> dict[str, str]:
    """journey key -> the status of the lead's enrolment in it (active, paused, completed, exited), as
    crm_sync last heard from journeys; a live one wins over an ended one of the same key."""
    out: dict[str, str] = {}
    for e in journeys or []:
        if not (isinstance(e, Mapping) and isinstance(e.get("journey"), str) and isinstance(e.get("status"), str)):
            continue
        if out.get(e["journey"]) not in ("active", "paused"):
            out[e["journey"]] = e["status"]
    return out


def task_hold(cfg: SyncConfig, facts: Mapping[str, Any], journeys: Sequence[Any] | None = None) -> Match | None:
    """The first hold rule (closed-loop sales feedback) that stops sales tasks for these facts, with
    `journeys.<key>`: the status of the lead's enrolment in each journey (`journey_statuses`)."""
    facts = {**facts, "journeys": journey_statuses(journeys)}
    matches = cfg.task_holds.evaluate(facts) if cfg.task_holds is not None else []
    return matches[0] if matches else None


def _plan(m: Match, lead_id: str, now: datetime, key: str) -> TaskPlan:
    return TaskPlan(rule=m.rule, kind=str(m.meta["kind"]), title=str(m.meta.get("title", m.rule)),
                    priority=str(m.meta.get("priority", "normal")),
                    due_at=now + timedelta(hours=float(m.meta.get("due_hours", 24))), dedupe_key=key,
                    why=str(m.meta.get("why", "")), facts=dict(m.facts))


NEXT_STEPS = {
    "skilled_professional": ["Walk through the points calculator result and the strongest pathway",
                             "Offer the credential-recognition checklist", "Book a pathway consultation"],
    "family": ["Discuss schooling and healthcare in the destination", "Share the family relocation timeline",
               "Book a family consultation"],
    "entrepreneur": ["Review investment capacity against investor-visa thresholds",
                     "Share the business-plan requirements", "Book an investor-pathway consultation"],
}


def recommendation_document(
    lead: Mapping[str, Any], journeys: Sequence[Mapping[str, Any]], *, owner: str | None, meeting_link: str | None,
    task_title: str, why: str,
) -> str:
    """A personalised HTML brief for the salesperson, from the lead's profile and journey."""
    e = html.escape
    name = " ".join(str(p) for p in (lead.get("first_name"), lead.get("last_name")) if p) or str(lead.get("email"))
    segment = str(lead.get("segment") or "")
    interests = lead.get("interests") or {}
    counters = lead.get("counters") or {}
    attrs = lead.get("attributes") or {}
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in sorted(attrs.items())
                   if not str(k).startswith("crm_"))
    steps = "".join(f"<li>{e(s)}</li>" for s in NEXT_STEPS.get(segment, ["Qualify needs and timeline",
                                                                        "Book a consultation"]))
    journey_items = "".join(f"<li>{e(str(j.get('journey')))}: {e(str(j.get('status')))}"
                            f"{' (' + e(str(j.get('stage'))) + ')' if j.get('stage') else ''}</li>" for j in journeys)
    engagement = "".join(f"<li>{e(k)}: {e(str(counters[k]))}</li>" for k in ENGAGEMENT_KEYS if counters.get(k))
    link = f'<p>Meeting link: <a href="{e(meeting_link)}">{e(meeting_link)}</a></p>' if meeting_link else ""
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Recommendation for "
        f"{e(name)}</title></head><body>"
        f"<h1>{e(task_title)}</h1><p>{e(why)}</p>"
        f"<h2>{e(name)}</h2><p>Segment: {e(segment or 'unknown')} · Score {e(str(lead.get('score', 0)))} · "
        f"Grade {e(str(lead.get('grade', '')))} · Stage {e(str(lead.get('lifecycle_stage', '')))}</p>"
        f"<p>Countries: {e(', '.join(map(str, interests.get('countries', []))) or 'not stated')}; "
        f"topics: {e(', '.join(map(str, interests.get('topics', []))) or 'not stated')}</p>"
        f"<h3>Profile</h3><table>{rows}</table>"
        f"<h3>Journeys</h3><ul>{journey_items or '<li>none</li>'}</ul>"
        f"<h3>Engagement</h3><ul>{engagement or '<li>none recorded</li>'}</ul>"
        f"<h3>Recommended next steps</h3><ol>{steps}</ol>{link}"
        f"<p>Owner: {e(owner or 'unassigned')}</p></body></html>"
    )
