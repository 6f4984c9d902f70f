"""Random histories as the bus carries them, and a brute-force recount of every report from them.

The recount reads the raw messages directly (no Fact, no fold, no aggregate): for each report it walks
the whole history and counts by the definitions in `services/analytics/domain/reports.py`'s docstring. The
read model must give the same figures, however the history was delivered (in batches, with repeats,
crashes and late events).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.analytics.domain import reports

JOURNEYS = {"welcome": ["intro", "value", "offer"], "webinar": ["invite", "remind", "followup"],
            "reengage": ["nudge", "lastcall"]}
TOPICS = ["visas", "tax", "schools", "business"]
FORMATS = ["article", "checklist", "video", "case_study"]
SEGMENTS = ["skilled_professional", "family", "entrepreneur", ""]
LIFECYCLE = ["subscriber", "lead", "mql", "sql", "trial", "customer"]
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def template_of(journey: str, stage: str, n: int) -> dict[str, str]:
    key = f"{journey}.{stage}_{n}"
    digest = sum(map(ord, key))
    return {"template": key, "topic": TOPICS[digest % len(TOPICS)], "format": FORMATS[digest // 3 % len(FORMATS)]}


def generate(seed: int, *, leads: int = 40, days: int = 50, late_touches: bool = False) -> list[dict[str, Any]]:
    """A delivery-ordered stream of bus messages: each lead's own story in order (as the bus keeps it),
    the leads interleaved, with redeliveries (the same id again), engagement events heard late (an
    occurred_at earlier than what came before), clicks on several links of one message, noise events.
    With `late_touches`, half the won leads' opens and clicks of one message before the win are heard after
    it (the streams without it stay as they were for the tests that read figures off them)."""
    rnd = random.Random(seed)
    per_lead: list[list[dict[str, Any]]] = []
    n_event = 0
    for i in range(leads):
        lead_id = f"lead-{seed}-{i}"
        created = T0 + timedelta(hours=rnd.randrange(0, 24 * 10))
        now: dict[str, Any] = {"segment": rnd.choice(SEGMENTS), "stage": 0,  # the lead as it is now
                               "score": rnd.choice([None, 0, rnd.randrange(0, 40)])}
        t = created
        story: list[dict[str, Any]] = []

        def msg(etype: str, at: datetime, props: dict[str, Any], *, id_: str | None = None,
                lead_id: str = lead_id, created: datetime = created, now: dict[str, Any] = now
                ) -> dict[str, Any]:
            nonlocal n_event
            n_event += 1
            return {"id": id_ or f"ev-{seed}-{n_event}", "lead_id": lead_id, "type": etype, "properties": props,
                    "occurred_at": _iso(at), "lead": {"id": lead_id, "segment": now["segment"] or None,
                                                      "lifecycle_stage": LIFECYCLE[now["stage"]],
                                                      "score": now["score"],
                                                      "created_at": _iso(created)},
                    "score_delta": 0, "rules": [], "signals": []}

        story.append(msg("lead_created", created, {"source": "api"}))
        journeys = rnd.sample(sorted(JOURNEYS), rnd.randint(1, 2))
        for journey in journeys:
            stages = JOURNEYS[journey]
            reach = rnd.randint(1, len(stages))
            for si, stage in enumerate(stages[:reach]):
                for k in range(rnd.randint(1, 3)):
                    t += timedelta(minutes=rnd.randrange(30, 60 * 60))
                    mid = f"m-{seed}-{lead_id}-{journey}-{si}-{k}"
                    tpl = template_of(journey, stage, k % 2)
                    props = {"message_id": mid, "journey": journey, "step": f"{stage}_{k}", "stage": stage,
                             "channel": "email", "variant": "", **tpl}
                    if now["score"] is not None:
                        now["score"] += rnd.randint(-3, 12)  # the score moves as the lead goes along
                    if rnd.random() < 0.08:
                        story.append(msg("email_hard_bounced", t, {**props, "reason": "550"}))
                        continue
                    story.append(msg("email_sent", t, props))
                    if rnd.random() < 0.04:
                        story.append(msg("email_bounced", t + timedelta(minutes=5), {**props, "type": "soft"}))
                    if rnd.random() < 0.6:
                        t_open = t + timedelta(minutes=rnd.randrange(1, 3000))
                        story.append(msg("email_opened", t_open, props))
                        if rnd.random() < 0.3:  # a second open event of the same message (another key)
                            story.append(msg("email_opened", t_open + timedelta(hours=2), props))
                        if rnd.random() < 0.5:
                            for _link in range(rnd.randint(1, 3)):  # clicks on several links
                                story.append(msg("email_clicked", t_open + timedelta(minutes=rnd.randrange(1, 90)),
                                                 {**props, "url": "https://x.example/"}))
                    if rnd.random() < 0.06:
                        # An open or click a caller posted without naming its message (POST /v1/events).
                        story.append(msg(rnd.choice(("email_opened", "email_clicked")),
                                         t + timedelta(minutes=rnd.randrange(1, 600)),
                                         rnd.choice(({}, {"journey": journey}))))
                    if rnd.random() < 0.03:
                        story.append(msg("unsubscribed", t + timedelta(hours=1), {**props, "scope": "nurture"}))
                    elif rnd.random() < 0.02:
                        # An unsubscribe the lead's own form posted: the lead's, of no journey (its row: null).
                        story.append(msg("unsubscribed", t + timedelta(hours=1), {"scope": "all"}))
                    if rnd.random() < 0.15:
                        story.append(msg("page_viewed", t, {"url": "/pricing"}))
                    if rnd.random() < 0.25 and now["stage"] < len(LIFECYCLE) - 1:
                        old = LIFECYCLE[now["stage"]]
                        now["stage"] = min(len(LIFECYCLE) - 1, now["stage"] + rnd.randint(1, 2))
                        t_stage = t + timedelta(minutes=rnd.randrange(0, 600))
                        story.append(msg("stage_changed", t_stage, {"old": old, "new": LIFECYCLE[now["stage"]]},
                                         id_=f"ev-{seed}-{n_event}:stage"))
                    if rnd.random() < 0.1:
                        now["segment"] = rnd.choice(SEGMENTS)  # the lead's segment changes mid-story
        if rnd.random() < 0.3:
            t += timedelta(days=rnd.randint(0, 5), minutes=rnd.randrange(0, 1000))
            story.append(msg("opportunity_won", t, {"deal_id": f"d-{lead_id}", "stage": "closed_won",
                                                     "amount": rnd.choice([0, 1200, 4999.5, 15000])}))
        if story[-1]["type"] == "opportunity_won" and rnd.random() < 0.5:
            # A journey stage entered before the win but heard after it: the sends of the lead's last stage
            # reach the bus late (what a won deal's journey entries must take in after the win).
            sends = [m for m in story if m["type"] in ("email_sent", "email_hard_bounced")]
            if sends:
                last = (sends[-1]["properties"]["journey"], sends[-1]["properties"]["stage"])
                moved = [m for m in sends if (m["properties"]["journey"], m["properties"]["stage"]) == last]
                story = [m for m in story if all(m is not x for x in moved)] + moved
        if late_touches and any(m["type"] == "opportunity_won" for m in story) and rnd.random() < 0.5:
            # Engagement before the win heard after it: a message's opens and clicks reach the bus late (a
            # deal's credited content sequence must take them in after the win).
            engaged = [m["properties"]["message_id"] for m in story
                       if m["type"] in ("email_opened", "email_clicked") and "message_id" in m["properties"]]
            if engaged:
                mid = rnd.choice(engaged)
                moved = [m for m in story if m["type"] in ("email_opened", "email_clicked")
                         and m["properties"].get("message_id") == mid]
                story = [m for m in story if all(m is not x for x in moved)] + moved
        # Late events: some engagement reaches the bus after later events, with its own earlier time.
        for _ in range(rnd.randint(0, 2)):
            j = rnd.randrange(len(story))
            if story[j]["type"] in ("email_opened", "email_clicked", "email_sent"):
                story.append(story.pop(j))
        per_lead.append(story)
    stream: list[dict[str, Any]] = []
    cursors = [0] * len(per_lead)
    live = [i for i in range(len(per_lead)) if per_lead[i]]
    while live:
        i = rnd.choice(live)
        m = per_lead[i][cursors[i]]
        stream.append(m)
        cursors[i] += 1
        if rnd.random() < 0.05:
            stream.append(dict(m))  # a redelivery right after
        if cursors[i] == len(per_lead[i]):
            live.remove(i)
    for _ in range(len(stream) // 20):  # repeats much later (a producer's retry, an outbox republish)
        stream.append(dict(rnd.choice(stream)))
    return with_score_changes(stream)


def with_score_changes(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scoring's `score_changed` (id `<event id>:score`, the same time and snapshot) before each message
    whose snapshot score differs from the lead's previous message's as heard, and again wherever that
    message is heard again. A message heard late carries an older score: the changes around it are heard
    after later ones. Added after the rest (no random draw), so the other reports' histories stay as
    they were."""
    changes: dict[str, dict[str, Any]] = {}
    last: dict[str, int] = {}
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for m in stream:
        score = m["lead"].get("score")
        if m["id"] not in seen:
            seen.add(m["id"])
            before = last.get(m["lead_id"])
            if isinstance(score, int):
                if before is not None and score != before:
                    changes[m["id"]] = {**m, "id": f"{m['id']}:score", "type": "score_changed",
                                        "properties": {"old": before, "new": score, "event_id": m["id"]}}
                last[m["lead_id"]] = score
        if m["id"] in changes:
            out.append(dict(changes[m["id"]]))
        out.append(m)
    return out


# --- the brute-force recount -------------------------------------------------------------------------

ENGAGEMENT = {"email_sent": "sent", "email_hard_bounced": "bounced", "email_bounced": "bounced",
              "email_opened": "opened", "email_clicked": "clicked", "unsubscribed": "unsubscribed"}


@dataclass(frozen=True)
class Range:
    start: date
    end: date
    segment: str | None = None
    journey: str | None = None

    def holds(self, m: dict[str, Any], *, journey: bool = True) -> bool:
        day = at_of(m).date()
        if not self.start <= day <= self.end:
            return False
        if self.segment is not None and seg_of(m) != self.segment:
            return False
        return not (journey and self.journey is not None and m["properties"].get("journey", "") != self.journey)


def at_of(m: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(m["occurred_at"].replace("Z", "+00:00")).astimezone(UTC)


def seg_of(m: dict[str, Any]) -> str:
    return (m.get("lead") or {}).get("segment") or ""


def heard(stream: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each message once, in the order first heard."""
    seen: set[str] = set()
    out = []
    for m in stream:
        if m["id"] not in seen:
            seen.add(m["id"])
            out.append(m)
    return out


def counted(stream: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(measure, message) for every engagement that counts: per message its first send (or hard
    bounce), first bounce, first open and first click; every unsubscribe."""
    firsts: set[tuple[str, str]] = set()
    out = []
    for m in heard(stream):
        kind = ENGAGEMENT.get(m["type"])
        if kind is None:
            continue
        # Unique per message. An unsubscribe is the lead's (each one counts); a send, bounce, open or click
        # that names no message is no email's and counts nowhere.
        mid = m["properties"].get("message_id")
        if kind == "unsubscribed":
            out.append((kind, m))
            continue
        if not mid:
            continue
        if kind in ("sent", "bounced") and ("sent", mid) not in firsts:
            firsts.add(("sent", mid))
            out.append(("sent", m))
        if kind in ("sent", "bounced") and kind == "sent":
            continue
        if (kind, mid) not in firsts:
            firsts.add((kind, mid))
            out.append((kind, m))
            if kind == "clicked" and ("opened", mid) not in firsts:  # a click counts as an open too
                firsts.add(("opened", mid))
                out.append(("opened", m))
    return out


def engagement(stream: Sequence[dict[str, Any]], r: Range, group_by: str) -> list[dict[str, Any]]:
    sums: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        ("sent", "opened", "clicked", "bounced", "unsubscribed"), 0))
    for kind, m in counted(stream):
        if not r.holds(m):
            continue
        group = seg_of(m) if group_by == "segment" else str(m["properties"].get(group_by) or "")
        if group_by == "channel":
            group = m["properties"].get("channel") or "email"
        sums[group][kind] += 1
    rows = []
    # By journey, what no journey sent is one row, group null, after every journey's (docs/API.md).
    for g in sorted(sums, key=lambda g: (group_by == "journey" and not g, g)):
        s = sums[g]
        delivered = s["sent"] - s["bounced"]
        rows.append({"group": None if group_by == "journey" and not g else g, "sent": s["sent"],
                     "delivered": delivered, "opened": s["opened"],
                     "clicked": s["clicked"], "unsubscribed": s["unsubscribed"], "bounced": s["bounced"],
                     "open_rate": round(s["opened"] / delivered, 4) if delivered else None,
                     "click_rate": round(s["clicked"] / delivered, 4) if delivered else None})
    return rows


def _minutes(a: datetime, b: datetime) -> int:
    return max(0, math.floor((b - a).total_seconds() / 60))


def _median_p90(values: list[int]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    ordered = sorted(values)
    return statistics.median(ordered), float(ordered[math.ceil(0.9 * len(ordered)) - 1])


def _h(v: float | None) -> float | None:
    return None if v is None else round(v / 60, 2)


def stage_entries(stream: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (lead, journey): the first counted send of each new stage, in order heard."""
    paths: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for kind, m in counted(stream):
        p = m["properties"]
        if kind != "sent" or not p.get("journey") or not p.get("stage"):
            continue
        path = paths[(m["lead_id"], p["journey"])]
        if all(e["properties"]["stage"] != p["stage"] for e in path):
            path.append(m)
    return paths


def progression(stream: Sequence[dict[str, Any]], r: Range) -> dict[str, Any]:
    entered: dict[tuple[str, str], int] = defaultdict(int)
    advanced: dict[tuple[str, str], int] = defaultdict(int)
    dwell: dict[tuple[str, str], list[int]] = defaultdict(list)
    for (_lead, journey), path in stage_entries(stream).items():
        for i, e in enumerate(path):
            if not r.holds(e):
                continue
            key = (journey, e["properties"]["stage"])
            entered[key] += 1
            if i + 1 < len(path):
                advanced[key] += 1
                dwell[key].append(_minutes(at_of(e), at_of(path[i + 1])))
    stages = []
    for key in sorted(entered):
        med, p90 = _median_p90(dwell[key])
        stages.append({"journey": key[0], "stage": key[1], "entered": entered[key], "advanced": advanced[key],
                       "conversion_rate": round(advanced[key] / entered[key], 4), "median_hours": _h(med),
                       "p90_hours": _h(p90)})
    by_segment = []
    seg_entered: Counter[tuple[str, str, str]] = Counter()
    seg_advanced: Counter[tuple[str, str, str]] = Counter()
    seg_dwell: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for (_lead, journey), path in stage_entries(stream).items():
        for i, e in enumerate(path):
            if r.holds(e):
                key3 = (journey, e["properties"]["stage"], seg_of(e))
                seg_entered[key3] += 1
                if i + 1 < len(path):
                    seg_advanced[key3] += 1
                    seg_dwell[key3].append(_minutes(at_of(e), at_of(path[i + 1])))
    for key3 in sorted(seg_entered):
        med, p90 = _median_p90(seg_dwell[key3])
        by_segment.append({"journey": key3[0], "stage": key3[1], "segment": key3[2], "entered": seg_entered[key3],
                           "advanced": seg_advanced[key3],
                           "conversion_rate": round(seg_advanced[key3] / seg_entered[key3], 4),
                           "median_hours": _h(med), "p90_hours": _h(p90)})
    trans: dict[tuple[str, str], list[int]] = defaultdict(list)
    weekly: dict[tuple[str, str], int] = defaultdict(int)
    for m, minutes in lifecycle_changes(stream):
        if not r.holds(m, journey=False):
            continue
        p = m["properties"]
        trans[(p["old"], p["new"])].append(minutes)
        if p["new"] in ("mql", "sql", "trial", "customer", "recycled"):
            day = at_of(m).date()
            weekly[((day - timedelta(days=day.weekday())).isoformat(), p["new"])] += 1
    # Conversion: of the leads that arrived at a stage in range (a change into it; in its segment then),
    # those whose next change (as heard) took them on, per next stage.
    arrived: Counter[str] = Counter()
    moved: Counter[tuple[str, str]] = Counter()
    last: dict[str, dict[str, Any]] = {}
    for m, _ in lifecycle_changes(stream):
        if r.holds(m, journey=False):
            arrived[m["properties"]["new"]] += 1
        before = last.get(m["lead_id"])
        if before is not None and r.holds(before, journey=False):
            moved[(before["properties"]["new"], m["properties"]["new"])] += 1
        last[m["lead_id"]] = m
    lifecycle = [{"from": f, "to": t, "count": len(trans[(f, t)]),
                  "median_hours": _h(_median_p90(trans[(f, t)])[0]), "p90_hours": _h(_median_p90(trans[(f, t)])[1]),
                  "conversion_rate": round(moved[(f, t)] / arrived[f], 4) if arrived[f] else None}
                 for f, t in sorted(set(trans) | set(moved))]
    weeks = sorted({w for w, _ in weekly})
    qualification = [{"week": w, **{q: weekly.get((w, q), 0)
                                    for q in ("mql", "sql", "trial", "customer", "recycled")}}
                     for w in weeks]
    return {"stages": stages, "lifecycle": lifecycle, "qualification": qualification,
            "time_to_conversion": time_to_conversion(stream, r), "content_gaps": content_gaps(stream, r),
            "score_progression": score_progression(stream, r), "score_now": score_now(stream, r),
            "segments": by_segment}


def score_progression(stream: Sequence[dict[str, Any]], r: Range) -> list[dict[str, Any]]:
    """Per won deal in range: the lead's score on its earliest stage entry at or before the win (ties by
    stage name; across journeys by journey name) against the score on the win, per journey and overall;
    pairs with a missing score are left out."""
    paths = stage_entries(stream)
    pairs: dict[str | None, list[tuple[int, int]]] = defaultdict(list)
    for deal in won_in(stream, r):
        at, won_score = at_of(deal), deal["lead"].get("score")
        picks = []
        for (lead, journey), path in paths.items():
            if lead != deal["lead_id"] or (r.journey is not None and journey != r.journey):
                continue
            before = sorted((at_of(e), e["properties"]["stage"], e["lead"].get("score")) for e in path
                            if at_of(e) <= at)
            if before:
                picks.append((before[0][0], journey, before[0][2]))
                if before[0][2] is not None and won_score is not None:
                    pairs[journey].append((before[0][2], won_score))
        if picks:
            first = min(picks, key=lambda p: (p[0], p[1]))
            if first[2] is not None and won_score is not None:
                pairs[None].append((first[2], won_score))
    rows: list[dict[str, Any]] = []
    for name in [None, *sorted(j for j in pairs if j is not None)]:
        v = pairs.get(name, [])
        if not v:
            rows.append({"journey": name, "conversions": 0, "score_at_entry": None, "score_at_conversion": None,
                         "change": None})
            continue
        entry, won_ = sum(a for a, _ in v), sum(b for _, b in v)
        rows.append({"journey": name, "conversions": len(v), "score_at_entry": round(entry / len(v), 2),
                     "score_at_conversion": round(won_ / len(v), 2), "change": round((won_ - entry) / len(v), 2)})
    return rows


# The messages analytics keeps that carry the lead's score (its snapshot's): engagement, deliverability
# outcomes messaging labelled with a provider, won deals, score changes.
SCORED = {*ENGAGEMENT, "email_soft_bounced", "spam_reported", "opportunity_won", "score_changed"}


def score_now(stream: Sequence[dict[str, Any]], r: Range) -> list[dict[str, Any]]:
    """Leads with no won deal: the score of the lead's latest message that carried one (by time, then as
    heard) against its score on its earliest stage entry of each journey (ties by stage), by that entry's
    day and segment; overall by its earliest entry of any journey (ties by journey). Entries without a
    score, and leads whose score was never carried, are left out."""
    heard_ = heard(stream)
    won_leads = {m["lead_id"] for m in heard_ if m["type"] == "opportunity_won"}
    latest: dict[str, tuple[datetime, int, int]] = {}
    for i, m in enumerate(heard_):
        score = (m.get("lead") or {}).get("score")
        if m["type"] not in SCORED or not isinstance(score, int) or (
                m["type"] in ("email_soft_bounced", "spam_reported") and not m["properties"].get("provider")):
            continue
        key = (at_of(m), i, score)
        if m["lead_id"] not in latest or key[:2] > latest[m["lead_id"]][:2]:
            latest[m["lead_id"]] = key
    picks: dict[str | None, list[tuple[int, int]]] = defaultdict(list)
    firsts: dict[str, list[tuple[datetime, str, dict[str, Any]]]] = defaultdict(list)
    for (lead, journey), path in stage_entries(stream).items():
        if lead in won_leads or lead not in latest or (r.journey is not None and journey != r.journey):
            continue
        e = min(path, key=lambda m: (at_of(m), m["properties"]["stage"]))
        firsts[lead].append((at_of(e), journey, e))
    for lead, entries in firsts.items():
        now = latest[lead][2]
        chosen: list[tuple[str | None, dict[str, Any]]] = [(journey, e) for _, journey, e in entries]
        chosen.append((None, min(entries, key=lambda x: (x[0], x[1]))[2]))
        for name, e in chosen:
            score = e["lead"].get("score")
            if score is not None and r.start <= at_of(e).date() <= r.end and (
                    r.segment is None or seg_of(e) == r.segment):
                picks[name].append((score, now))
    rows: list[dict[str, Any]] = []
    for name in [None, *sorted(j for j in picks if j is not None)]:
        v = picks.get(name, [])
        if not v:
            rows.append({"journey": name, "leads": 0, "score_at_entry": None, "score_now": None, "change": None})
            continue
        entry, now_ = sum(a for a, _ in v), sum(b for _, b in v)
        rows.append({"journey": name, "leads": len(v), "score_at_entry": round(entry / len(v), 2),
                     "score_now": round(now_ / len(v), 2), "change": round((now_ - entry) / len(v), 2)})
    return rows


def content_gaps(stream: Sequence[dict[str, Any]], r: Range) -> list[dict[str, Any]]:
    """Per journey: every stage it sent in range × every segment it sent to in range, with unique sends,
    bounces, opens, clicks; a gap when nothing was sent, or its open or click rate is under half the mean
    of the journey's other cells that delivered; then only `r.segment`'s rows, when given."""
    wide = Range(r.start, r.end, None, r.journey)
    sums: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(
        ("sent", "opened", "clicked", "bounced"), 0))
    for kind, m in counted(stream):
        p = m["properties"]
        if kind != "unsubscribed" and p.get("stage") and wide.holds(m):
            sums[(p.get("journey", ""), p["stage"], seg_of(m))][kind] += 1
    rows: list[dict[str, Any]] = []
    for journey in sorted({j for (j, _, _), c in sums.items() if c["sent"]}):
        stages = sorted({st for (j, st, _), c in sums.items() if j == journey and c["sent"]})
        segments = sorted({sg for (j, _, sg), c in sums.items() if j == journey and c["sent"]})
        for stage in stages:
            for seg in segments:
                c = sums.get((journey, stage, seg)) or dict.fromkeys(("sent", "opened", "clicked", "bounced"), 0)
                d = c["sent"] - c["bounced"]
                rows.append({"journey": journey, "stage": stage, "segment": seg, "sent": c["sent"], "delivered": d,
                             "opened": c["opened"], "clicked": c["clicked"],
                             "open_rate": round(c["opened"] / d, 4) if d else None,
                             "click_rate": round(c["clicked"] / d, 4) if d else None, "gap": False, "why": ""})
    for row in rows:
        if not row["sent"]:
            row["gap"], row["why"] = True, "no content sent"
            continue
        peers = [o for o in rows if o["journey"] == row["journey"] and o is not row and o["delivered"] > 0]
        if not peers or row["delivered"] <= 0:
            continue
        why = []
        for measure in ("opened", "clicked"):
            mean = sum(o[measure] / o["delivered"] for o in peers) / len(peers)
            mine = row[measure] / row["delivered"]
            if mine < 0.5 * mean:
                why.append(f"{measure} {mine:.2%} against {mean:.2%} for the journey's other cells")
        row["gap"], row["why"] = bool(why), "; ".join(why)
    return [row for row in rows if r.segment is None or row["segment"] == r.segment]


def value_by_path(stream: Sequence[dict[str, Any]], r: Range) -> list[dict[str, Any]]:
    """Won deals and revenue per path: the journeys the lead entered (first send of a stage, as heard) at or
    before the win, ordered by the earliest such entry of each (ties by name); no entry: path None."""
    paths = stage_entries(stream)
    acc: dict[str | None, list[float]] = {}
    for deal in won_in(stream, r):
        at = at_of(deal)
        firsts = {}
        for (lead, journey), path in paths.items():
            before = [at_of(e) for e in path if at_of(e) <= at]
            if lead == deal["lead_id"] and before and (r.journey is None or journey == r.journey):
                firsts[journey] = min(before)
        key = ">".join(sorted(firsts, key=lambda j: (firsts[j], j))) or None
        cell = acc.setdefault(key, [0, 0.0])
        cell[0] += 1
        cell[1] += float(deal["properties"]["amount"])
    order = sorted(acc, key=lambda p: (p is not None, p or ""))
    return [{"path": p, "deals": int(acc[p][0]), "revenue": round(acc[p][1], 2),
             "average_deal": round(acc[p][1] / acc[p][0], 2)} for p in order]


def time_to_conversion(stream: Sequence[dict[str, Any]], r: Range) -> list[dict[str, Any]]:
    """Per won deal in range: minutes from the lead's earliest stage entry (first send of a stage, as
    heard) at or before the win, over every journey and per journey (of `r.journey` only, when given)."""
    paths = stage_entries(stream)
    overall: list[int] = []
    per_journey: dict[str, list[int]] = defaultdict(list)
    for deal in won_in(stream, r):
        at = at_of(deal)
        best: datetime | None = None
        for (lead, journey), path in paths.items():
            if lead != deal["lead_id"] or (r.journey is not None and journey != r.journey):
                continue
            before = [at_of(e) for e in path if at_of(e) <= at]
            if before:
                per_journey[journey].append(_minutes(min(before), at))
                best = min(before) if best is None else min(best, min(before))
        if best is not None:
            overall.append(_minutes(best, at))
    rows: list[dict[str, Any]] = []
    for name, values in [(None, overall), *sorted(per_journey.items())]:
        med, p90 = _median_p90(values)
        rows.append({"journey": name, "conversions": len(values), "median_hours": _h(med), "p90_hours": _h(p90)})
    return rows


def lifecycle_changes(stream: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    last: dict[str, datetime] = {}
    out = []
    for m in heard(stream):
        if m["type"] != "stage_changed":
            continue
        since = last.get(m["lead_id"]) or datetime.fromisoformat(m["lead"]["created_at"].replace("Z", "+00:00"))
        out.append((m, _minutes(since, at_of(m))))
        last[m["lead_id"]] = at_of(m)
    return out


def sub_bands(stream: Sequence[dict[str, Any]]) -> dict[str, dict[tuple[Any, ...], int]]:
    """The percentiles' sub-band counts, recounted: every journey-stage dwell (by its entry's day and segment)
    and every lifecycle change's time in the stage left (by the change's day and segment), per
    (key, band, grain, period start, segment, sub-band) for the day, its ISO week and its month."""
    def add(into: dict[tuple[Any, ...], int], a: str, b: str, day: date, segment: str, minutes: int) -> None:
        for grain, start in (("d", day), ("w", day - timedelta(days=day.weekday())), ("m", day.replace(day=1))):
            into[(a, b, reports.band(minutes), grain, start, segment, reports.sub_band(minutes))] += 1

    dwell: dict[tuple[Any, ...], int] = defaultdict(int)
    for (_lead, journey), path in stage_entries(stream).items():
        for e, nxt in itertools.pairwise(path):
            add(dwell, journey, e["properties"]["stage"], at_of(e).date(), seg_of(e), _minutes(at_of(e), at_of(nxt)))
    life: dict[tuple[Any, ...], int] = defaultdict(int)
    for m, minutes in lifecycle_changes(stream):
        add(life, m["properties"]["old"], m["properties"]["new"], at_of(m).date(), seg_of(m), minutes)
    return {"stage_dwell": dict(dwell), "lifecycle": dict(life)}


def timeseries(stream: Sequence[dict[str, Any]], r: Range, metric: str, interval: str) -> list[dict[str, Any]]:
    points: dict[str, float] = defaultdict(float)

    def put(m: dict[str, Any], value: float) -> None:
        day = at_of(m).date()
        t = day - timedelta(days=day.weekday()) if interval == "week" else day
        points[t.isoformat()] += value
    if metric in ("sent", "opened", "clicked"):
        for kind, m in counted(stream):
            if kind == metric and r.holds(m):
                put(m, 1)
    elif metric in ("mql", "sql", "trials", "customers"):
        target = {"customers": "customer", "trials": "trial"}.get(metric, metric)
        for m, _ in lifecycle_changes(stream):
            if m["properties"]["new"] == target and r.holds(m, journey=False):
                put(m, 1)
    else:
        for m in heard(stream):
            if m["type"] == "opportunity_won" and r.holds(m, journey=False):
                put(m, float(m["properties"]["amount"]))
    return [{"t": t, "value": round(v, 2) if metric == "revenue" else int(v)}
            for t, v in sorted(points.items()) if v]


def touches(stream: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # The open a click implies is no touch of its own: the click is.
    return [m for kind, m in counted(stream) if kind == "clicked" or (kind == "opened" and m["type"] == "email_opened")]


def won_in(stream: Sequence[dict[str, Any]], r: Range) -> list[dict[str, Any]]:
    return sorted((m for m in heard(stream) if m["type"] == "opportunity_won" and r.holds(m, journey=False)),
                  key=lambda m: (at_of(m), m["id"]))


def attribution(stream: Sequence[dict[str, Any]], r: Range, model: str, window_days: int) -> dict[str, Any]:
    all_touches = touches(stream)
    by_template: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    by_topic: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    by_format: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    total, unattributed, revenue = 0, 0, 0.0
    for deal in won_in(stream, r):
        total += 1
        amount = float(deal["properties"]["amount"])
        revenue += amount
        at = at_of(deal)
        before = sorted((t for t in all_touches if t["lead_id"] == deal["lead_id"]
                         and at - timedelta(days=window_days) <= at_of(t) <= at
                         and (r.journey is None or t["properties"]["journey"] == r.journey)),
                        key=lambda t: (at_of(t), t["id"]))
        if not before:
            unattributed += 1
            continue
        picked = [before[0]] if model == "first" else [before[-1]] if model == "last" else before
        share = 1.0 / len(picked)
        for t in picked:
            p = t["properties"]
            for cell in (by_template[(p["template"], p["topic"], p["format"])], by_topic[p["topic"]],
                         by_format[p["format"]]):
                cell[0] += share
                cell[1] += share * amount
    return {"model": model, "conversions": total, "revenue": round(revenue, 2), "unattributed": unattributed,
            "by_template": [{"template": k[0], "topic": k[1], "format": k[2], "conversions": round(v[0], 4),
                             "revenue": round(v[1], 2)} for k, v in sorted(by_template.items())],
            "by_topic": [{"topic": k, "conversions": round(v[0], 4), "revenue": round(v[1], 2)}
                         for k, v in sorted(by_topic.items())],
            "by_format": [{"format": k, "conversions": round(v[0], 4), "revenue": round(v[1], 2)}
                          for k, v in sorted(by_format.items())],
            "window_days": window_days}


def roi_inputs(stream: Sequence[dict[str, Any]], r: Range) -> dict[str, Any]:
    """What the ROI report is computed from: nurtured leads, sends by journey and channel, influenced revenue."""
    nurtured: set[str] = set()
    per_journey: dict[str, set[str]] = defaultdict(set)
    sent: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for kind, m in counted(stream):
        if kind == "sent" and r.holds(m):
            j = m["properties"].get("journey", "")
            nurtured.add(m["lead_id"])
            per_journey[j].add(m["lead_id"])
            sent[j][m["properties"].get("channel") or "email"] += 1
    all_touches = touches(stream)
    influenced = 0.0
    by_j: dict[str, float] = defaultdict(float)
    for deal in won_in(stream, r):
        before = [t for t in all_touches if t["lead_id"] == deal["lead_id"] and at_of(t) <= at_of(deal)
                  and (r.journey is None or t["properties"]["journey"] == r.journey)]
        if before:
            influenced += float(deal["properties"]["amount"])
        for j in {t["properties"]["journey"] for t in before}:
            by_j[j] += float(deal["properties"]["amount"])
    totals: dict[str, int] = defaultdict(int)
    for chans in sent.values():
        for ch, n in chans.items():
            totals[ch] += n
    journeys = sorted(set(sent) | set(per_journey) | set(by_j), key=lambda j: (not j, j))
    return {"nurtured": len(nurtured), "sent_by_channel": dict(totals), "influenced": influenced,
            "by_journey": [{"journey": j or None, "nurtured": len(per_journey.get(j, ())),
                            "sent_by_channel": dict(sent.get(j, {})), "influenced": by_j.get(j, 0.0)}
                           for j in journeys]}


def sequences(stream: Sequence[dict[str, Any]], r: Range, length: int, unit: str, window_days: int
              ) -> dict[str, Any]:
    """Won deals by the lead's last `length` distinct consecutive pieces of content engaged with before the
    win (within the window; of `r.journey` only, when given), per segment, counted from the raw history."""
    all_touches = touches(stream)
    deals = won_in(stream, r)
    per_segment: Counter[str] = Counter(seg_of(d) for d in deals)
    cells: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    short = 0
    for deal in deals:
        at = at_of(deal)
        before = sorted((t for t in all_touches if t["lead_id"] == deal["lead_id"]
                         and at - timedelta(days=window_days) <= at_of(t) <= at
                         and (r.journey is None or t["properties"]["journey"] == r.journey)),
                        key=lambda t: (at_of(t), t["id"]))
        steps = [k for k, _ in itertools.groupby(t["properties"][unit] for t in before)]
        if len(steps) < length:
            short += 1
            continue
        cell = cells[(seg_of(deal), " > ".join(steps[-length:]))]
        cell[0] += 1
        cell[1] += float(deal["properties"]["amount"])
    ordered = sorted(cells.items(), key=lambda kv: (kv[0][0], -kv[1][0], -kv[1][1], kv[0][1]))
    return {"by": unit, "length": length, "window_days": window_days, "conversions": len(deals),
            "without_sequence": short,
            "rows": [{"segment": sg, "sequence": seq, "conversions": int(n),
                      "share": round(n / per_segment[sg], 4), "revenue": round(v, 2),
                      "average_deal": round(v / n, 2)} for (sg, seq), (n, v) in ordered],
            "rates": sequence_rates(stream, r, length, unit, window_days)}


def sequence_rates(stream: Sequence[dict[str, Any]], r: Range, length: int, unit: str, window_days: int
                   ) -> list[dict[str, Any]]:
    """Per (segment, sequence): the leads whose touches (of `r.journey` only, when given; consecutive
    repeats once) first held the sequence on a day in range, in the segment of the touch that completed
    it, and how many of them have a won deal (any heard) at most `window_days` x 24 h after that touch."""
    by_lead: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in touches(stream):
        if r.journey is None or t["properties"]["journey"] == r.journey:
            by_lead[t["lead_id"]].append(t)
    wins: dict[str, list[datetime]] = defaultdict(list)
    for m in heard(stream):
        if m["type"] == "opportunity_won":
            wins[m["lead_id"]].append(at_of(m))
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for lead, lead_touches in by_lead.items():
        runs = [list(g) for _, g in itertools.groupby(sorted(lead_touches, key=lambda t: (at_of(t), t["id"])),
                                                         key=lambda t: t["properties"][unit])]
        seen: set[str] = set()
        for i in range(length - 1, len(runs)):
            sequence = " > ".join(run[0]["properties"][unit] for run in runs[i - length + 1:i + 1])
            if sequence in seen:
                continue
            seen.add(sequence)
            done = runs[i][0]
            if not r.start <= at_of(done).date() <= r.end or (r.segment is not None and seg_of(done) != r.segment):
                continue
            cell = cells[(seg_of(done), sequence)]
            cell[0] += 1
            cell[1] += any(timedelta(0) <= w - at_of(done) <= timedelta(days=window_days) for w in wins[lead])
    rows = [{"segment": sg, "sequence": seq, "engaged": n, "converted": c, "conversion_rate": round(c / n, 4)}
            for (sg, seq), (n, c) in cells.items()]
    return sorted(rows, key=lambda x: (x["segment"], -x["conversion_rate"], -x["engaged"], x["sequence"]))
