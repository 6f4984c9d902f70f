"""The scoring model: a YAML definition compiled to rule sets, and the pure scoring of one event.

No SQL and no gRPC here: `score_event` takes the lead's profile (`ScoredProfile`), the event and the time, and returns
what changes (points with the rule and why, counters, grade, stage, segment, signals). Storage applies it.
Behaviour rules are grouped by the event types they can match, so each event is evaluated only
against the rules that could fire for it (the engine's cost grows with every rule that fires).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import Field, ValidationError

from nurture.bounces import is_hard_bounce
from nurture.datafiles import Open, problems_of, read_yaml
from nurture.jsontypes import JsonMapping, JsonObject, JsonValue
from nurture.limits import INT32_MAX, INT32_MIN
from nurture.rules import InvalidRule, RuleSpec, compile_rules, validate_condition
from services.scoring.domain.records import ScoredProfile

MODEL_PATH = Path(__file__).parents[1] / "data" / "model.yaml"
ANY_TYPE = "*"
WINDOW_KEEP = timedelta(days=30)
# A score is a proto int32 wherever it goes (the lead, its history): points past it stop at the top, as
# negative points stop at 0, so no run of events stores a lead that cannot be read.
SCORE_MAX = INT32_MAX


def bounded_score(score: int) -> int:
    return min(SCORE_MAX, max(0, score))


@dataclass(frozen=True)
class Points:
    rule: str
    points: int
    why: str


@dataclass
class Outcome:
    """What one event does to a lead."""

    points: list[Points] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)
    counters: JsonObject = field(default_factory=dict)
    recent: dict[str, list[int]] = field(default_factory=dict)
    interests: dict[str, list[str]] = field(default_factory=dict)
    segment: str | None = None
    stage: str | None = None
    consent_email: bool | None = None
    engaged: bool = False

    @property
    def delta(self) -> int:
        return sum(p.points for p in self.points)

    def score_from(self, old: int) -> int:
        """The score after the event: each rule's points in turn, kept within 0..SCORE_MAX at each step, as
        the score history records them (`score_after` of each change). Bounding only the sum made the
        lead's score differ from its history's last line whenever a negative rule met the floor beside
        a positive one (2, then -10 and +5: history 0 then 5, the lead 0)."""
        score = old
        for p in self.points:
            score = bounded_score(score + p.points)
        return score


def _types_of(cond: JsonMapping) -> set[str] | None:
    """The event types a condition can match, or None when it can match any."""
    if "all" in cond:
        found = [t for t in (_types_of(c) for c in cond["all"]) if t is not None]
        return set.intersection(*found) if found else None
    if "any" in cond:
        parts = [_types_of(c) for c in cond["any"]]
        if any(p is None for p in parts):
            return None
        return set().union(*[p for p in parts if p is not None])
    if cond.get("fact") == "event.type":
        if "eq" in cond:
            return {str(cond["eq"])}
        if "in" in cond:
            return {str(v) for v in cond["in"]}
    return None


class ScoringModel:
    """A validated, compiled scoring model."""

    def __init__(self, definition: JsonMapping) -> None:
        problems = validate_model(definition)
        if problems:
            raise InvalidRule(problems)
        self.definition = dict(definition)
        self.name = str(definition["name"])
        self.version = int(definition["version"])
        digest = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:10]
        prefix = f"scoring_{self.name}_v{self.version}_{digest}"
        self.behaviour = {r["name"]: r for r in definition["behaviour"]}
        by_type: dict[str, list[RuleSpec]] = {}
        for rule in definition["behaviour"]:
            spec = RuleSpec(rule["name"], rule["when"], {"points": int(rule["points"])})
            for t in sorted(_types_of(rule["when"]) or {ANY_TYPE}):
                by_type.setdefault(t, []).append(spec)
        self._by_type = {t: compile_rules(f"{prefix}_b_{t}", specs) for t, specs in by_type.items()}
        self._fit = compile_rules(
            f"{prefix}_fit", [RuleSpec(f["name"], f["when"], {"points": int(f["points"])}) for f in definition["fit"]]
        )
        self.fit_rules = {f["name"]: f for f in definition["fit"]}
        self._segments = compile_rules(
            f"{prefix}_seg", [RuleSpec(f"seg_{i}_{s['segment']}", s["when"], {"segment": s["segment"]})
                              for i, s in enumerate(definition["segments"])]
        )
        # The segments a lead may be given (classified, or set through the API): the model's, in its order.
        self.segment_names: tuple[str, ...] = tuple(dict.fromkeys(str(s["segment"]) for s in definition["segments"]))
        self.grades = sorted(definition["grades"].items(), key=lambda kv: -int(kv[1]))
        self.decay = definition["decay"]
        self.engagement_events = set(definition["engagement_events"])
        life = definition["lifecycle"]
        self.stage_order: list[str] = list(life["order"])
        # Optional, as LifecycleShape says (a model may move stages by score only, or by events only).
        self.stage_thresholds: dict[str, int] = dict(life.get("thresholds", {}))
        self.stage_events: dict[str, str] = dict(life.get("events", {}))
        self.stage_signals: dict[str, str] = dict(life.get("signals", {}))
        recycle = life.get("recycle") or {}
        self.recycle_events: frozenset[str] = frozenset(recycle.get("events", ()))
        self.recycle_stage: str | None = recycle.get("stage")
        self.recycle_from: frozenset[str] = frozenset(recycle.get("from", ()))
        self.score_signals: dict[str, int] = dict(definition.get("score_signals", {}))

    # -- fit, segments, stages --------------------------------------------------------------------

    def fit(self, attributes: JsonMapping | None, email: str | None) -> tuple[int, str, list[str]]:
        """Fit points, grade and the rules that gave them, from the profile's attributes and email."""
        facts = {"attributes": attributes or {}, "email": email or None}
        matches = self._fit.evaluate(facts)
        points = sum(int(m.meta["points"]) for m in matches)
        grade = next((g for g, minimum in self.grades if points >= int(minimum)), "D")
        return points, grade, [m.rule for m in matches]

    def classify(self, attributes: JsonMapping | None, event: JsonMapping | None = None) -> str | None:
        facts = {"attributes": attributes or {}, "event": event or {}}
        matches = self._segments.evaluate(facts)
        return str(matches[0].meta["segment"]) if matches else None

    def stage_for(self, current: str, score: int, event_type: str | None, *, previous_score: int | None = None
                  ) -> str:
        """Stages move forward, but for sales' rejection (`lifecycle.recycle`): its events move a lead in
        one of its `from` stages to its `stage` (seed 004's closed loop: a rejected MQL is recycled back
        to nurturing, not left an MQL). A recycled lead re-qualifies on fresh evidence only: a score
        threshold moves it when the score rises through it (from `previous_score`, below, to `score`), not
        the score it had when sales turned it down; events move it as they move any lead."""
        rank = {s: i for i, s in enumerate(self.stage_order)}
        best = current if current in rank else self.stage_order[0]
        if event_type in self.recycle_events and best in self.recycle_from and self.recycle_stage:
            return self.recycle_stage
        recycled = best == self.recycle_stage
        before = score if previous_score is None else previous_score
        candidates = [s for s, threshold in self.stage_thresholds.items()
                      if score >= int(threshold) and not (recycled and before >= int(threshold))]
        if event_type and event_type in self.stage_events:
            candidates.append(self.stage_events[event_type])
        for stage in candidates:
            if rank[stage] > rank[best]:
                best = stage
        return best

    # -- one event -----------------------------------------------------------------------------------

    def score_event(self, lead: ScoredProfile, event: JsonMapping, now: datetime) -> Outcome:
        """Count the event, evaluate the behaviour rules on it, and work out every consequence."""
        out = Outcome()
        etype = str(event["type"])
        props = event.get("properties") or {}
        occurred: datetime = event["occurred_at"]
        ts = int(occurred.timestamp())
        recent = {k: list(v) for k, v in (lead.get("recent") or {}).items()}
        totals = dict((lead.get("counters") or {}).get("totals", {}))
        if etype in self.engagement_events:
            recent.setdefault("interactions", []).append(ts)
            out.engaged = True
        if etype == "email_opened":
            recent.setdefault("opens", []).append(ts)
        if etype == "email_clicked":
            recent.setdefault("clicks", []).append(ts)
        if etype == "resource_downloaded":
            totals["downloads"] = int(totals.get("downloads", 0)) + 1
        if etype == "page_viewed":
            category = str(props.get("category", ""))
            if category == "high_intent":
                totals["high_intent_views"] = int(totals.get("high_intent_views", 0)) + 1
            if category == "pricing":
                totals["pricing_views"] = int(totals.get("pricing_views", 0)) + 1
        floor = int((now - WINDOW_KEEP).timestamp())
        recent = {k: sorted(t for t in v if t >= floor)[-200:] for k, v in recent.items()}
        last_engaged = lead.get("last_engaged_at")
        if out.engaged and (last_engaged is None or occurred > last_engaged):
            last_engaged = occurred
        out.recent = recent
        out.counters = derive_counters(recent, totals, last_engaged, now)
        out.interests = _interests(lead, etype, props)

        facts = {"event": {"type": etype, "properties": props}, "lead": _lead_facts(lead),
                 "counters": out.counters}
        rules = [*(self._by_type.get(etype, None),), self._by_type.get(ANY_TYPE)]
        today = now.date().isoformat()
        fired_today = dict((lead.get("counters") or {}).get("fired_today", {}))
        if fired_today.get("day") != today:
            fired_today = {"day": today}
        for compiled in rules:
            if compiled is None:
                continue
            for match in compiled.evaluate(facts):
                rule = self.behaviour[match.rule]
                cap = rule.get("max_per_day")
                if cap is not None:
                    if int(fired_today.get(match.rule, 0)) >= int(cap):
                        continue
                    fired_today[match.rule] = int(fired_today.get(match.rule, 0)) + 1
                out.points.append(Points(match.rule, int(rule["points"]), _explain(rule["why"], match.facts)))
                out.signals.extend(s for s in rule.get("signals", []) if s not in out.signals)
        out.counters["fired_today"] = fired_today
        out.counters["totals"] = totals

        if not lead.get("segment"):
            out.segment = self.classify(lead.get("attributes"), {"type": etype, "properties": props})
        old_score = int(lead.get("score") or 0)
        new_score = out.score_from(old_score)
        old_stage = str(lead.get("lifecycle_stage") or self.stage_order[0])
        # Subscribing to a channel (the newsletter, email again after an unsubscribe) is consent,
        # not the purchase a plain `subscribed` is: it moves no stage.
        new_stage = self.stage_for(old_stage, new_score, None if _channel_subscription(etype, props) else etype,
                                   previous_score=old_score)
        if new_stage != old_stage:
            out.stage = new_stage
            signal = self.stage_signals.get(new_stage)
            if signal and signal not in out.signals:
                out.signals.append(signal)
        for signal, threshold in self.score_signals.items():
            if old_score < int(threshold) <= new_score and signal not in out.signals:
                out.signals.append(signal)
        if etype == "spam_reported" or is_hard_bounce(etype, props) or (
            etype == "unsubscribed" and props.get("scope") not in ("nurture", "transactional")
        ):
            # An unsubscribe scoped to one kind of mail is messaging's suppression, not a withdrawal
            # of all email consent.
            out.consent_email = False
        elif _channel_subscription(etype, props) and props.get("channel") == "email":
            out.consent_email = True
        return out


def _channel_subscription(etype: str, props: JsonMapping) -> bool:
    """`subscribed` with `properties.channel` is a subscription to mail of that channel (consent);
    without one it is the paid subscription (the seed's purchase)."""
    return etype == "subscribed" and bool(props.get("channel"))


def derive_counters(
    recent: Mapping[str, list[int]], totals: JsonMapping, last_engaged: datetime | None, now: datetime
) -> JsonObject:
    """Windowed engagement counters as of `now`."""
    n = int(now.timestamp())

    def within(kind: str, seconds: int) -> int:
        return sum(1 for t in recent.get(kind, []) if n - seconds <= t <= n)

    day = 86_400
    return {
        "opens_7d": within("opens", 7 * day),
        "opens_14d": within("opens", 14 * day),
        "opens_30d": within("opens", 30 * day),
        "clicks_7d": within("clicks", 7 * day),
        "clicks_14d": within("clicks", 14 * day),
        "clicks_30d": within("clicks", 30 * day),
        "interactions_24h": within("interactions", day),
        "interactions_7d": within("interactions", 7 * day),
        "downloads": int(totals.get("downloads", 0)),
        "high_intent_views": int(totals.get("high_intent_views", 0)),
        "pricing_views": int(totals.get("pricing_views", 0)),
        "days_since_engagement": (now - last_engaged).days if last_engaged else None,
        "last_engagement_at": last_engaged.isoformat() if last_engaged else None,
    }


def _lead_facts(lead: ScoredProfile) -> JsonObject:
    keys = ("segment", "score", "grade", "lifecycle_stage", "attributes", "timezone", "locale")
    return {k: lead.get(k) for k in keys if lead.get(k) is not None}


def _interests(lead: ScoredProfile, etype: str, props: JsonMapping) -> dict[str, list[str]]:
    current = lead.get("interests") or {}
    countries = list(current.get("countries", []))
    topics = list(current.get("topics", []))
    if etype in ("page_viewed", "resource_downloaded", "video_watched", "email_clicked"):
        country = props.get("country")
        if isinstance(country, str) and country and country not in countries:
            countries.append(country)
        category = props.get("category")
        if isinstance(category, str) and category and category not in topics:
            topics.append(category)
    return {"countries": countries[-10:], "topics": topics[-20:]}


def _explain(why: str, facts: JsonMapping) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in facts.items())
    return f"{why} ({shown})" if shown else why


class RecycleShape(Open):
    events: list[str]
    stage: str
    # The stages sales' rejection moves (a customer's lost upsell deal leaves it a customer).
    from_: list[str] = Field(alias="from")


class LifecycleShape(Open):
    order: list[str]
    thresholds: dict[str, int] = Field(default_factory=dict)
    events: dict[str, str] = Field(default_factory=dict)
    signals: dict[str, str] = Field(default_factory=dict)
    recycle: RecycleShape | None = None


class ModelShape(Open):
    """The parts of a model definition and their types; the rules inside are checked by validate_model
    (names, points, conditions, stages) with their own texts."""

    name: str
    version: int
    behaviour: list[JsonObject]
    fit: list[JsonObject]
    grades: dict[str, int]
    decay: JsonObject
    lifecycle: LifecycleShape
    segments: list[JsonObject]
    engagement_events: list[str]
    score_signals: dict[str, int] = Field(default_factory=dict)


# The parts the rule checks below read: with one of them malformed, they cannot run.
_CHECKED_PARTS = ("behaviour", "fit", "segments", "lifecycle")


def _shape_problems(definition: JsonMapping) -> tuple[list[str], bool]:
    """(every shape problem, whether one is in a part the rule checks read)."""
    try:
        ModelShape.model_validate(definition)
    except ValidationError as exc:
        # A missing part keeps the text the API has always answered ("model: 'name' is required").
        problems = [f"model: '{e['loc'][0]}' is required" if e["type"] == "missing" and len(e["loc"]) == 1
                    else text for e, text in zip(exc.errors(), problems_of(exc), strict=True)]
        return problems, any(e["loc"] and e["loc"][0] in _CHECKED_PARTS for e in exc.errors())
    return [], False


def _int_problem(value: object, *, low: int = INT32_MIN, high: int = INT32_MAX) -> str | None:
    """What is wrong with a number the scoring reads with int() (None when it is fine). A score goes to
    proto int32 fields (the lead, its history), so points past that range could only store a lead
    that no read can answer."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if not low <= value <= high:
        return f"must be an integer from {low} to {high}"
    return None


def _rule_problems(where: str, rule: JsonMapping, *, required: tuple[str, ...]) -> list[str]:
    """A behaviour or fit rule's own fields as scoring reads them: a name, its why (behaviour: the
    score change's reason), integer points, a daily cap of at least 1, signals as names."""
    problems = [f"{where}: needs a {key} (a non-empty string)" for key in required
                if not isinstance(rule.get(key), str) or not rule[key]]
    if (p := _int_problem(rule.get("points"))) is not None:
        problems.append(f"{where}: points {p}")
    if "max_per_day" in rule and (p := _int_problem(rule["max_per_day"], low=1)) is not None:
        problems.append(f"{where}: max_per_day {p}")
    signals = rule.get("signals", [])
    if not isinstance(signals, list) or not all(isinstance(x, str) and x for x in signals):
        problems.append(f"{where}: signals must be a list of names")
    problems.extend(f"{where}: {p}" for p in validate_condition(rule.get("when")))
    return problems


# decay's settings and their ranges: it starts after `inactive_days`, repeats every `every_days` (0 would
# decay again at the instant it decayed), never below `floor`; `points` lowers the score. The days are
# added to a lead's last engagement (up to nurture.limits.TIME_MAX, the year 9000) for its next lapse:
# past a century, a date past 9999 or a timedelta past its range made every event a 500 (OverflowError).
MAX_DECAY_DAYS = 36_500
_DECAY = {"inactive_days": (1, MAX_DECAY_DAYS), "every_days": (1, MAX_DECAY_DAYS), "points": (INT32_MIN, 0),
          "floor": (0, INT32_MAX)}

# The widths of the columns that store the model's names (scoring's tables.py): a name past one passed
# the checks and then failed every write of a lead it reached on PostgreSQL, which enforces the width.
MAX_RULE_NAME = 128     # scoring_score_changes.rule
MAX_GRADE = 2           # scoring_leads.grade
MAX_STAGE = 32          # scoring_leads.lifecycle_stage
MAX_SEGMENT = 64        # scoring_leads.segment


def _decay_problems(decay: JsonMapping) -> list[str]:
    problems = []
    for key, (low, high) in _DECAY.items():
        if key not in decay:
            if key != "floor":
                problems.append(f"decay: '{key}' is required")
        elif (p := _int_problem(decay[key], low=low, high=high)) is not None:
            problems.append(f"decay: {key} {p}")
    return problems


def _name_problem(value: object, width: int) -> str | None:
    if not isinstance(value, str) or not value:
        return "needs a name (a non-empty string)"
    if len(value) > width:
        return f"names at most {width} characters"
    return None


def _lifecycle_problems(life: JsonMapping) -> list[str]:
    """The stages: a lead is created at the first, so there must be one; each is stored on the lead."""
    order = life.get("order", [])
    problems = [] if order else ["lifecycle: order needs at least one stage (a new lead's)"]
    seen: set[str] = set()
    for i, stage in enumerate(order):
        if (p := _name_problem(stage, MAX_STAGE)) is not None:
            problems.append(f"lifecycle.order[{i}]: {p}")
        elif stage in seen:
            problems.append(f"lifecycle.order[{i}]: duplicate stage {stage}")
        seen.add(str(stage))
    recycle = life.get("recycle") or {}
    for stage in [*life.get("thresholds", {}), *life.get("events", {}).values(), *recycle.get("from", []),
                  *([recycle["stage"]] if "stage" in recycle else [])]:
        if stage not in order:
            problems.append(f"lifecycle: unknown stage {stage}")
    if recycle.get("stage") in life.get("thresholds", {}):
        problems.append(f"lifecycle.recycle: stage {recycle['stage']} is reached by sales' rejection only,"
                        " not a score threshold")
    return problems


def validate_model(definition: JsonValue) -> list[str]:
    """Every problem of a model definition: its shape (the parts and their types), then its rules. A
    model that passes scores every event without failing on its own fields."""
    if not isinstance(definition, Mapping):
        return ["model: expected a mapping"]
    problems, blocking = _shape_problems(definition)
    if blocking:
        return problems
    names: set[str] = set()
    for i, rule in enumerate(definition["behaviour"]):
        where = f"behaviour[{i}]"
        if not isinstance(rule, Mapping) or not isinstance(rule.get("name"), str) or not rule["name"]:
            problems.append(f"{where}: needs a name")
            continue
        if len(rule["name"]) > MAX_RULE_NAME:
            problems.append(f"{where}: names at most {MAX_RULE_NAME} characters")
        if rule["name"] in names:
            problems.append(f"{where}: duplicate rule {rule['name']}")
        names.add(rule["name"])
        problems.extend(_rule_problems(f"{where} {rule['name']}", rule, required=("why",)))
    fit_names: set[str] = set()
    for i, rule in enumerate(definition["fit"]):
        name = rule.get("name")
        where = f"fit[{i}] {name}" if isinstance(name, str) and name else f"fit[{i}]"
        if isinstance(name, str) and name in fit_names:
            problems.append(f"{where}: duplicate rule {name}")
        fit_names.add(str(name))
        problems.extend(_rule_problems(where, rule, required=("name",)))
    for i, seg in enumerate(definition["segments"]):
        if not isinstance(seg.get("segment"), str) or not seg["segment"]:
            problems.append(f"segments[{i}]: needs a segment (a non-empty string)")
        elif len(seg["segment"]) > MAX_SEGMENT:
            problems.append(f"segments[{i}]: segment names at most {MAX_SEGMENT} characters")
        problems.extend(f"segments[{i}]: {p}" for p in validate_condition(seg.get("when")))
    if isinstance(definition.get("decay"), Mapping):
        problems.extend(_decay_problems(definition["decay"]))
    if isinstance(definition.get("grades"), Mapping):
        problems.extend(f"grades.{grade}: a grade is 1-{MAX_GRADE} characters" for grade in definition["grades"]
                        if not grade or len(grade) > MAX_GRADE)
    problems.extend(_lifecycle_problems(definition["lifecycle"]))
    return problems


def _minimum(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def order_problems(definition: JsonMapping) -> list[str]:
    """A draft's grades and stage thresholds out of order: grades are listed best first, each needing more
    fit points than the next (A at 20 below B at 25 graded a lead of 22 fit points an A and one of 30 a B),
    and the score thresholds rise along lifecycle.order (mql at 80 above sql at 70: a lead of 75 was an
    sql, and no score ever made one an mql). Checked on a new draft only: a model stored or published before still
    loads and scores as it did."""
    problems: list[str] = []
    grades = definition.get("grades")
    if isinstance(grades, Mapping):
        listed = [(str(g), m) for g, v in grades.items() if (m := _minimum(v)) is not None]
        for (better, high), (worse, low) in zip(listed, listed[1:], strict=False):
            if high <= low:
                problems.append(f"grades.{better}: {high} must be above grades.{worse} ({low}): grades are listed"
                                " best first, each needing more fit points than the next")
    life = definition.get("lifecycle")
    if isinstance(life, Mapping) and isinstance(life.get("order"), list) and isinstance(life.get("thresholds"),
                                                                                       Mapping):
        rank = {str(stage): i for i, stage in enumerate(life["order"])}
        rising = sorted(((rank[str(st)], str(st), m) for st, v in life["thresholds"].items()
                         if str(st) in rank and (m := _minimum(v)) is not None))
        for (_, earlier, low), (_, later, high) in zip(rising, rising[1:], strict=False):
            if low >= high:
                problems.append(f"lifecycle.thresholds.{earlier}: {low} must be below lifecycle.thresholds.{later}"
                                f" ({high}): {earlier} comes before {later} in lifecycle.order")
    return problems


def load_model(path: Path = MODEL_PATH) -> ScoringModel:
    """model.yaml, validated and compiled; an InvalidRule (a DataFileError) listing every problem."""
    return ScoringModel(read_yaml(path))
