"""Tracking, unsubscribes, bus-driven suppression, website personalisation and ad audiences.

Opens and clicks arrive through the gateway with signed tokens; each first hit is recorded with an
idempotency key (`open:<mid>`, `click:<mid>:<link>`, `unsub:<mid>`) and fed to scoring as an event
(email_opened / email_clicked / unsubscribed) so scoring and journeys see it. Suppression also follows
the bus, so an unsubscribe, spam report, hard bounce or erasure that arrived elsewhere still holds.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import grpc
from pydantic import Field, StrictInt, field_validator

from nurture import times
from nurture.bounces import is_hard_bounce
from nurture.busmessage import BusMessage
from nurture.datafiles import Strict, load
from nurture.jsontypes import JsonMapping
from nurture.rpc import DEADLINE_S
from nurture.rules import CompiledRules, RuleSpec, compile_rules
from services.messaging.app.delivery import Delivery
from services.messaging.clients import Lead, email_hash
from services.messaging.domain.tokens import TokenError
from services.messaging.storage import AdSuppression, ConsentEntry, Feedback, LogLine, Suppression

log = logging.getLogger(__name__)

AUDIENCES_FILE = Path(__file__).parents[1] / "data" / "audiences.yaml"


class SuppressionRule(Strict):
    name: str = Field(min_length=1)
    when: dict[str, Any]
    why: str = ""


class AudiencesFile(Strict):
    """audiences.yaml: a version (a rule change needs a new one) and the ad-suppression rules."""

    version: StrictInt  # a text version ("1") is a mistake, not a number to guess
    ad_suppression: list[SuppressionRule]


def load_ad_suppression(path: Path = AUDIENCES_FILE) -> CompiledRules:
    """audiences.yaml's ad-suppression rules, compiled once per version."""
    raw = load(AudiencesFile, path)
    return compile_rules(f"messaging.ad_suppression.v{raw.version}", [
        RuleSpec(r.name, r.when, {"why": r.why}) for r in raw.ad_suppression])


_AD_SUPPRESSION: CompiledRules | None = None
PERSONALIZATION_FILE = Path(__file__).parents[1] / "data" / "personalization.yaml"
_PERSONALIZATION: dict[str, Any] | None = None


class Placement(Strict):
    journey: str = Field(min_length=1)  # `{segment}` stands for the lead's segment journey
    stage: str = ""


class PersonalizationFile(Strict):
    """personalization.yaml: by_topic maps a topic to a template key, by_lifecycle a stage to placements."""

    by_topic: dict[str, str] = Field(default_factory=dict)
    by_lifecycle: dict[str, list[Placement]] = Field(default_factory=dict)

    @field_validator("by_topic", "by_lifecycle", mode="before")
    @classmethod
    def _text_keys(cls, value: Any) -> Any:
        # YAML reads `2026:` as a number and an empty section as null: a topic or stage is its text, and a
        # section left empty recommends nothing (what the reader before nurture.datafiles promised).
        if value is None:
            return {}
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


def personalization_rules(path: Path | None = None) -> dict[str, Any]:
    """personalization.yaml, checked, as {"by_topic": {topic: key}, "by_lifecycle": {stage: [{journey,
    stage}]}}. Read once (and at start-up, so a bad file fails the start)."""
    global _PERSONALIZATION
    if _PERSONALIZATION is not None and path is None:
        return _PERSONALIZATION
    raw = load(PersonalizationFile, path or PERSONALIZATION_FILE)
    rules = raw.model_dump()
    if path is None:
        _PERSONALIZATION = rules
    return rules


def ad_suppression_for(lead: JsonMapping, etype: str, props: JsonMapping, signals: Iterable[object]) -> str | None:
    """The first ad-suppression rule this bus message meets (its name is the reason), or None."""
    global _AD_SUPPRESSION
    if _AD_SUPPRESSION is None:
        _AD_SUPPRESSION = load_ad_suppression()
    matches = _AD_SUPPRESSION.evaluate({"lead": dict(lead), "event": {"type": etype, "properties": dict(props)},
                                        "signals": [str(x) for x in signals]})
    return matches[0].rule if matches else None

SCOPES = ("nurture", "transactional", "all")


class NotFoundError(LookupError):
    """A message or lead that does not exist (maps to NOT_FOUND)."""


@dataclass
class TrackResult:
    url: str
    message_id: str
    duplicate: bool
    lead_id: str = ""


@dataclass
class UnsubscribeResult:
    lead_id: str
    scope: str
    category: str
    journey: str
    already: bool


@dataclass
class Personalization:
    segment: str
    featured_countries: list[str]
    recommended_content: list[dict[str, str]]
    next_best_action: dict[str, str]
    journeys_available: bool


@dataclass
class AudiencePage:
    name: str
    lead_ids: list[str]
    suppressed: dict[str, str] = field(default_factory=dict)
    next_cursor: str = ""
    journeys_available: bool = False


def journeys_api() -> tuple[ModuleType, ModuleType] | None:
    """The journeys contract's generated modules, when that contract exists in this checkout."""
    try:
        return (importlib.import_module("nurture.api.journeys.v1.journeys_pb2"),
                importlib.import_module("nurture.api.journeys.v1.journeys_pb2_grpc"))
    except ImportError:
        return None


class Channels:
    def __init__(self, engine: Delivery, journeys_channel: grpc.aio.Channel | None) -> None:
        self.engine = engine
        self.journeys_channel = journeys_channel

    # --- tracking -------------------------------------------------------------------------------------
    async def track(self, token_text: str, kind: str) -> TrackResult:
        """Record an open or click; TokenError when the token was tampered with."""
        token = self.engine.signer.verify(token_text, kind=kind)
        e = self.engine
        now = e.clock.now()
        msg = (await e.db.run(e.store.get_messages, [token.message_id])).get(token.message_id)
        if msg is None:  # erased or unknown: the signed URL is still safe to follow, nothing to record
            return TrackResult(token.url, token.message_id, True)
        key = f"open:{msg.id}" if kind == "open" else f"click:{msg.id}:{token.link}"
        props = {"message_id": msg.id, "journey": msg.journey, "step": msg.step,
                 "template": msg.template, "url": token.url, "variant": msg.variant,
                 "channel": msg.channel, **e.content_of(msg.template, msg.template_version, msg.step_stage)}
        etype = "email_opened" if kind == "open" else "email_clicked"
        new = await e.db.run(
            e.store.record_tracking, key=key, message_id=msg.id, lead_id=msg.lead_id, kind=kind,
            url=token.url, now=now,
            log=LogLine(msg.id, msg.lead_id, etype, f"{msg.template} {kind}ed"
                        + (f": {token.url}" if token.url else ""), props),
            fb=Feedback(key, msg.lead_id, etype, props, now))
        if kind == "click":
            # A click proves an open (images are often blocked): count it once as an open too.
            await e.db.run(e.store.record_tracking, key=f"open:{msg.id}", message_id=msg.id,
                           lead_id=msg.lead_id, kind="open", url="", now=now, log=None,
                           fb=Feedback(f"open:{msg.id}", msg.lead_id, "email_opened", {**props, "url": ""}, now))
        if new:
            await e.flush_feedback()
        return TrackResult(token.url, msg.id, not new, msg.lead_id)

    async def unsubscribe(self, token_text: str, *, scope: str, source: str, dry_run: bool) -> UnsubscribeResult:
        token = self.engine.signer.verify(token_text, kind="unsubscribe")
        e = self.engine
        msg = (await e.db.run(e.store.get_messages, [token.message_id])).get(token.message_id)
        category = msg.category if msg else "nurture"
        scope = scope or category
        if scope not in SCOPES:
            raise TokenError(f"scope must be one of {', '.join(SCOPES)}")
        journey = msg.journey if msg else ""
        if dry_run:
            return UnsubscribeResult(token.lead_id, scope, category, journey, False)
        now = e.clock.now()
        ehash = msg.email_hash if msg else ""
        if not ehash:
            lead = await e.leads.get(token.lead_id)
            ehash = email_hash(lead["email"]) if lead and lead.get("email") else ""
        props = {"message_id": token.message_id, "journey": journey, "step": msg.step if msg else "",
                 "template": msg.template if msg else "", "scope": scope, "source": source,
                 **(e.content_of(msg.template, msg.template_version, msg.step_stage) if msg else {})}
        new = await e.db.run(
            e.store.record_tracking, key=f"unsub:{token.message_id}:{scope}", message_id=token.message_id,
            lead_id=token.lead_id, kind="unsubscribe", url="", now=now,
            log=LogLine(token.message_id, token.lead_id, "unsubscribed", f"unsubscribed ({scope}) via {source}", props),
            fb=Feedback(f"unsub:{token.message_id}:{scope}", token.lead_id, "unsubscribed", props, now),
            suppress=Suppression(ehash, scope, "unsubscribed", source) if ehash else None)
        if new:
            await e.db.run(e.store.record_consent, [ConsentEntry(
                token.lead_id, "email" if scope == "all" else f"email:{scope}", False, f"unsubscribe:{source}", now,
                props)])
            await e.db.run(e.store.ad_suppress, token.lead_id, "unsubscribed", now, True, ehash)
            await e.flush_feedback()
        return UnsubscribeResult(token.lead_id, scope, category, journey, not new)

    # --- the bus --------------------------------------------------------------------------------------
    async def handle_bus(self, messages: list[BusMessage]) -> None:
        """Suppression, consent records and ad exclusions from events that arrived anywhere."""
        e = self.engine
        ids = [m.id for m in messages if m.id]
        fresh = await e.db.run(e.store.unseen, ids) if ids else set()
        consent: list[ConsentEntry] = []
        now = e.clock.now()
        # Ad suppressions wait here and go to SQL together (one transaction, not one per message),
        # before any other write of the batch, so the batch's writes keep their message order.
        ads: list[AdSuppression] = []

        async def flush_ads() -> None:
            if ads:
                await e.db.run(e.store.ad_suppress_many, list(ads))
                ads.clear()

        async def write(fn: Callable[..., Any], *args: Any) -> None:
            await flush_ads()
            await e.db.run(fn, *args)

        for m in messages:
            if m.id not in fresh:
                continue
            lead = m.lead
            lead_id = m.lead_id or (lead.id if lead is not None else "")
            props = m.properties
            etype = m.type
            address = (lead.email if lead is not None else None) or ""
            ehash = email_hash(address) if address else ""
            at = _parse(m.occurred_at) or now
            if etype == "unsubscribed" and ehash:
                scope = props.get("scope") if props.get("scope") in SCOPES else "nurture"
                await write(e.store.add_suppression, ehash, scope, "unsubscribed", "bus", at)
            changed = props.get("changed") or []
            opted_in = etype == "subscribed" and props.get("channel") == "email"
            consent_back = opted_in or (
                etype == "lead_updated" and "consent" in changed
                and lead is not None and lead.consent.get("email") is True)
            if consent_back and ehash and lead_id:
                # Subscribing to email again (or consent given again) undoes the unsubscribes; only the
                # person's explicit opt-in after an erasure undoes the erasure's (docs/API.md, "Leads").
                await write(e.store.lift_unsubscribes, ehash, lead_id, m.id, at, at if opted_in else None)
            if etype == "spam_reported" and ehash:
                await write(e.store.add_suppression, ehash, "all", "spam_report", "bus", at)
            if is_hard_bounce(etype, props) and ehash:
                await write(e.store.add_suppression, ehash, "all", "hard_bounce", "bus", at)
            if etype == "lead_erased" and lead_id:
                await write(e.store.erase, lead_id, ehash, at)
            rule = ad_suppression_for(lead.as_dict() if lead is not None else {}, etype, props,
                                      list(m.signals)) if lead_id else None
            if rule is not None:
                ads.append(AdSuppression(lead_id, rule, at, ehash))
            if lead_id and lead is not None and (
                    etype == "lead_created" or (etype == "lead_updated" and "consent" in changed)
                    or etype in ("unsubscribed", "spam_reported", "subscribed") or is_hard_bounce(etype, props)):
                for channel, granted in lead.consent.items():
                    consent.append(ConsentEntry(lead_id, str(channel), bool(granted),
                                                f"bus:{etype}:{props.get('source', '')}", at, {"bus_id": m.id}))
        await flush_ads()
        if consent:
            await e.db.run(e.store.record_consent, consent)
        if fresh:
            await e.db.run(e.store.mark_seen, sorted(fresh), now)

    # --- personalisation ------------------------------------------------------------------------
    async def enrollments(self, lead_id: str) -> list[Any] | None:
        api = journeys_api()
        if api is None or self.journeys_channel is None:
            return None
        pb2, grpc_mod = api
        try:
            reply = await grpc_mod.JourneysStub(self.journeys_channel).LeadJourneys(
                pb2.LeadJourneysRequest(lead_id=lead_id), timeout=DEADLINE_S)
        except (grpc.aio.AioRpcError, AttributeError) as exc:
            log.info("journeys unavailable for personalisation: %s", exc)
            return None
        return list(reply.enrollments)

    async def personalization(self, lead_id: str, anonymous: Lead | None = None) -> Personalization:
        """For a lead, or for an anonymous website visitor's profile (scoring's, never on the bus: no
        journey holds it, so its content comes from what it looked at and its stage)."""
        enrollments: list[Any] | None = []
        lead = anonymous
        if lead is None:
            lead = await self.engine.leads.get(lead_id)
            if lead is None:
                raise NotFoundError(f"lead {lead_id!r} not found")
            enrollments = await self.enrollments(lead_id)
        catalog = self.engine.catalog
        attrs = lead.get("attributes") or {}
        countries = list(attrs.get("countries_of_interest") or [])
        for c in (lead.get("interests") or {}).get("countries") or []:
            if c not in countries:
                countries.append(c)
        segment = lead.get("segment") or ""
        # Where the lead is: active journey steps when journeys answer, else its segment journey by
        # lifecycle. Journeys without email content at their stage (the always-on trigger tables,
        # "listening") place nobody: a lead whose segment journey is over still gets segment content.
        positions: list[tuple[str, str, str]] = []
        for en in enrollments or []:
            if getattr(en, "status", "") == "active":
                positions.append((en.journey, en.stage, "current journey stage"))
        recommended = self._recommend(positions)
        if not recommended:
            recommended = self._after_journeys(lead, segment)
            # A segment added as data has no catalog emails to point at: its copy's own pages fill the rest.
            recommended += self._segment_pages(segment)[:3 - len(recommended)]
        if not recommended:
            fallback = catalog.specs.get("lead_magnet.email_01")
            if fallback:
                recommended.append({"key": fallback.key, "title": "Free immigration guides",
                                    "url": catalog.cta_destination(fallback), "reason": "no journey yet"})
        return Personalization(segment, countries[:5], recommended[:3], next_best_action(lead, catalog.site_url),
                               enrollments is not None)

    def _after_journeys(self, lead: Lead, segment: str) -> list[dict[str, str]]:
        """personalization.yaml: content by what the lead looked at last, then by lifecycle stage."""
        rules = personalization_rules()
        catalog = self.engine.catalog
        stage = str(lead.get("lifecycle_stage") or "subscriber")
        out: list[dict[str, str]] = []
        if stage != "customer":
            topics = (lead.get("interests") or {}).get("topics") or []
            for topic in reversed([str(t) for t in topics]):
                key = rules["by_topic"].get(topic)
                spec = catalog.specs.get(key) if key else None
                if spec is not None and all(r["key"] != spec.key for r in out):
                    out.append({"key": spec.key, "title": spec.cta_label, "url": catalog.cta_destination(spec),
                                "reason": f"recently looked at {topic}"})
        positions = [(str(p["journey"]).replace("{segment}", segment), str(p.get("stage") or ""),
                      f"lifecycle stage {stage}") for p in rules["by_lifecycle"].get(stage, [])]
        out += [r for r in self._recommend([p for p in positions if p[0]]) if all(r["key"] != o["key"] for o in out)]
        return out[:3]

    def _segment_pages(self, segment: str) -> list[dict[str, str]]:
        """The pages the segment's own copy recommends (PUT /v1/templates/segments/{segment}), as the
        catalog's CTAs are given: tagged for analytics (the segment is the campaign)."""
        copy = self.engine.templates.segments.live().get(segment) if segment else None
        if copy is None:
            return []
        site = self.engine.catalog.site_url
        out = []
        for i, r in enumerate(copy.copy.recommended):
            path = self.engine.catalog.site_path(r.path)
            if path is None:
                continue   # (checked when stored; a site_url changed since leaves it out)
            query = urlencode({"utm_source": "nurture", "utm_medium": "web", "utm_campaign": segment,
                               "utm_content": f"recommended_{i + 1}"})
            out.append({"key": f"segments.{segment}.{i + 1}", "title": r.title, "url": f"{site}{path}?{query}",
                        "reason": f"segment {segment}"})
        return out

    def _recommend(self, positions: list[tuple[str, str, str]]) -> list[dict[str, str]]:
        """Up to three email CTAs of the journeys' current stages, in the order of `positions`."""
        catalog = self.engine.catalog
        recommended: list[dict[str, str]] = []
        for journey, stage, reason in positions:
            for spec in catalog.specs.values():
                if len(recommended) >= 3:
                    return recommended
                if spec.journey == journey and (not stage or spec.stage == stage) and spec.channel == "email":
                    recommended.append({"key": spec.key, "title": spec.cta_label, "url": catalog.cta_destination(spec),
                                        "reason": f"{reason}: {journey}/{stage}"})
        return recommended

    # --- audiences --------------------------------------------------------------------------------
    async def audience(self, name: str, cursor: str, limit: int) -> AudiencePage:
        e = self.engine
        members = set(await e.db.run(e.store.audience, name))
        available = False
        api = journeys_api()
        if api is not None and self.journeys_channel is not None:
            pb2, grpc_mod = api
            journey, _, stage = name.partition(".")
            try:
                page = ""
                stub = grpc_mod.JourneysStub(self.journeys_channel)
                for _ in range(100):
                    reply = await stub.Members(pb2.MembersRequest(journey=journey, stage=stage, status="active",
                                                                  cursor=page, limit=1000), timeout=DEADLINE_S)
                    members.update(reply.lead_ids)
                    page = reply.next_cursor
                    if not page:
                        break
                available = True
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and not members:
                    # Neither a journey (or journey.stage) nor an audience a send step filled.
                    raise NotFoundError(f"unknown audience {name!r}: audiences are journeys or journey.stage "
                                        "(e.g. family or family.decision) and those ads_audience steps fill") from exc
                log.info("journeys unavailable for audience %s: %s", name, exc)
            except AttributeError as exc:
                log.info("journeys unavailable for audience %s: %s", name, exc)
        ordered = sorted(members)
        suppressed = await e.db.run(e.store.ad_suppressed, ordered)
        kept = [m for m in ordered if m not in suppressed]
        start = int(cursor or 0)
        limit = limit or 1000
        page_ids = kept[start:start + limit]
        nxt = str(start + limit) if start + limit < len(kept) else ""
        return AudiencePage(name, page_ids, suppressed, nxt, available)


def next_best_action(lead: Lead, site: str) -> dict[str, str]:
    """One action for the site to push, by lifecycle stage and score."""
    stage = lead.get("lifecycle_stage") or "subscriber"
    score = int(lead.get("score") or 0)
    attrs = lead.get("attributes") or {}
    if stage == "customer":
        return {"action": "explore_features", "label": "Explore your roadmap", "url": f"{site}/app/roadmap",
                "reason": "customer"}
    if stage == "trial":
        return {"action": "upgrade", "label": "Keep your access", "url": f"{site}/pricing", "reason": "in trial"}
    if stage == "sql" or score >= 70:
        return {"action": "book_consultation", "label": "Book a consultation", "url": f"{site}/consultation",
                "reason": f"score {score}, stage {stage}"}
    if stage == "mql" or score >= 40:
        return {"action": "start_assessment", "label": "Start your free assessment", "url": f"{site}/assessment",
                "reason": f"score {score}, stage {stage}"}
    if not attrs.get("countries_of_interest") or not lead.get("segment"):
        return {"action": "complete_profile", "label": "Complete your profile", "url": f"{site}/profile",
                "reason": "profile incomplete"}
    return {"action": "download_guide", "label": "Download the pathway guide", "url": f"{site}/guides",
            "reason": "early research"}


_parse = times.parse_utc  # (a naive time read here once stayed naive, then failed beside aware ones)


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)
