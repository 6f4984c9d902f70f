"""Proposals, the pure part: what a prospect is offered (plan, add-ons, pathways: rules as data in
data/proposals.yaml), the document that says it (data/proposal.html.j2), and the signed link that lets
the prospect read it without an account.

Nothing here does I/O after loading; app/proposals.py stores, links and sends."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import Field

from nurture.datafiles import DataFileError, Open, Strict, read_yaml, validate
from nurture.rules import CompiledRules, RuleSpec, compile_rules

DATA = Path(__file__).parent / "data"
DEFAULT_FILE = DATA / "proposals.yaml"
DOCUMENT_TEMPLATE = "proposal.html.j2"
MAX_PATHWAYS = 4


class PlanEntry(Strict):
    name: str
    price: float = Field(ge=0)
    period: str = ""  # "month" for a subscription; empty for a one-off fee
    summary: str
    includes: list[str] = Field(default_factory=list)


class AddonEntry(Strict):
    name: str
    price: float = Field(ge=0)
    summary: str


class Company(Strict):
    name: str
    address: str


class PlanRule(Strict):
    name: str
    when: dict[str, Any]
    plan: str = ""
    plan_from: str = ""  # a dotted fact naming the plan (a CRM deal's `properties.plan`)


class AddonRule(Strict):
    name: str
    why: str = ""
    when: dict[str, Any]
    addon: str


class PathwayRule(Open):
    name: str
    when: dict[str, Any]
    title: str
    summary: str


class ProposalsFile(Strict):
    version: int
    currency: str = Field(min_length=3, max_length=3)
    valid_days: int = Field(ge=1, le=365)
    generate_on_deal_stages: list[str] = Field(default_factory=list)
    email_template: str
    company: Company
    plans: dict[str, PlanEntry] = Field(min_length=1)
    addons: dict[str, AddonEntry] = Field(default_factory=dict)
    plan_rules: list[PlanRule] = Field(min_length=1)
    addon_rules: list[AddonRule] = Field(default_factory=list)
    pathways: list[PathwayRule] = Field(default_factory=list)


@dataclass(frozen=True)
class ProposalsConfig:
    file: ProposalsFile
    plan_rules: CompiledRules
    addon_rules: CompiledRules
    pathway_rules: CompiledRules
    document: Any  # the compiled Jinja template of the document

    @property
    def currency(self) -> str:
        return self.file.currency


@dataclass(frozen=True)
class Line:
    kind: str   # plan | addon
    key: str
    name: str
    price: float
    rule: str
    why: str = ""


@dataclass(frozen=True)
class Pathway:
    name: str
    title: str
    summary: str


@dataclass(frozen=True)
class Offer:
    """What one prospect is offered, and which rule chose each part (for the timeline)."""

    plan: str
    lines: tuple[Line, ...]
    pathways: tuple[Pathway, ...]

    @property
    def total(self) -> float:
        return round(sum(line.price for line in self.lines), 2)


class UnknownPlan(ValueError):
    """A caller named a plan proposals.yaml does not have."""


def load_proposals(path: Path = DEFAULT_FILE) -> ProposalsConfig:
    """Read and check proposals.yaml (a DataFileError listing every problem) and compile its rules."""
    raw = validate(ProposalsFile, read_yaml(path, empty={}), path)
    problems = [f"plan_rules.{r.name}: unknown plan {r.plan!r}" for r in raw.plan_rules
                if r.plan and r.plan not in raw.plans]
    problems += [f"plan_rules.{r.name}: give exactly one of plan and plan_from" for r in raw.plan_rules
                 if bool(r.plan) == bool(r.plan_from)]
    problems += [f"addon_rules.{r.name}: unknown add-on {r.addon!r}" for r in raw.addon_rules
                 if r.addon not in raw.addons]
    template_dir = path.parent
    env = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
    document = None
    try:
        document = env.from_string((template_dir / DOCUMENT_TEMPLATE).read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{DOCUMENT_TEMPLATE}: {exc.strerror or exc}")
    except Exception as exc:  # jinja2.TemplateSyntaxError and its kin
        problems.append(f"{DOCUMENT_TEMPLATE}: {exc}")
    if problems:
        raise DataFileError(problems, path)
    v = raw.version
    return ProposalsConfig(
        file=raw,
        plan_rules=compile_rules(f"crm_sync.proposal_plans.v{v}",
                                 [RuleSpec(r.name, r.when, {"plan": r.plan, "plan_from": r.plan_from})
                                  for r in raw.plan_rules]),
        addon_rules=compile_rules(f"crm_sync.proposal_addons.v{v}",
                                  [RuleSpec(r.name, r.when, {"addon": r.addon, "why": r.why})
                                   for r in raw.addon_rules]),
        pathway_rules=compile_rules(f"crm_sync.proposal_pathways.v{v}",
                                    [RuleSpec(r.name, r.when, {"title": r.title, "summary": r.summary})
                                     for r in raw.pathways]),
        document=document,
    )


def facts(lead: Mapping[str, Any], deal: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"lead": dict(lead), "deal": dict(deal or {})}


def _dotted(values: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = values
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def choose(cfg: ProposalsConfig, lead: Mapping[str, Any], deal: Mapping[str, Any] | None = None,
           requested_plan: str = "") -> Offer:
    """The plan (named by the caller, else the first plan rule that matches), every add-on whose rule
    matches, and the pathways that fit the profile."""
    plans = cfg.file.plans
    f = facts(lead, deal)
    if requested_plan:
        if requested_plan not in plans:
            raise UnknownPlan(f"unknown plan {requested_plan!r}; plans: {', '.join(plans)}")
        plan_key, plan_rule = requested_plan, "requested"
    else:
        plan_key, plan_rule = "", ""
        for m in cfg.plan_rules.evaluate(f):
            key = str(m.meta["plan"]) or str(_dotted(f, str(m.meta["plan_from"])) or "")
            if key in plans:
                plan_key, plan_rule = key, m.rule
                break
        if not plan_key:  # a file whose rules leave someone out: the first plan, said so
            plan_key, plan_rule = next(iter(plans)), "first_plan"
    plan = plans[plan_key]
    lines = [Line("plan", plan_key, plan.name, plan.price, plan_rule)]
    seen: set[str] = set()
    for m in cfg.addon_rules.evaluate(f):
        key = str(m.meta["addon"])
        if key not in seen:
            seen.add(key)
            addon = cfg.file.addons[key]
            lines.append(Line("addon", key, addon.name, addon.price, m.rule, str(m.meta.get("why", ""))))
    pathways = tuple(Pathway(m.rule, str(m.meta["title"]), str(m.meta["summary"]))
                     for m in cfg.pathway_rules.evaluate(f))[:MAX_PATHWAYS]
    return Offer(plan=plan_key, lines=tuple(lines), pathways=pathways)


def valid_until(cfg: ProposalsConfig, created_at: datetime) -> datetime:
    return created_at + timedelta(days=cfg.file.valid_days)


def render(cfg: ProposalsConfig, offer: Offer, lead: Mapping[str, Any], *, reference: str, created_at: datetime,
           owner: str | None, meeting_link: str | None) -> str:
    """The proposal document (HTML). Everything the lead supplied is escaped (autoescape)."""
    attrs = lead.get("attributes") or {}
    interests = lead.get("interests") or {}
    name = " ".join(str(p) for p in (lead.get("first_name"), lead.get("last_name")) if p)
    countries = [str(c) for c in (interests.get("countries") or attrs.get("countries_of_interest") or [])]
    plan = cfg.file.plans[offer.plan]
    return str(cfg.document.render(
        reference=reference, company=cfg.file.company.model_dump(), currency=cfg.currency,
        created=created_at.date().isoformat(), valid_until=valid_until(cfg, created_at).date().isoformat(),
        name=name or str(lead.get("email") or "there"), first_name=str(lead.get("first_name") or ""),
        segment=str(lead.get("segment") or ""), profession=str(attrs.get("profession") or ""),
        business_sector=str(attrs.get("business_sector") or ""), children=attrs.get("children"),
        countries=countries, plan=plan.model_dump(), plan_key=offer.plan,
        lines=[{"kind": line.kind, "name": line.name, "price": line.price, "why": line.why} for line in offer.lines],
        addons={k: a.model_dump() for k, a in cfg.file.addons.items()},
        total=offer.total, pathways=[{"title": p.title, "summary": p.summary} for p in offer.pathways],
        owner=owner or "", owner_name=owner_name(owner), meeting_link=meeting_link or "",
    ))


def owner_name(owner: str | None) -> str:
    """"ana.costa@borderbridge.example" → "Ana Costa": the person who signs the proposal."""
    if not owner:
        return ""
    local = owner.split("@", 1)[0]
    return " ".join(part.capitalize() for part in local.replace("_", ".").split(".") if part)


# ---------------------------------------------------------------------------------------------------
# The prospect's link: "<proposal id>.<HMAC>" under the platform's link secret (settings.secret, the key
# of tracking and unsubscribe tokens); a link signed before a rotation still verifies with the previous.

def _mac(secret: str, proposal_id: str) -> str:
    digest = hmac.new(secret.encode(), b"proposal|" + proposal_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode().rstrip("=")


def sign(secret: str, proposal_id: str) -> str:
    if not secret:
        raise ValueError("no link secret configured: proposal links cannot be signed")
    return f"{proposal_id}.{_mac(secret, proposal_id)}"


def verify(secrets: Sequence[str], token: str) -> str | None:
    """The proposal id a token names, or None when no configured secret signed it."""
    proposal_id, _, mac = token.partition(".")
    if not proposal_id or not mac:
        return None
    ok = False
    for secret in secrets:
        # As octets: compare_digest refuses a str holding non-ASCII, and a link is whatever was typed.
        if secret and hmac.compare_digest(_mac(secret, proposal_id).encode(), mac.encode("utf-8", "replace")):
            ok = True
    return proposal_id if ok else None
