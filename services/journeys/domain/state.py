"""The engine's state and outputs: one lead's journeys (LeadState), what a step asks the outside world
to do (Effect), and what the engine records (StepRun, Transition). Plain data, JSON-serialisable, so
the service keeps it in SQL and the simulator keeps it in memory."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TypedDict

from nurture import times
from nurture.jsontypes import JsonObject, JsonValue

ACTIVE, PAUSED, COMPLETED, EXITED = "active", "paused", "completed", "exited"
LIVE = (ACTIVE, PAUSED)
INACTIVITY = "~inactive"
DATE_PREFIX = "~date:"
ENGAGED_KEPT = 100  # message ids an enrolment remembers to count each email it engaged with once


iso = times.rfc3339_or_none  # the engine's names for the platform's UTC helpers
parse_time = times.parse_utc


@dataclass
class Enrollment:
    """One lead inside one journey (or one entity instance of it, e.g. one webinar)."""

    ekey: str
    journey: str
    version: int
    instance: str
    entry: int
    status: str
    step: str | None
    stage: str | None
    due: datetime | None
    entered_at: datetime
    stage_at: datetime
    token: int = 1
    waiting: str | None = None  # None | "delay" | "until" | "event": what the pending timer is
    pace: float = 1.0
    anchors: dict[str, str] = field(default_factory=dict)
    visits: dict[str, int] = field(default_factory=dict)
    fired: dict[str, str] = field(default_factory=dict)
    side: list[str] = field(default_factory=list)
    # Each queued side step's anchors as they were when it was queued (one entry per `side` entry, with
    # its step id): a side step runs later, and several downloads handled in one batch each move the
    # anchors, so rendering from the enrolment's anchors sent every queued delivery for the last
    # resource. None for an entry queued by an older release (it renders with the current anchors).
    side_anchors: list[dict[str, str] | None] = field(default_factory=list)
    side_token: int = 0
    side_at: datetime | None = None  # when queued side steps may run (the budget can hold them)
    side_held_by: str = ""  # what set side_at: "budget" holds sends only, "retry" holds every side step
    engaged: int = 0                # distinct emails of this journey opened or clicked
    engaged_with: list[str] = field(default_factory=list)  # their message ids (the last ENGAGED_KEPT)
    paused_remaining: float | None = None
    # The enrolment that pauses this one once the steps it had due when that one entered have run (the
    # engine's _apply_pauses): a lead's segment welcome, due at once, went 11 days late when a trial
    # started in the same instant. None almost always (then not stored).
    pause_by: str | None = None
    last_sent: str | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    timed_at: datetime | None = None  # when the step at the cursor was meant to run (set by its wait)
    # The id of the bus message that entered the lead (scoring's event id, `<event id>:stage` for the
    # lifecycle change it caused): its sends carry it, so analytics can tell an entry a win caused (the
    # customer journey) from nurture before the win, whatever the clock says. "" for an older entry.
    entered_by: str = ""
    # The event that enrolled the lead (and any that came before the entry's steps ran), each {type,
    # properties}, while its `on_entry` triggers wait for those steps (the engine's _entry_triggers).
    entry_events: list[JsonObject] = field(default_factory=list)
    # Tries in a row that met the receiving service unavailable (the engine's retry_later backs off by
    # it); 0 again once a step is performed.
    retries: int = 0
    # Steps of the flow run at one instant (`instant_at`), across next_effect calls: the engine's guard
    # against a loop without a wait that a stored version still holds (MAX_INSTANT_STEPS). Not stored: a
    # loop runs within one drive of the enrolment, at one `now`.
    instant_at: datetime | None = None
    instant_steps: int = 0
    # Keys this release does not know, written by a newer one (during a rolling upgrade the replicas run
    # both): kept as read and written back, so an older replica neither refuses the state nor drops them.
    newer: JsonObject = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        # Hand-built rather than dataclasses.asdict: asdict deep-copies every nested dict, and this
        # runs for each touched enrolment on every commit.
        out = dict(self.__dict__)
        newer = out.pop("newer")
        del out["instant_at"], out["instant_steps"]
        if newer:
            out = {**newer, **out}
        for k in ("anchors", "visits", "fired"):
            out[k] = dict(out[k])
        if self.entry_events:
            out["entry_events"] = list(self.entry_events)
        else:
            del out["entry_events"]  # (almost always: stored only while pending)
        if not self.retries:
            del out["retries"]  # (stored only while a service is away)
        if not self.entered_by:
            del out["entered_by"]
        if self.pause_by is None:
            del out["pause_by"]  # (stored only until the steps due at a pause have run)
        out["side"] = list(self.side)
        # Stored as [step, anchors] pairs beside `side` (which stays a list of step ids, as an older
        # release reads it); written only while something is queued.
        if self.side:
            out["side_anchors"] = [[step, dict(a) if a is not None else None]
                                   for step, a in zip(self.side, self._side_anchors(), strict=True)]
        else:
            del out["side_anchors"]
        out["engaged_with"] = list(self.engaged_with)
        for k in ("due", "entered_at", "stage_at", "ended_at", "side_at", "timed_at"):
            out[k] = iso(getattr(self, k))
        return out

    @classmethod
    def from_json(cls, raw: JsonObject) -> Enrollment:
        data = dict(raw)
        for k in ("due", "entered_at", "stage_at", "ended_at", "side_at", "timed_at"):
            data[k] = parse_time(data.get(k))
        data["side_anchors"] = _side_anchors_from_json(data.get("side") or [], data.get("side_anchors"))
        if not _ENROLLMENT_KEYS.issuperset(data):
            data = {k: v for k, v in data.items() if k in _ENROLLMENT_KEYS} | {
                "newer": {k: v for k, v in data.items() if k not in _ENROLLMENT_KEYS}}
        return cls(**data)

    def _side_anchors(self) -> list[dict[str, str] | None]:
        """`side_anchors` aligned with `side` (None where unknown)."""
        if len(self.side_anchors) != len(self.side):
            self.side_anchors = [None] * len(self.side)
        return self.side_anchors

    def queue_side(self, step: str) -> None:
        """Queue a side step with the anchors it is to render with: the enrolment's as they are now."""
        self._side_anchors().append(dict(self.anchors))
        self.side.append(step)

    def unqueue_side(self, i: int) -> None:
        self._side_anchors().pop(i)
        self.side.pop(i)

    def clear_side(self) -> None:
        self.side.clear()
        self.side_anchors = []

    def side_anchors_at(self, i: int) -> dict[str, str]:
        """The anchors the queued side step at `i` renders with."""
        own = self._side_anchors()[i]
        return self.anchors if own is None else own


def _side_anchors_from_json(side: list[str], raw: JsonValue) -> list[dict[str, str] | None]:
    """The stored [step, anchors] pairs, when they still match `side` step for step; else (a state stored
    before they existed, or whose queue an older release changed) None for each: the current anchors."""
    if isinstance(raw, list) and len(raw) == len(side) and all(
            isinstance(pair, list) and len(pair) == 2 and pair[0] == step
            for pair, step in zip(raw, side, strict=True)):
        return [{str(k): str(v) for k, v in pair[1].items()} if isinstance(pair[1], dict) else None
                for pair in raw]
    return [None] * len(side)


# What Enrollment.to_json writes (its fields but `newer`, whose keys it writes instead, and the
# in-memory step count of the instant).
_ENROLLMENT_KEYS = frozenset(f.name for f in fields(Enrollment)) - {"newer", "instant_at", "instant_steps"}


class ConsentExit(TypedDict, total=False):
    """Where an enrolment stood when the lead left its journey for lack of email consent, to resume
    there when consent comes back (times as RFC 3339 text, as stored; a state stored before a key
    existed lacks it, so readers use .get)."""

    due: str | None
    waiting: str | None
    withdrawn: bool
    reason: str  # no_consent | unsubscribed | spam_reported | email_hard_bounced
    scope: str | None  # an unsubscribe's scope (nurture, all...)


class PastEnrollment(TypedDict, total=False):
    """What a lead's past in one journey (by enrolment key) decides re-entry on."""

    entries: int
    ended_at: str | None
    consent_exit: ConsentExit


class DateTimer(TypedDict, total=False):
    """A lead-level timer: a date-relative entry (at, token, fired) or a quiet-period clock (since and
    its threshold step as well)."""

    at: str | None
    since: str | None
    step: int
    token: int
    fired: bool


@dataclass
class LeadState:
    """Everything the engine knows about one lead: its snapshot and its enrolments."""

    lead_id: str
    lead: JsonObject = field(default_factory=dict)
    enrollments: dict[str, Enrollment] = field(default_factory=dict)
    sends: list[str] = field(default_factory=list)  # nurture sends inside the budget window (RFC 3339)
    history: dict[str, PastEnrollment] = field(default_factory=dict)  # by ekey
    last_engagement: datetime | None = None
    inactive_due: datetime | None = None
    inactive_token: int = 0
    inactive_step: int = 0
    dates: dict[str, DateTimer] = field(default_factory=dict)  # by "<journey>.<rule>" or clock key
    # Journey categories an opt-out stopped (category -> unsubscribed | spam_reported | email_hard_bounced):
    # no journey of them is entered until messaging lifts an unsubscribe (email_resubscribed).
    opted_out: dict[str, str] = field(default_factory=dict)
    newer: JsonObject = field(default_factory=dict)  # keys of a newer release, kept (as Enrollment's)

    def to_json(self) -> JsonObject:
        return {
            **self.newer,
            "lead_id": self.lead_id, "lead": self.lead, "sends": self.sends, "history": self.history,
            "last_engagement": iso(self.last_engagement), "inactive_due": iso(self.inactive_due),
            "inactive_token": self.inactive_token, "inactive_step": self.inactive_step, "dates": self.dates,
            "opted_out": self.opted_out,
        }

    @classmethod
    def from_json(cls, raw: JsonObject, enrollments: list[Enrollment]) -> LeadState:
        return cls(
            lead_id=raw["lead_id"], lead=raw.get("lead") or {}, sends=list(raw.get("sends") or []),
            history=dict(raw.get("history") or {}), last_engagement=parse_time(raw.get("last_engagement")),
            inactive_due=parse_time(raw.get("inactive_due")), inactive_token=int(raw.get("inactive_token", 0)),
            inactive_step=int(raw.get("inactive_step", 0)), dates=dict(raw.get("dates") or {}),
            opted_out=dict(raw.get("opted_out") or {}),
            enrollments={e.ekey: e for e in enrollments},
            newer={k: v for k, v in raw.items() if k not in _LEAD_STATE_KEYS},
        )


# What LeadState.to_json writes of its own (its enrolments are stored apart).
_LEAD_STATE_KEYS = frozenset(f.name for f in fields(LeadState)) - {"newer", "enrollments"}


# Effect, StepRun, Transition and the payloads with slots and not frozen: one is built per effect,
# step run and explained change (hundreds of thousands in a simulation), and a frozen dataclass sets
# each field through object.__setattr__ (about three times the cost of building one). Treat them as
# values all the same: nothing changes one once built.
@dataclass(slots=True)
class SendPayload:
    """A send step's ask of messaging (Send)."""

    template: str
    channel: str
    category: str  # nurture | transactional
    journey: str
    version: int
    step: str
    context: JsonObject  # the template's variables: the step's subject, cta, brief, url, stage, anchors
    budget_exempt: bool = False  # the step's `budget: exempt`: messaging's caps and gap do not hold it either


@dataclass(slots=True)
class TaskPayload:
    """A task step's ask of crm_sync (RequestTask)."""

    kind: JsonValue
    title: JsonValue
    priority: JsonValue
    due_at: datetime
    details: JsonObject  # journey, step, stage, score: shown to sales with the task


@dataclass(slots=True)
class UpdatePayload:
    """An update step's ask of scoring (UpsertLead merging `set` into the lead's attributes)."""

    set: JsonObject


@dataclass(slots=True)
class Effect:
    """Something a step asks of another service. `dedupe_key` makes retries safe."""

    kind: str  # send | task | update
    ekey: str
    step: str
    dedupe_key: str
    occurrence: str
    side: bool
    payload: SendPayload | TaskPayload | UpdatePayload


@dataclass(slots=True)
class StepRun:
    lead_id: str
    ekey: str
    journey: str
    version: int
    step: str
    step_type: str
    occurrence: str
    dedupe_key: str
    status: str  # done | sent | scheduled | suppressed | failed | duplicate | deferred
    at: datetime
    stage: str | None
    message_id: str = ""
    detail: str = ""


@dataclass(slots=True)
class Transition:
    """One explained change: what happened, from where to where, which rule on which facts."""

    lead_id: str
    ekey: str
    journey: str
    version: int
    at: datetime
    type: str  # entered | stage | branch | jump | trigger | wait | timeout | event | paused | resumed | goal | ...
    summary: str
    step_from: str | None = None
    step_to: str | None = None
    stage: str | None = None
    rule: str | None = None
    facts: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One enrolment's waiting messages to withdraw (messaging Withdraw): the lead left it by `reason`."""

    journey: str
    version: int
    occurrence_prefix: str   # "<entry>." or "<instance>@<entry>." (engine.occurrence_prefix)
    reason: str


@dataclass(slots=True)
class Outcome:
    """What one engine call produced, for the caller to persist and schedule."""

    runs: list[StepRun] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # ekeys whose enrolment changed (re-arm their timers)
    side_due: set[str] = field(default_factory=set)  # ekeys with side steps to run now
    inactivity_changed: bool = False
    dates_changed: set[str] = field(default_factory=set)
    erased: bool = False
    # Enrolments the lead left by a rule (not a consent exit, not the journey's own end): their nurture
    # messages still waiting in messaging for a later time are withdrawn once this outcome is committed.
    withdrawn: list[Withdrawal] = field(default_factory=list)

    def extend(self, other: Outcome) -> None:
        self.runs += other.runs
        self.transitions += other.transitions
        self.withdrawn += other.withdrawn
        self.touched |= other.touched
        self.side_due |= other.side_due
        self.inactivity_changed |= other.inactivity_changed
        self.dates_changed |= other.dates_changed
