"""The journey engine: pure decisions over one lead's state (no gRPC, no SQL, no Redis).

Callers (the service and the simulator) load a LeadState, call `on_message` for a bus message or
`run` for a due timer, perform the Effects the engine hands back (a send, a task, a lead update),
report each result with `complete`, then persist the state and the recorded runs and transitions
and (re)arm the timers of the enrolments the Outcome says were touched.

Exactly-once: the engine never advances past an effect step until `complete` is called, and every
effect carries a dedupe key `<lead>:<journey>:<version>:<step>:<occurrence>` derived from committed
state, so a crash and replay repeats the same key and the receiving service answers `duplicate`.
Arbitration: enrolments of journeys named in another journey's `pauses` are paused while it is live;
nurture sends share one frequency budget per lead (transactional sends skip it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from nurture.bounces import HARD_BOUNCED, is_hard_bounce
from nurture.busmessage import BusMessage
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue
from services.journeys.domain import rulesets
from services.journeys.domain.definitions import (
    CLOCK_PREFIX,
    GlobalExit,
    Journey,
    PlaybookSettings,
    Rule,
    template_of,
)
from services.journeys.domain.state import (
    ACTIVE,
    COMPLETED,
    ENGAGED_KEPT,
    EXITED,
    LIVE,
    PAUSED,
    ConsentExit,
    Effect,
    Enrollment,
    LeadState,
    Outcome,
    SendPayload,
    StepRun,
    TaskPayload,
    Transition,
    UpdatePayload,
    Withdrawal,
    iso,
    parse_time,
)
from services.journeys.domain.steps import (
    BranchRule,
    BranchStep,
    EffectStep,
    GoalStep,
    JourneyStep,
    JumpStep,
    SendStep,
    SplitStep,
    Step,
    TaskStep,
    TimeSpec,
    UpdateStep,
    WaitStep,
)

OPT_OUT_EVENTS = ("unsubscribed", "spam_reported", HARD_BOUNCED)
# Messaging's word that an address's unsubscribes were lifted (the person subscribed to email again).
RESUBSCRIBED = "email_resubscribed"
# Steps of its flow one enrolment may run at one instant. A loop without a wait is refused when a
# definition is stored, but a version stored before that check (a loop whose only wait takes no time)
# still loads: past this many the enrolment is stopped, with the reason on the timeline, and sends no more.
MAX_INSTANT_STEPS = 1000
RETRY_MAX = timedelta(hours=1)  # the longest wait between two tries of a step whose service is away
ENTRY_EVENTS_KEPT = 8  # events an enrolment keeps for its on_entry triggers until the entry's steps have run
_TYPES_KEPT = 1024  # event types whose listening journeys one published list remembers

log = logging.getLogger(__name__)


class EngineError(Exception):
    """Base of engine errors: UnknownJourney."""


class UnknownJourney(EngineError):
    pass


class Engine:
    """Decisions for every journey version known to the process."""

    def __init__(self, settings: PlaybookSettings, resolve: Callable[[str, int], Journey | None],
                 published: Callable[[], list[Journey]]) -> None:
        self.settings = settings
        self._resolve = resolve
        self._published = published
        self._index: _PublishedIndex | None = None
        self._plans: dict[str, _TypePlan] = {}

    def _plan(self, etype: str) -> _TypePlan:
        """What the settings do with one event type, worked out once (the settings do not change)."""
        if len(self._plans) >= _TYPES_KEPT:
            self._plans.clear()  # event types come from outside: keep the memory bounded
        plan = self._plans[etype] = _TypePlan(
            engagement=etype in self.settings.engagement_events,
            clocks=any(etype in c.reset_by or etype in c.starts_on for c in self.settings.clocks),
            exits=tuple(rule for rule in self.settings.exits if etype in rule.events))
        return plan

    def _published_index(self) -> _PublishedIndex:
        """What every message asks of the published journeys, worked out once per published list (the
        registry hands back the same list until something is published)."""
        journeys = self._published()
        index = self._index
        if index is None or index.journeys is not journeys:
            index = self._index = _PublishedIndex(journeys)
        return index

    # -- lookups ----------------------------------------------------------------------------------

    def journey(self, key: str, version: int) -> Journey:
        found = self._resolve(key, version)
        if found is None:
            raise UnknownJourney(f"journey {key} v{version} is not known")
        return found

    def priority_of(self, state: LeadState, ekey: str) -> int:
        e = state.enrollments.get(ekey)
        if e is None:
            return 0
        j = self._resolve(e.journey, e.version)
        return j.priority if j else 0

    # -- facts ------------------------------------------------------------------------------------

    def facts(self, state: LeadState, event: BusMessage, e: Enrollment | None = None,
              now: datetime | None = None, roots: frozenset[str] | None = None) -> JsonObject:
        """The facts rules read; with `roots` (rulesets.EventRules), only those top-level facts: the rules
        read nothing else, and most read only the lead and the event (no live journeys to list)."""
        facts: JsonObject = {}
        if roots is None or "lead" in roots:
            facts["lead"] = state.lead
        if roots is None or "event" in roots:
            facts["event"] = {"type": event.type, "properties": event.properties}
        if roots is None or "signals" in roots:
            facts["signals"] = list(event.signals)
        if roots is None or "journeys" in roots:
            # The lead's other live journeys (key → active | paused), so a definition can coordinate
            # with them as data, e.g. not send a second welcome when another journey sends one.
            facts["journeys"] = {x.journey: x.status for x in state.enrollments.values() if x.status in LIVE}
        if e is not None and (roots is None or "journey" in roots):
            j = self._resolve(e.journey, e.version)
            facts["journey"] = {
                "key": e.journey, "version": e.version, "step": e.step or "", "stage": e.stage or "",
                "stage_index": j.stage_index(e.stage) if j else -1, "engaged": e.engaged,
                "days_in_journey": int((now - e.entered_at).total_seconds() // 86400) if now else 0,
            }
        return facts

    # -- messages ---------------------------------------------------------------------------------

    def on_message(self, state: LeadState, message: BusMessage, now: datetime) -> Outcome:
        """Apply one bus message (or a synthetic one, e.g. inactivity, which carries no snapshot: the
        lead is as the state holds it) to a lead's journeys."""
        out = Outcome()
        etype = message.type
        if message.lead is not None:
            # Kept as its JSON object: the state is stored as JSON and the lead is the rules' facts.
            state.lead = message.lead.as_dict()
        if etype == "lead_erased":
            for e in state.enrollments.values():
                if e.status in LIVE:
                    self._finish(state, e, EXITED, "erased", now, out, summary="exited: lead erased")
            out.erased = True
            return out
        plan = self._plans.get(etype)
        if plan is None:
            plan = self._plan(etype)
        index = self._published_index()
        if etype != "date_reached" and index.date_rules:
            self._arm_dates(state, out)
        if plan.clocks:
            self._tick_clocks(state, message, etype, now, out)
        if plan.engagement:
            self._engaged(state, message, now, out)
        elif state.last_engagement is None and etype != "inactivity":
            # The inactivity clock starts at the first thing we hear about the lead.
            state.last_engagement = min(parse_time(message.occurred_at) or now, now)
            self._arm_inactivity(state, now, out)
        consent_off = (state.lead.get("consent") or {}).get("email") is False
        # A caller's `email_bounced` marked hard is the opt-out messaging's `email_hard_bounced` is.
        opt_out = HARD_BOUNCED if is_hard_bounce(etype, message.properties) else (
            etype if etype in OPT_OUT_EVENTS else None)
        if opt_out is not None or consent_off:
            reason = opt_out or "no_consent"
            # An unsubscribe names what it stops (messaging's scope): from reminders only, the
            # nurture journeys go on; from everything, the transactional ones end too.
            scope = message.properties.get("scope") if etype == "unsubscribed" else None
            stopped = {"transactional": {"transactional"}, "all": {"nurture", "transactional"}}.get(
                str(scope), {"nurture"})
            if opt_out is not None:
                for category in stopped:   # an unsubscribe never overwrites a spam report or a hard bounce
                    if state.opted_out.get(category) in (None, "unsubscribed"):
                        state.opted_out[category] = opt_out
            for e in list(state.enrollments.values()):
                if e.status in LIVE and self.journey(e.journey, e.version).category in stopped:
                    self._keep_for_consent(state, e, now, reason=reason, scope=str(scope or "nurture"))
                    self._finish(state, e, EXITED, reason, now, out, summary=f"exited: {reason}"
                                 + (f" ({scope})" if scope else ""))
        for rule in plan.exits:
            for e in list(state.enrollments.values()):
                if e.status in LIVE and e.journey not in rule.keep \
                        and self.journey(e.journey, e.version).category in rule.categories:
                    self._finish(state, e, EXITED, rule.name, now, out,
                                 summary=f"exited: {etype} (playbook exit {rule.name}"
                                         + (f": {rule.why})" if rule.why else ")"), withdraw=True)
        if consent_off:
            # Withdrawn for sure now (an opt-out event may carry the snapshot from before it).
            for past in state.history.values():
                if "consent_exit" in past:
                    past["consent_exit"]["withdrawn"] = True
        if etype == RESUBSCRIBED:
            lifted = {str(x) for x in message.properties.get("scopes") or []}
            for category, why in list(state.opted_out.items()):
                if why == "unsubscribed" and ("all" in lifted or category in lifted):
                    del state.opted_out[category]
            self._resume_resubscribed(state, index.journeys, message, now, out)
        enrollments = state.enrollments
        by_journey: dict[str, list[str]] = {}
        grouped = -1  # the number of enrolments grouped: entering a journey adds one, nothing removes one
        for j, rules in index.listening(etype):
            if grouped != len(enrollments):
                # The lead's enrolment keys by journey, grouped once (not a scan of every enrolment per
                # listening journey); each enrolment is read at its turn, as one an earlier journey
                # entered again replaces its object under the same key.
                grouped, by_journey = len(enrollments), {}
                for ekey, x in enrollments.items():
                    by_journey.setdefault(x.journey, []).append(ekey)
            for e in [x for ekey in by_journey.get(j.key, ()) if (x := enrollments[ekey]).status in LIVE]:
                self._on_enrolled(state, e, message, now, out, rules if e.version == j.version else None)
            if rules.entry is not None:  # else no entry rule listens to this event type: nothing to enter
                if not j.entity and (current := enrollments.get(j.key)) is not None and current.status in LIVE:
                    continue  # already in it (what _maybe_enter finds first; most messages of an always-on journey)
                self._maybe_enter(state, j, message, now, out, rules)
        # Enrolments of older versions still listen to their own rules.
        live_keys = index.keys
        for e in list(state.enrollments.values()):
            if e.status in LIVE and e.journey not in live_keys:
                self._on_enrolled(state, e, message, now, out)
        return out

    def _engaged(self, state: LeadState, message: BusMessage, now: datetime, out: Outcome) -> None:
        at = min(parse_time(message.occurred_at) or now, now)
        state.last_engagement = max(at, state.last_engagement) if state.last_engagement else at
        state.inactive_step = 0
        self._arm_inactivity(state, now, out)
        if message.type in ("email_opened", "email_clicked"):
            props = message.properties
            journey = props.get("journey")
            # journey.engaged counts emails opened or clicked (the seed's "3+ emails"), not
            # interactions: the open and the click of one email, or its second open, count once.
            which = str(props.get("message_id") or "") or (
                f"{journey}.{props['step']}" if journey and props.get("step") else "")
            for e in state.enrollments.values():
                if e.status in LIVE and (not journey or journey == e.journey):
                    if which and which in e.engaged_with:
                        continue
                    if which:
                        e.engaged_with = [*e.engaged_with[-(ENGAGED_KEPT - 1):], which]
                    e.engaged += 1
                    out.touched.add(e.ekey)

    def _arm_inactivity(self, state: LeadState, now: datetime, out: Outcome) -> None:
        days = sorted(self.settings.inactivity_days)
        if state.last_engagement is None or state.inactive_step >= len(days):
            state.inactive_due = None
        else:
            state.inactive_due = state.last_engagement + timedelta(days=days[state.inactive_step])
        state.inactive_token += 1
        out.inactivity_changed = True

    def _tick_clocks(self, state: LeadState, message: BusMessage, etype: str, now: datetime,
                     out: Outcome) -> None:
        """Quiet-period clocks (_settings.yaml `clocks`): a `reset_by` event restarts one; a `starts_on`
        event starts one that is not running yet (the first email sent starts "no opens")."""
        for clock in self.settings.clocks:
            if etype not in clock.reset_by and etype not in clock.starts_on:
                continue  # (most messages: the clock's entry is not read)
            entry = state.dates.get(clock.key)
            if etype in clock.reset_by or entry is None:
                since = min(parse_time(message.occurred_at) or now, now)
                if entry is not None and parse_time(entry.get("since")) == since and entry.get("step") == 0:
                    continue  # the same moment again (a redelivered message)
                state.dates[clock.key] = {"at": iso(since + timedelta(days=clock.days[0])), "since": iso(since),
                                          "step": 0, "fired": False,
                                          "token": int((entry or {}).get("token", 0)) + 1}
                out.dates_changed.add(clock.key)

    def _clock_due(self, state: LeadState, key: str, token: int, now: datetime) -> Outcome:
        """A quiet-period clock ran out: post its event, and arm its next threshold if it has one."""
        clock = next((c for c in self.settings.clocks if c.key == key), None)
        entry = state.dates.get(key)
        if clock is None or not entry or entry.get("token") != token or entry.get("fired"):
            return Outcome()
        at, since = parse_time(entry.get("at")), parse_time(entry.get("since"))
        if at is None or since is None or at > now:
            return Outcome()
        out = Outcome()
        step = int(entry.get("step", 0)) + 1
        if step < len(clock.days):
            entry.update({"at": iso(since + timedelta(days=clock.days[step])), "step": step, "token": token + 1})
            out.dates_changed.add(key)
        else:
            entry["fired"] = True
        days = int((now - since).total_seconds() // 86400)
        message = _synthetic(state, clock.event, {"days": days, "since": iso(since)},
                             f"{clock.event}:{state.lead_id}:{iso(now)}")
        out.extend(self.on_message(state, message, now))
        return out

    def _arm_dates(self, state: LeadState, out: Outcome) -> None:
        """Date-relative entries: (re)arm a lead-level timer at <lead date property> + offset whenever
        the property is set or moves."""
        for key, date in self._published_index().date_rules:
            base = parse_time(_lead_fact(state.lead, date.fact))
            at = iso(base + date.offset) if base else None
            current = state.dates.get(key)
            if at is None or (current and current.get("at") == at):
                continue
            state.dates[key] = {"at": at, "token": int((current or {}).get("token", 0)) + 1, "fired": False}
            out.dates_changed.add(key)

    def date_due(self, state: LeadState, key: str, token: int, now: datetime) -> Outcome:
        """A date-relative entry's time came: post `date_reached` for that one rule."""
        if key.startswith(CLOCK_PREFIX):
            return self._clock_due(state, key, token, now)
        entry = state.dates.get(key)
        if not entry or entry.get("token") != token or entry.get("fired"):
            return Outcome()
        at = parse_time(entry.get("at"))
        if at is None or at > now:
            return Outcome()
        entry["fired"] = True
        journey, rule = key.split(".", 1)
        message = _synthetic(state, "date_reached",
                             {"date_rule": key, "journey": journey, "rule": rule, "at": entry.get("at")},
                             f"date:{state.lead_id}:{key}:{token}")
        return self.on_message(state, message, now)

    def inactivity_due(self, state: LeadState, token: int, now: datetime) -> Outcome:
        """The lead's inactivity timer fired: post the synthetic `inactivity` event."""
        if token != state.inactive_token or state.inactive_due is None or state.inactive_due > now:
            return Outcome()
        assert state.last_engagement is not None
        days = int((now - state.last_engagement).total_seconds() // 86400)
        state.inactive_step += 1
        out = Outcome()
        self._arm_inactivity(state, now, out)
        message = _synthetic(state, "inactivity", {"days": days, "since": iso(state.last_engagement)},
                             f"inactivity:{state.lead_id}:{iso(now)}")
        out.extend(self.on_message(state, message, now))
        return out

    def _on_enrolled(self, state: LeadState, e: Enrollment, message: BusMessage, now: datetime,
                     out: Outcome, rules: rulesets.EventRules | None = None) -> None:
        """An enrolled lead's message: its exits, its event wait, its triggers. `rules` are the
        enrolment's version's for the message's type when the caller has them (the published index's)."""
        j = self.journey(e.journey, e.version)
        etype = message.type
        props = message.properties
        if j.entity and props.get(j.entity) is not None and str(props.get(j.entity)) != e.instance:
            return  # an event about another webinar/trial/cart
        # Built only when a rule will read them (most journeys have no exit or trigger rule for most
        # event types), and only the top-level facts those rules read; nothing below changes what
        # they hold before the event wait reads them (whole).
        if rules is None:
            rules = rulesets.for_event(j, etype)
        if not rules.enrolled and etype not in j.reanchor_events and e.waiting != "event":
            return  # no exit, trigger, anchor or event wait reads this event type (what follows finds nothing)
        facts = self.facts(state, message, e, now, rules.enrolled_roots) if rules.enrolled else None
        for rule, match in rulesets.matching(rules.exit, facts or {}):
            outcome = COMPLETED if rule.outcome == "goal" else EXITED
            verb = "goal reached" if rule.outcome == "goal" else "exited"
            self._finish(state, e, outcome, rule.name, now, out,
                         summary=f"{verb}: {etype} {rulesets.explain(match.facts)} matched rule {rule.name}",
                         rule=rule.name, facts=dict(match.facts), withdraw=True)
            return
        # A journey with an entity hears its own instance's reanchor events only (those naming another
        # webinar returned above; one naming none moves nothing); one without (a trial) hears every one.
        if etype in j.reanchor_events and (not j.entity or str(props.get(j.entity, "")) == e.instance):
            self._reanchor(state, j, e, props, now, out)
        if e.status == ACTIVE and e.waiting == "event" and e.step:
            wait = j.step(e.step)
            spec = wait.event if isinstance(wait, WaitStep) else None
            match_prop = spec.match if spec is not None else None
            awaited = spec is not None and etype in spec.types and (
                not match_prop or str(props.get(match_prop, "")) in ("", e.instance, e.anchors.get(match_prop, "")))
            if awaited and spec is not None and spec.when is not None:  # a purchase, not a signup
                condition = [BranchRule(name=f"{wait.id}.event", when=spec.when, next=None)]
                awaited = rulesets.branch(j, f"{wait.id}.event", condition,
                                          self.facts(state, message, e, now)) is not None
            if awaited:
                target = str(wait.on_event if isinstance(wait, WaitStep) else None)
                self._record(out, state, e, now, "event", f"{etype} arrived at {wait.id}: going to {target}",
                             step_from=wait.id, step_to=target)
                self._move(e, target, now, out)
                e.timed_at = now
        if e.status != ACTIVE:
            return
        for rule, match in rulesets.matching(rules.triggers, facts or {}):
            if rule.on_entry and e.entry_events:
                # The entry's steps have not run yet (the welcome): this event waits with the one that
                # enrolled the lead, and the rule is checked after them, on the lead as it is then.
                self._hold_for_entry(e, message, out)
                continue
            self._fire_trigger(state, j, e, rule, match.facts, message, now, out)

    def _fire_trigger(self, state: LeadState, j: Journey, e: Enrollment, rule: Rule, read: JsonMapping,
                      message: BusMessage, now: datetime, out: Outcome, *, note: str = "") -> None:
        etype = message.type
        last = parse_time(e.fired.get(rule.name))
        if last is not None and (rule.once or (rule.cooldown and now - last < rule.cooldown)):
            return
        e.fired[rule.name] = iso(now) or ""
        out.touched.add(e.ekey)
        act = rule.action
        why = f"{etype} {rulesets.explain(read)} matched rule {rule.name}{note}"
        if act.pace is not None:
            new = act.pace
            if e.waiting == "delay" and e.due is not None and e.due > now:
                e.due = now + (e.due - now) * (new / e.pace)
                e.token += 1
            e.pace = new
            self._record(out, state, e, now, "trigger", f"pace set to {new}: {why}", rule=rule.name, facts=read)
        if act.anchor:
            taken = {name: str(message.properties[prop]) for name, prop in j.anchors.items()
                     if message.properties.get(prop) is not None}
            if taken != {k: e.anchors.get(k) for k in taken}:
                e.anchors.update(taken)
                self._record(out, state, e, now, "trigger",
                             f"anchors taken from the event ({', '.join(f'{k}={v}' for k, v in taken.items())}): "
                             f"{why}", rule=rule.name, facts=read)
        if act.goto is not None:
            target = act.goto
            stage = j.step(target).stage
            verb = f"jumped to {stage} stage" if stage and stage != e.stage else f"jumped to {target}"
            self._record(out, state, e, now, "jump", f"{verb}: {why}", step_from=e.step, step_to=target,
                         rule=rule.name, facts=read)
            self._move(e, target, now, out)
            e.timed_at = now
        for queued in act.queued():
            e.queue_side(queued)  # with the anchors as this trigger left them (its own download's)
            e.side_token += 1
            out.side_due.add(e.ekey)
            self._record(out, state, e, now, "trigger", f"queued {queued}: {why}", step_to=queued,
                         rule=rule.name, facts=read)
        if act.enrol is not None:
            other = self._published_journey(act.enrol)
            if other is not None:
                self._enter(state, other, _synthetic(state, etype), now, out,
                            reason=f"enrolled by {j.key} rule {rule.name}: {why}", rule=rule.name, facts=read)
        if act.exit is not None:
            for live in list(state.enrollments.values()):
                if live.journey == act.exit and live.status in LIVE:
                    self._finish(state, live, EXITED, f"{j.key}.{rule.name}", now, out,
                                 summary=f"exited by {j.key} rule {rule.name}: {why}", withdraw=True)

    def _keep_for_entry_triggers(self, j: Journey, e: Enrollment, message: BusMessage, out: Outcome) -> bool:
        """An entry's event (or a resumption's) kept for the journey's `on_entry` triggers that listen
        to it; whether they do."""
        if not j.on_entry_events or (message.type not in j.on_entry_events and "*" not in j.on_entry_events):
            return False
        self._hold_for_entry(e, message, out)
        return True

    def _hold_for_entry(self, e: Enrollment, message: BusMessage, out: Outcome) -> None:
        """Keep an event for the enrolment's `on_entry` triggers, checked once the entry's steps due at
        once have run (a redelivered or repeated event is kept once; a few at most)."""
        held: JsonObject = {"type": message.type, "properties": dict(message.properties)}
        if message.signals:
            held["signals"] = list(message.signals)
        if held not in e.entry_events and len(e.entry_events) < ENTRY_EVENTS_KEPT:
            e.entry_events.append(held)
            out.touched.add(e.ekey)

    def _entry_triggers(self, state: LeadState, j: Journey, e: Enrollment, now: datetime, out: Outcome) -> bool:
        """The `on_entry` triggers, on the event that enrolled the lead (and any held since), once the
        entry's steps due at once have run: the run stopped at a wait or a listen, not at a step held by
        the budget or waiting for a retry (the welcome goes first, then the jump). True when a trigger
        made the enrolment due now (a goto: the run goes on)."""
        if e.status not in LIVE:
            e.entry_events = []
            return False
        if e.status != ACTIVE or (e.due is not None and e.waiting not in ("delay", "until", "event")):
            return False  # paused, held by the budget or to be retried: the entry's step has not run
        held, e.entry_events = e.entry_events, []
        out.touched.add(e.ekey)
        for event in held:
            rules = rulesets.for_event(j, str(event.get("type")))
            if rules.triggers is None or e.status != ACTIVE:
                continue
            message = BusMessage(id="", lead_id=state.lead_id, type=str(event.get("type")),
                                 properties=dict(event.get("properties") or {}),
                                 signals=tuple(str(x) for x in event.get("signals") or ()))
            facts = self.facts(state, message, e, now, rules.enrolled_roots)
            for rule, match in rulesets.matching(rules.triggers, facts):
                if rule.on_entry and e.status == ACTIVE:
                    self._fire_trigger(state, j, e, rule, match.facts, message, now, out,
                                       note=" (on entry, once the entry's first steps had run)")
        return e.status == ACTIVE and e.due is not None and e.due <= now

    def _published_journey(self, key: str) -> Journey | None:
        return next((j for j in self._published() if j.key == key), None)

    def _reanchor(self, state: LeadState, j: Journey, e: Enrollment, props: JsonMapping, now: datetime,
                  out: Outcome) -> None:
        changed = {name: str(props[prop]) for name, prop in j.anchors.items()
                   if props.get(prop) is not None and e.anchors.get(name) != str(props[prop])}
        if not changed:
            return
        e.anchors.update(changed)
        out.touched.add(e.ekey)
        # Move the pending timer with its anchor: recompute the wait that set it.
        if e.waiting in ("until", "event") and e.step is not None:
            pending = self._pending_wait(j, e)
            if pending is not None:
                due: datetime | None
                if e.waiting == "until":
                    due, _ = self._until(pending, e, now, state_lead=None)
                else:
                    due = self._time_of(pending.timeout, e, now, state_lead=None)
                if due is not None:
                    e.due = max(due, now)
                    e.token += 1
        self._record(out, state, e, now, "rescheduled",
                     f"anchor moved ({', '.join(f'{k}={v}' for k, v in changed.items())}): pending step at "
                     f"{iso(e.due)}", facts=dict(changed))

    def _pending_wait(self, j: Journey, e: Enrollment) -> WaitStep | None:
        if e.waiting == "event":
            step = j.step(e.step) if e.step else None
            return step if isinstance(step, WaitStep) else None
        # An until-wait leaves the cursor on the step after it: find the wait pointing here.
        return next((s for s in j.steps.values()
                     if isinstance(s, WaitStep) and s.next == e.step and s.until is not None), None)

    # -- entering and finishing -------------------------------------------------------------------

    def _maybe_enter(self, state: LeadState, j: Journey, message: BusMessage, now: datetime,
                     out: Outcome, rules: rulesets.EventRules | None = None) -> None:
        etype = message.type
        if rules is None:
            rules = rulesets.for_event(j, etype)
        if rules.entry is None:
            return  # no entry rule listens to this event type (what follows only reads the state)
        instance = ""
        if j.entity:
            value = message.properties.get(j.entity)
            if value is None:
                return
            instance = str(value)
        ekey = f"{j.key}#{instance}" if instance else j.key
        current = state.enrollments.get(ekey)
        if current is not None and current.status in LIVE:
            return
        if j.category in state.opted_out:
            # An opt-out stops every journey of the mail it names, those the lead was not in yet too
            # (an unsubscribed lead going quiet was enrolled in re-engagement, its mail suppressed).
            return
        held = (state.history.get(ekey) or {}).get("consent_exit") if current is not None else None
        if held and held.get("reason", "no_consent") != "no_consent":
            # Stopped by an opt-out (an unsubscribe, a spam report, a hard bounce): consent alone does
            # not undo it; messaging's `email_resubscribed` does (see _resume_resubscribed).
            held = None
        refused = not (held and held.get("withdrawn")) and not self._may_reenter(state, j.reentry, j.reentry_after,
                                                                                  ekey, now)
        if refused and not j.rule_reentry:
            return
        found = rulesets.matching(rules.entry, self.facts(state, message, roots=rules.entry_roots))
        if refused:
            # The journey's re-entry refuses; an entry rule with its own (a download, where a tool used
            # waits the journey's 30 days) may still enter.
            found = [(r, m) for r, m in found
                     if r.reentry is not None and self._may_reenter(state, r.reentry, r.reentry_after, ekey, now)]
        if not found:
            return
        rule, match = found[0]
        if j.enter_until is not None and self._entry_expired(state, j, message, ekey, now, out, rule=rule.name):
            return
        if held and held.get("withdrawn") and current is not None:
            self._resume_after_consent(state, current, held, message, now, out, rule=rule.name,
                                       facts=dict(match.facts),
                                       why=f"{etype} {rulesets.explain(match.facts)} matched rule {rule.name}")
            return
        own = (f" (re-entry by the rule's own {_policy(str(rule.reentry), rule.reentry_after)}; the journey's "
               f"{_policy(j.reentry, j.reentry_after)} refused it)") if refused else ""
        self._enter(state, j, message, now, out, instance=instance, rule=rule.name, facts=dict(match.facts),
                    reason=f"entered: {etype} {rulesets.explain(match.facts)} matched rule {rule.name}{own}",
                    reentry=(rule.reentry, rule.reentry_after) if refused and rule.reentry else None)

    def _may_reenter(self, state: LeadState, reentry: str, after: timedelta | None, ekey: str,
                     now: datetime) -> bool:
        """Whether a re-entry policy (the journey's, or an entry rule's own) lets the lead in again."""
        past = state.history.get(ekey)
        if not past:
            return True
        if reentry == "always":
            return True
        if reentry == "after" and after is not None:
            ended = parse_time(past.get("ended_at"))
            return ended is not None and now - ended >= after
        return False

    def _entry_expired(self, state: LeadState, j: Journey, message: BusMessage, ekey: str, now: datetime,
                       out: Outcome, *, rule: str) -> bool:
        """`enter_until`: an entry whose moment has passed (a webinar that ended long ago) is refused,
        with the reason on the lead's timeline."""
        spec = j.enter_until
        if spec is None:
            return False
        props = message.properties
        anchors = {name: str(props[prop]) for name, prop in j.anchors.items() if props.get(prop) is not None}
        probe = Enrollment(ekey=ekey, journey=j.key, version=j.version, instance="", entry=0, status=EXITED,
                           step=None, stage=None, due=None, entered_at=now, stage_at=now, anchors=anchors)
        deadline = self._time_of(spec, probe, now, state_lead=state.lead)
        if deadline is None or now <= deadline:
            return False
        self._record(out, state, probe, now, "skipped",
                     f"not entered: {message.type} matched rule {rule} but its enter_until "
                     f"{spec.text} ({iso(deadline)}) has passed", rule=rule,
                     facts={"enter_until": iso(deadline), **anchors})
        return True

    def _keep_for_consent(self, state: LeadState, e: Enrollment, now: datetime, *, reason: str,
                          scope: str) -> None:
        """Before a consent exit, remember where the enrolment stood and what stopped it: given consent
        again (`no_consent`), or subscribed again after an unsubscribe (`email_resubscribed` lifting its
        scope), the lead continues from there (whatever `reentry` says, since it never left the journey
        by itself). A spam report or a hard bounce is never undone here."""
        due = e.due
        if e.status == PAUSED:
            due = now + timedelta(seconds=e.paused_remaining) if e.paused_remaining is not None else None
        consent_off = (state.lead.get("consent") or {}).get("email") is False
        state.history.setdefault(e.ekey, {"entries": e.entry})["consent_exit"] = {
            "due": iso(due), "waiting": e.waiting if e.waiting != "budget" else None, "withdrawn": consent_off,
            "reason": reason, "scope": scope}

    def _resume_resubscribed(self, state: LeadState, journeys: Sequence[Journey], message: BusMessage,
                             now: datetime, out: Outcome) -> None:
        """Messaging lifted the address's unsubscribes (`properties.scopes`): the enrolments those
        unsubscribes stopped resume, when the lead still meets the journey's entry as a profile change
        would test it (a lead who left the segment meanwhile is not sent its mail)."""
        lifted = {str(x) for x in message.properties.get("scopes") or []}
        probe = dataclasses.replace(message, type="lead_updated",
                                    properties={"changed": ["consent"], "source": RESUBSCRIBED})
        for j in journeys:
            held = (state.history.get(j.key) or {}).get("consent_exit")
            current = state.enrollments.get(j.key)
            if not held or held.get("reason") != "unsubscribed" or current is None or current.status in LIVE:
                continue
            if "all" not in lifted and str(held.get("scope") or "nurture") not in lifted:
                continue
            held["reason"], held["withdrawn"] = "no_consent", True
            self._maybe_enter(state, j, probe, now, out)

    def _resume_after_consent(self, state: LeadState, e: Enrollment, held: ConsentExit, message: BusMessage,
                              now: datetime, out: Outcome, *, rule: str, facts: JsonMapping, why: str) -> None:
        """Re-enter a journey left for lack of consent by resuming its enrolment: same entry, visits
        and trigger cooldowns, so the dedupe keys of steps already done are not issued again. The event
        that resumes it is an entry's for the `on_entry` triggers (a timeline made urgent while consent
        was off is heard nowhere else): checked now when the enrolment rests at a wait (its entry's
        steps ran before consent went), else once the step due now has run; a rule that fired before
        keeps its once or its cooldown."""
        past = state.history[e.ekey]
        past.pop("consent_exit", None)
        past.pop("ended_at", None)
        due = parse_time(held.get("due"))
        e.status, e.outcome, e.ended_at = ACTIVE, None, None
        e.waiting = held.get("waiting") if due is not None and due > now else None
        e.due = max(due, now) if due is not None else None
        e.token += 1
        out.touched.add(e.ekey)
        at = f"; next step at {iso(e.due)}" if e.due else ""
        self._record(out, state, e, now, "resumed",
                     f"re-entered after email consent was given again: {why}; resuming at {e.step}{at} "
                     "(steps already done are not repeated)", step_to=e.step, rule=rule, facts=facts)
        j = self._resolve(e.journey, e.version)
        if j is not None and self._keep_for_entry_triggers(j, e, message, out):
            self._entry_triggers(state, j, e, now, out)   # (waits itself while a step is due)
        if j is not None:
            self._apply_pauses(state, j, e, now, out)
        if (pauser := self._pauser(state, e)) is not None:
            self._pause(state, e, now, out, by=pauser)

    def _enter(self, state: LeadState, j: Journey, message: BusMessage, now: datetime, out: Outcome, *,
               reason: str, instance: str = "", rule: str | None = None,
               facts: JsonMapping | None = None, reentry: tuple[str, timedelta | None] | None = None
               ) -> Enrollment | None:
        """`reentry`: the entry rule's own re-entry policy, in place of the journey's."""
        ekey = f"{j.key}#{instance}" if instance else j.key
        current = state.enrollments.get(ekey)
        if current is not None and current.status in LIVE:
            return None
        if not self._may_reenter(state, *(reentry or (j.reentry, j.reentry_after)), ekey, now):
            return None
        props = message.properties
        past = state.history.setdefault(ekey, {"entries": 0})
        past["entries"] = int(past.get("entries", 0)) + 1
        past.pop("consent_exit", None)  # a new entry: nothing left to resume
        anchors = {name: str(props[prop]) for name, prop in j.anchors.items() if props.get(prop) is not None}
        if instance and j.entity:
            anchors.setdefault(j.entity, instance)
        e = Enrollment(ekey=ekey, journey=j.key, version=j.version, instance=instance, entry=past["entries"],
                       status=ACTIVE, step=j.first, stage=None, due=now, entered_at=now, stage_at=now,
                       anchors=anchors, token=(current.token + 1) if current else 1,
                       side_token=current.side_token if current else 0, timed_at=now, entered_by=message.id)
        state.enrollments[ekey] = e
        out.touched.add(ekey)
        self._keep_for_entry_triggers(j, e, message, out)  # checked once the entry's steps have run
        self._record(out, state, e, now, "entered", reason, step_to=j.first, rule=rule, facts=dict(facts or {}))
        self._apply_pauses(state, j, e, now, out)
        if (pauser := self._pauser(state, e)) is not None:
            self._pause(state, e, now, out, by=pauser)
        return e

    def _pauser(self, state: LeadState, e: Enrollment) -> Enrollment | None:
        """The first of the lead's active enrolments whose journey pauses `e`'s, or None."""
        ej = self._resolve(e.journey, e.version)
        if ej is None:
            return None
        for other in state.enrollments.values():
            if other.ekey != e.ekey and other.status == ACTIVE:
                oj = self._resolve(other.journey, other.version)
                if oj is not None and _pauses(oj, ej):
                    return other
        return None

    def _apply_pauses(self, state: LeadState, j: Journey, by: Enrollment, now: datetime, out: Outcome) -> None:
        """Pause the lead's enrolments that `by`'s journey pauses. One with a step due already (its
        immediate welcome, entered a moment before) runs what is due first and pauses at its next wait
        (next_effect): those steps were due before the pause."""
        if not j.pauses:
            return
        for e in state.enrollments.values():
            if e.status != ACTIVE or e.ekey == by.ekey:
                continue
            ej = self._resolve(e.journey, e.version)
            if ej and _pauses(j, ej):
                if e.due is not None and e.due <= now and e.waiting != "budget":
                    e.pause_by = by.ekey
                    out.touched.add(e.ekey)
                    self._record(out, state, e, now, "pausing", f"pauses while {by.journey} runs, once the "
                                 f"step due now ({e.step}) has run", step_from=e.step)
                else:
                    self._pause(state, e, now, out, by=by)

    def _pause_after_due_steps(self, state: LeadState, e: Enrollment, now: datetime, out: Outcome) -> None:
        """The steps that were due when a pausing journey entered have run: pause now if it (or another
        pausing journey) still runs."""
        wanted, e.pause_by = e.pause_by, None
        out.touched.add(e.ekey)
        pauser = self._pauser(state, e)
        if pauser is None:
            return  # the pausing journey ended meanwhile: nothing to pause for
        by = state.enrollments.get(wanted or "")
        self._pause(state, e, now, out, by=by if by is not None and by.status == ACTIVE else pauser)

    def _pause(self, state: LeadState, e: Enrollment, now: datetime, out: Outcome, by: Enrollment) -> None:
        e.status, e.pause_by = PAUSED, None
        e.paused_remaining = max(0.0, (e.due - now).total_seconds()) if e.due else None
        e.token += 1
        out.touched.add(e.ekey)
        self._record(out, state, e, now, "paused", f"paused while {by.journey} runs", step_from=e.step)

    def _resume_paused(self, state: LeadState, now: datetime, out: Outcome) -> None:
        for e in state.enrollments.values():
            if e.status != PAUSED:
                continue
            if self._pauser(state, e) is not None:
                continue
            e.status = ACTIVE
            e.due = now + timedelta(seconds=e.paused_remaining) if e.paused_remaining is not None else None
            e.paused_remaining = None
            e.token += 1
            out.touched.add(e.ekey)
            self._record(out, state, e, now, "resumed", f"resumed at {e.step}; next step at {iso(e.due)}",
                         step_to=e.step)

    def _finish(self, state: LeadState, e: Enrollment, status: str, reason: str, now: datetime, out: Outcome, *,
                summary: str, rule: str | None = None, facts: JsonMapping | None = None,
                withdraw: bool = False) -> None:
        """`withdraw`: the lead left by a rule (exit or goal rule, playbook exit, another journey's exit),
        so the journey's nurture mail still waiting in messaging for the lead's daytime or the minimum gap
        is not sent after it: a lead who bought, or moved to another segment, overnight is not sent the
        old journey's offer in the morning. Not for a consent exit (messaging's send-time checks hold
        that mail, and it goes if consent is back before its time)."""
        if e.status not in LIVE:
            return
        if withdraw:
            out.withdrawn.append(Withdrawal(e.journey, e.version, occurrence_prefix(e), reason))
        e.status, e.outcome, e.ended_at, e.due, e.waiting = status, reason, now, None, None
        e.pause_by = None
        e.clear_side()
        e.token += 1
        state.history.setdefault(e.ekey, {"entries": e.entry})["ended_at"] = iso(now)
        out.touched.add(e.ekey)
        kind = "exited" if status == EXITED else ("completed" if reason == "end" else "goal")
        self._record(out, state, e, now, kind, summary, step_from=e.step, rule=rule or reason,
                     facts={**dict(facts or {}), "last_sent": e.last_sent})
        self._resume_paused(state, now, out)

    def archived(self, state: LeadState, e: Enrollment, now: datetime, out: Outcome) -> None:
        """The journey was archived: the live enrolment exits (reason ARCHIVED) and the journey's mail still
        waiting in messaging is withdrawn, as for a lead that left by a rule: a marketer who stops a journey
        expects nothing more of it to go out."""
        self._finish(state, e, EXITED, ARCHIVED, now, out, summary=f"exited: {ARCHIVED}", withdraw=True)

    # -- running steps ----------------------------------------------------------------------------

    def next_effect(self, state: LeadState, ekey: str, now: datetime, out: Outcome, *,
                    side: bool = False) -> Effect | None:
        """Run instant steps of a due enrolment until an effect step (returned, not yet executed) or a
        wait (armed; returns None). With `side`, only the queued side steps are considered."""
        e = state.enrollments.get(ekey)
        if e is None or e.status != ACTIVE:
            return None
        j = self.journey(e.journey, e.version)
        if side:
            # A send held by the frequency budget waits (its own timer fires at side_at); sales tasks
            # and lead updates queued behind it are not marketing email and go now: a sales alert
            # two days late missed the CRM's once-a-day merge and reached sales twice.
            held = e.side_at is not None and e.side_at > now
            if held and e.side_held_by != "budget":
                return None  # a retry after the receiving service failed: everything waits for it
            i = 0
            while i < len(e.side):
                s = j.steps.get(e.side[i])
                if not isinstance(s, EffectStep):
                    e.unqueue_side(i)
                    continue
                if held and s.type in ("send", "webhook"):
                    i += 1
                    continue
                effect = self._effect(state, j, e, s, now, out, side=True, anchors=e.side_anchors_at(i))
                if effect is not None:
                    return effect
                # The send was just held by the budget (side_at set): a task or update queued behind it
                # in the same pass goes now too (a sales task once waited a day behind a trigger email).
                held = True
                i += 1
            return None
        while True:
            if e.status != ACTIVE or e.due is None or e.due > now:
                if e.entry_events and self._entry_triggers(state, j, e, now, out):
                    continue  # an on_entry goto: the run goes on from its target
                if e.pause_by is not None and e.status == ACTIVE:
                    self._pause_after_due_steps(state, e, now, out)
                return None
            # Counted across calls (an effect step returns, its completion moves on, the next call goes
            # round again): a loop through a send and a wait of no time returned a send each call.
            if e.instant_at != now:
                e.instant_at, e.instant_steps = now, 0
            e.instant_steps += 1
            if e.instant_steps > MAX_INSTANT_STEPS:
                self._stop_instant_loop(state, j, e, now, out)
                return None
            if e.step is None:
                self._finish(state, e, COMPLETED, "end", now, out, summary=f"completed {j.name}")
                return None
            if e.waiting == "event":
                wait = j.step(e.step)
                waited = wait if isinstance(wait, WaitStep) else None
                target = str(waited.on_timeout if waited else None)
                types = waited.event.types if waited and waited.event else ()
                self._record(out, state, e, now, "timeout", f"no {'/'.join(types)} "
                             f"by the timeout of {wait.id}: going to {target}", step_from=wait.id, step_to=target)
                e.waiting = None
                self._move(e, target, now, out)
                continue
            e.waiting = None
            s = j.steps[e.step]
            if s.stage and s.stage != e.stage:
                self._enter_stage(state, j, e, s, now, out)
            if isinstance(s, EffectStep):
                late = (self._too_late(state, e, s, now)
                        if s.skip_if_late is not None or s.skip_after or s.skip_from else "")
                if late:
                    self._run(state, j, e, s, now, out, status="skipped", detail=late)
                    self._record(out, state, e, now, "skipped", f"{s.id} skipped: {late}", step_from=s.id,
                                 step_to=s.next, facts={"reason": late})
                    e.step, e.due = s.next, now
                    continue
                effect = self._effect(state, j, e, s, now, out, side=False)
                if effect is not None:
                    return effect
                continue
            self._instant(state, j, e, s, now, out)

    def _stop_instant_loop(self, state: LeadState, j: Journey, e: Enrollment, now: datetime, out: Outcome) -> None:
        """A loop without a wait (a version stored before such loops were refused): the enrolment is
        exited with the reason on the lead's timeline, and nothing more of it is sent."""
        steps = e.instant_steps - 1
        log.warning("journeys: stopped %s of lead %s (%s v%d) at step %s: %d steps at one instant (a loop "
                    "without a wait)", e.ekey, state.lead_id, j.key, j.version, e.step, steps)
        self._finish(state, e, EXITED, "instant_loop", now, out, withdraw=True,
                     summary=f"stopped: {steps} steps at one instant (a loop without a wait)",
                     facts={"steps": steps, "step": e.step})

    def _too_late(self, state: LeadState, e: Enrollment, s: EffectStep, now: datetime) -> str:
        """Why a step whose moment has passed is skipped (empty when it still runs): `skip_if_late`
        (how far past the time its wait set it may still run), `skip_after` (a time spec like a
        wait's `until`, after which it no longer makes sense) and `skip_from` (the same from that very
        moment on: a mid-trial email whose wait its `not_after` ended at the ending reminder's time runs
        at that time, and must be skipped there, not sent beside the reminder)."""
        tolerance = s.skip_if_late
        if tolerance is not None and e.timed_at is not None and now - e.timed_at > tolerance:
            return (f"its time {iso(e.timed_at)} passed {_hours(now - e.timed_at)} ago, more than its "
                    f"skip_if_late {s.skip_if_late_text}")
        spec = s.skip_after
        if spec is not None:
            deadline = self._time_of(spec, e, now, state_lead=state.lead)
            if deadline is not None and now > deadline:
                return f"past its skip_after {spec.text} ({iso(deadline)})"
        spec = s.skip_from
        if spec is not None:
            deadline = self._time_of(spec, e, now, state_lead=state.lead)
            if deadline is not None and now >= deadline:
                return f"at or after its skip_from {spec.text} ({iso(deadline)})"
        return ""

    def _enter_stage(self, state: LeadState, j: Journey, e: Enrollment, s: Step, now: datetime,
                     out: Outcome) -> None:
        if s.stage and s.stage != e.stage:
            hours = round((now - e.stage_at).total_seconds() / 3600, 2)
            summary = f"entered {j.stage_names.get(s.stage, s.stage)} stage"
            if e.stage:
                summary += f" after {hours} h in {e.stage}"
            self._record(out, state, e, now, "stage", summary, step_to=s.id, stage=s.stage,
                         facts={"from": e.stage, "hours_in_previous": hours if e.stage else None})
            e.stage, e.stage_at = s.stage, now
            out.touched.add(e.ekey)

    def _occurrence(self, e: Enrollment, step_id: str) -> str:
        return f"{e.entry}.{e.visits.get(step_id, 0) + 1}"

    def _run(self, state: LeadState, j: Journey, e: Enrollment, s: Step, now: datetime, out: Outcome,
             status: str = "done", detail: str = "", message_id: str = "") -> None:
        step_id = s.id
        visits = e.visits[step_id] = e.visits.get(step_id, 0) + 1
        occ = f"{e.entry}.{visits}"  # (_occurrence's, with the visit counted once)
        out.runs.append(StepRun(state.lead_id, e.ekey, e.journey, e.version, step_id, s.type, occ,
                                dedupe_key(state.lead_id, e, step_id, occ), status, now, s.stage or e.stage,
                                message_id=message_id, detail=detail))
        out.touched.add(e.ekey)

    def _effect(self, state: LeadState, j: Journey, e: Enrollment, s: EffectStep, now: datetime, out: Outcome, *,
                side: bool, anchors: Mapping[str, str] | None = None) -> Effect | None:
        """`anchors`: a queued side step's own (those of the event that queued it), else the enrolment's."""
        occ = self._occurrence(e, s.id)
        key = dedupe_key(state.lead_id, e, s.id, occ)
        if isinstance(s, SendStep):
            category, channel = s.category, s.channel
            if category == "nurture" and not s.budget_exempt:
                slot = self._budget_slot(state, now)
                if slot is not None and side:
                    e.side_at, e.side_held_by = slot, "budget"
                    out.side_due.add(e.ekey)
                    self._record(out, state, e, now, "deferred",
                                 f"{s.id} held by the frequency budget until {iso(slot)}", step_to=s.id)
                    return None
                if slot is not None:
                    e.due = slot
                    e.token += 1
                    e.waiting = "budget"
                    out.touched.add(e.ekey)
                    self._record(out, state, e, now, "deferred",
                                 f"{s.id} held by the frequency budget until {iso(slot)}", step_to=s.id)
                    return None
            context = {"subject": s.subject, "cta": s.cta, "brief": s.brief,
                       "stage": s.stage or e.stage, "url": s.url, **(e.anchors if anchors is None else anchors),
                       "entered_by": e.entered_by or None}
            payload = SendPayload(template=template_of(j, s), channel=channel, category=category, journey=e.journey,
                                  version=e.version, step=s.id,
                                  context={k: v for k, v in context.items() if v is not None},
                                  budget_exempt=s.budget_exempt)
            return Effect("send", e.ekey, s.id, key, occ, side, payload)
        if isinstance(s, TaskStep):
            due = now + s.due
            task = TaskPayload(kind=s.kind, title=s.title, priority=s.priority, due_at=due,
                               details={"journey": e.journey, "step": s.id, "stage": e.stage,
                                        "score": state.lead.get("score")})
            return Effect("task", e.ekey, s.id, key, occ, side, task)
        assert isinstance(s, UpdateStep), s.type
        return Effect("update", e.ekey, s.id, key, occ, side, UpdatePayload(set=dict(s.set)))

    def _budget_slot(self, state: LeadState, now: datetime) -> datetime | None:
        window, cap = self.settings.budget_window, self.settings.budget_max
        # The texts kept as they are (the engine wrote them): only their times are compared.
        recent: list[datetime] = []
        kept: list[str] = []
        for text in state.sends:
            t = parse_time(text)
            if t is not None and now - t < window:
                recent.append(t)
                kept.append(text)
        state.sends = kept
        if len(recent) < cap:
            return None
        return sorted(recent)[-cap] + window

    def complete(self, state: LeadState, effect: Effect, now: datetime, out: Outcome, *, status: str,
                 message_id: str = "", reason: str = "") -> None:
        """Record a performed effect and move past it."""
        e = state.enrollments[effect.ekey]
        e.retries = 0
        j = self.journey(e.journey, e.version)
        s = j.steps[effect.step]
        self._run(state, j, e, s, now, out, status=status, detail=reason, message_id=message_id)
        if isinstance(effect.payload, SendPayload) and effect.payload.category == "nurture" and status in (
                "sent", "scheduled", "duplicate"):
            state.sends.append(iso(now) or "")
        if effect.kind == "send" and status in ("sent", "scheduled", "duplicate"):
            e.last_sent = s.id
        if effect.side:
            if s.id in e.side:
                # The first queued of its kind (the one next_effect ran): a task may run ahead of a held send.
                e.unqueue_side(e.side.index(s.id))
            if effect.kind == "send" or e.side_held_by != "budget":
                e.side_at, e.side_held_by = None, ""  # the held step went: what is queued behind it may go
            return
        e.step = s.next
        e.due = now
        out.touched.add(e.ekey)

    def retry_later(self, state: LeadState, effect: Effect, now: datetime, delay: timedelta, out: Outcome,
                    reason: str) -> None:
        """The receiving service was unavailable: keep the cursor on the effect, try again later. Each
        try in a row waits twice the one before (`delay`, then 2x, 4x ... up to RETRY_MAX), so a service
        away for hours costs each waiting lead a few tries and timeline lines, not one a minute."""
        e = state.enrollments[effect.ekey]
        delay = min(delay * (2 ** min(e.retries, 16)), max(delay, RETRY_MAX))
        e.retries += 1
        if effect.side:
            e.side_at, e.side_held_by = now + delay, "retry"
            out.side_due.add(e.ekey)
        else:
            e.due = now + delay
            e.token += 1
        out.touched.add(e.ekey)
        self._record(out, state, e, now, "retry", f"{effect.step} will be retried at {iso(now + delay)}: {reason}",
                     step_to=effect.step)

    def _instant(self, state: LeadState, j: Journey, e: Enrollment, s: Step, now: datetime, out: Outcome) -> None:
        if isinstance(s, WaitStep):
            self._start_wait(state, j, e, s, now, out)
            return
        self._run(state, j, e, s, now, out)
        if isinstance(s, BranchStep):
            facts = self.facts(state, _synthetic(state, "branch"), e, now)
            match = rulesets.branch(j, s.id, s.rules, facts)
            target = str(match.meta["next"]) if match else str(s.default)
            if match:
                summary = f"branch {s.id} took {target}: {rulesets.explain(match.facts)} matched rule {match.rule}"
            else:
                summary = f"branch {s.id} took the default {target}: no rule matched"
            self._record(out, state, e, now, "branch", summary, step_from=s.id, step_to=target,
                         rule=match.rule if match else None, facts=dict(match.facts) if match else {})
            self._move(e, target, now, out)
        elif isinstance(s, SplitStep):
            variants = s.variants
            total = sum(v.weight for v in variants)
            digest = hashlib.sha1(f"{state.lead_id}:{e.journey}:{s.id}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64 * total
            chosen = variants[-1]
            for v in variants:
                point -= v.weight
                if point < 0:
                    chosen = v
                    break
            self._record(out, state, e, now, "split", f"split {s.id} assigned variant {chosen.name}",
                         step_from=s.id, step_to=str(chosen.next), rule=chosen.name)
            self._move(e, str(chosen.next), now, out)
        elif isinstance(s, JumpStep):
            self._record(out, state, e, now, "jump", f"jumped to {s.to}", step_from=s.id, step_to=s.to)
            self._move(e, str(s.to), now, out)
        elif isinstance(s, GoalStep):
            self._finish(state, e, COMPLETED, s.name, now, out, summary=f"goal reached: {s.name}")
        elif s.type == "end":
            self._finish(state, e, COMPLETED, "end", now, out, summary=f"completed {j.name}")
        elif s.type == "listen":
            e.due = None
            e.token += 1
        elif isinstance(s, JourneyStep) and s.type == "enrol":
            other = self._published_journey(str(s.journey))
            if other is not None:
                self._enter(state, other, _synthetic(state, "enrol"), now, out,
                            reason=f"enrolled by {j.key} step {s.id}")
            self._move(e, s.next, now, out)
        elif isinstance(s, JourneyStep) and s.type == "exit":
            for live in list(state.enrollments.values()):
                if live.journey == s.journey and live.status in LIVE and live.ekey != e.ekey:
                    self._finish(state, live, EXITED, f"{j.key}.{s.id}", now, out,
                                 summary=f"exited by {j.key} step {s.id}", withdraw=True)
            self._move(e, s.next, now, out)

    def _start_wait(self, state: LeadState, j: Journey, e: Enrollment, s: WaitStep, now: datetime,
                    out: Outcome) -> None:
        self._run(state, j, e, s, now, out)
        if s.event is not None:
            due = self._time_of(s.timeout, e, now, state_lead=state.lead)
            e.step, e.waiting, e.due, e.timed_at = s.id, "event", max(due or now, now), due or now
            e.token += 1
            self._record(out, state, e, now, "wait", f"waiting at {s.id} for "
                         f"{'/'.join(s.event.types)} until {iso(e.due)}", step_from=s.id)
            return
        if s.delay is not None:
            due = now + s.delay * e.pace
            kind = "delay"
        else:
            until, own = self._until(s, e, now, state_lead=state.lead)
            due = until or now
            kind = "until"
            if own is not None and s.not_after is not None:
                self._record(out, state, e, now, "wait", f"{s.id} ends at its not_after {s.not_after.text} "
                             f"({iso(due)}), before its own time {s.until.text if s.until else ''} ({iso(own)})",
                             step_from=s.id, step_to=s.next, facts={"until": iso(own), "not_after": iso(due)})
            if due <= now and s.if_past:
                target = s.if_past
                self._record(out, state, e, now, "skip", f"{s.id} already past ({iso(due)}): going to {target}",
                             step_from=s.id, step_to=target)
                self._move(e, target, now, out)
                return
        e.step, e.due, e.waiting, e.timed_at = s.next, max(due, now), kind if due > now else None, due
        e.token += 1
        out.touched.add(e.ekey)

    def _until(self, s: WaitStep, e: Enrollment, now: datetime,
               state_lead: JsonMapping | None) -> tuple[datetime | None, datetime | None]:
        """When an until wait ends: its time (None when its anchor or date is missing), or its
        `not_after` when that is earlier, then with the time it gave way to (for the timeline)."""
        due = self._time_of(s.until, e, now, state_lead=state_lead)
        cap = self._time_of(s.not_after, e, now, state_lead=state_lead) if s.not_after is not None else None
        if due is not None and cap is not None and cap < due:
            return cap, due
        return due, None

    def _time_of(self, spec: TimeSpec | None, e: Enrollment, now: datetime,
                 state_lead: JsonMapping | None) -> datetime | None:
        if spec is None:
            return None
        if spec.delay is not None:
            return now + spec.delay * e.pace
        base: datetime | None
        if spec.anchor is not None:
            base = e.entered_at if spec.anchor == "entered_at" else parse_time(e.anchors.get(spec.anchor))
        else:
            base = parse_time(_lead_fact(state_lead or {}, spec.fact))
        return base + spec.offset if base is not None else None

    def _move(self, e: Enrollment, target: str | None, now: datetime, out: Outcome) -> None:
        e.step, e.due, e.waiting = target, now, None
        e.token += 1
        out.touched.add(e.ekey)

    def _record(self, out: Outcome, state: LeadState | None, e: Enrollment, now: datetime, kind: str, summary: str,
                *, step_from: str | None = None, step_to: str | None = None, stage: str | None = None,
                rule: str | None = None, facts: JsonMapping | None = None, lead_id: str | None = None) -> None:
        out.transitions.append(Transition(
            lead_id=lead_id or (state.lead_id if state else ""), ekey=e.ekey, journey=e.journey, version=e.version,
            at=now, type=kind, summary=f"{e.journey}: {summary}", step_from=step_from, step_to=step_to,
            stage=stage or e.stage, rule=rule, facts=dict(facts or {})))


@dataclasses.dataclass(frozen=True, slots=True)
class _TypePlan:
    """The settings' part in one event type: an engagement event or not, whether a quiet-period clock
    reads it, and the playbook exits it takes."""

    engagement: bool
    clocks: bool
    exits: tuple[GlobalExit, ...]


class _PublishedIndex:
    """One published list's answers to what each message asks: which journeys listen to an event type
    (in published order, each with its rule sets for that type), their keys, and their date-relative
    entry rules ("<journey>.<rule>", date)."""

    def __init__(self, journeys: list[Journey]) -> None:
        self.journeys = journeys
        self.keys = {j.key for j in journeys}
        self.date_rules = [(f"{j.key}.{rule.name}", rule.date) for j in journeys for rule in j.entry
                           if rule.date is not None]
        self._types = [(j, j.event_types()) for j in journeys]
        self._listening: dict[str, list[tuple[Journey, rulesets.EventRules]]] = {}

    def listening(self, etype: str) -> list[tuple[Journey, rulesets.EventRules]]:
        found = self._listening.get(etype)
        if found is None:
            if len(self._listening) >= _TYPES_KEPT:
                self._listening.clear()  # event types come from outside: keep the memory bounded
            found = self._listening[etype] = [(j, rulesets.for_event(j, etype)) for j, types in self._types
                                              if etype in types or "*" in types]
        return found


def _synthetic(state: LeadState, etype: str, properties: JsonObject | None = None,
               message_id: str = "") -> BusMessage:
    """An event the engine posts to itself (a timer ran out, a rule enrols), shaped as a bus message so
    that one path handles both. It carries no snapshot: the lead is as the state holds it."""
    return BusMessage(id=message_id, lead_id=state.lead_id, type=etype, properties=properties or {})


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{round(hours / 24, 1)} d" if hours >= 48 else f"{round(hours, 1)} h"


def _lead_fact(lead: JsonMapping, fact: str | None) -> JsonValue:
    """The value at a `lead.a.b` path (None when any part is missing)."""
    value: JsonValue = {"lead": lead}
    for part in str(fact).split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _pauses(by: Journey, ej: Journey) -> bool:
    """Whether `by` pauses `ej`: named by key, or by kind. Always-on rule tables are named by their
    mode (or the legacy kind `triggers`), so `pauses: [sequence]` keeps pausing only step flows."""
    if ej.key in by.pauses:
        return True
    if ej.mode == "always_on":
        return "always_on" in by.pauses or "triggers" in by.pauses
    return ej.kind in by.pauses


def dedupe_key(lead_id: str, e: Enrollment, step: str, occurrence: str) -> str:
    """The cross-service contract: `<lead>:<journey>:<version>:<step>:<occurrence>`. An instance
    enrolment's occurrence names its instance first (`<instance>@<entry>.<visit>`): each webinar a lead
    registers for has entry 1, and without it the second webinar's confirmation and reminders had the
    first's keys, so messaging answered `duplicate` and the lead got none of them."""
    return f"{lead_id}:{e.journey}:{e.version}:{step}:{_instance_tag(e)}{occurrence}"


def occurrence_prefix(e: Enrollment) -> str:
    """What every dedupe key of the enrolment's current entry has after its step, before the visit."""
    return f"{_instance_tag(e)}{e.entry}."


def _instance_tag(e: Enrollment) -> str:
    """`<instance>@`, or nothing; an instance that is long or holds `:` or `@` by a digest of it, so the
    keys stay within their 400 characters and split as the contract says."""
    if not e.instance:
        return ""
    tag = e.instance
    if len(tag) > 64 or ":" in tag or "@" in tag:
        tag = "h" + hashlib.sha256(tag.encode()).hexdigest()[:24]
    return f"{tag}@"


ARCHIVED = "journey archived"  # the exit reason of the leads inside a journey when it is archived


def migrate(state: LeadState, e: Enrollment, new: Journey, mapping: Mapping[str, str], now: datetime,
            out: Outcome) -> str | None:
    """Move a live enrolment to a new version by step mapping; the target step, or None when unmapped."""
    current = e.step
    target = mapping.get(current or "", current) if current else None
    if current is not None and (target is None or target not in new.steps):
        return None
    old_version = e.version
    e.version = new.version
    e.step = target
    e.token += 1
    moved_to = new.step(target) if target else None
    if e.waiting == "event" and moved_to is not None and not (isinstance(moved_to, WaitStep) and moved_to.event):
        e.waiting, e.due = None, now
    out.touched.add(e.ekey)
    out.transitions.append(Transition(
        lead_id=state.lead_id, ekey=e.ekey, journey=e.journey, version=new.version, at=now, type="migrated",
        summary=f"{e.journey}: migrated from v{old_version} step {current} to v{new.version} step {target}",
        step_from=current, step_to=target, stage=e.stage))
    return target


def _policy(reentry: str, after: timedelta | None) -> str:
    """A re-entry policy as written: `always`, `never`, `after 30d`."""
    if reentry != "after" or after is None:
        return reentry
    seconds = int(after.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"after {seconds // size}{unit}"
    return f"after {seconds}s"
