"""Bulk loading for bench/console.py: leads and their history written straight into the services'
tables on PostgreSQL with COPY (a benchmark's shortcut: minutes instead of hours through the API), in
the shapes the services write them, so every page reads what it would read in production.

Per lead (all in the segment and journey `skilled_professional`, the worst case for its journey page):
a scoring profile, EVENTS_PER_LEAD events and SCORE_CHANGES_PER_LEAD score changes (scoring's timeline),
TRANSITIONS_PER_LEAD journey transitions (journeys' timeline: entered, stages, and one in ten exited),
the step runs of the 1..9 emails it got so far with their waits, opens of a third of them, and one live
enrolment at its current wait. With 100,000 leads: 2,000,000 timeline items.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.journeys import storage as journeys_storage
from services.journeys.domain.state import Enrollment

JOURNEY = "skilled_professional"
STAGES = ("welcome", "welcome", "welcome", "education", "education", "education", "education", "solution",
          "solution")
EVENTS_PER_LEAD = 12
SCORE_CHANGES_PER_LEAD = 4
TRANSITIONS_PER_LEAD = 4  # entered, two stages, a completed or exited
EVENT_TYPES = ("page_viewed", "email_opened", "resource_downloaded", "video_watched", "form_submitted",
               "pricing_page_viewed")
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=60)
LIFECYCLE = ("subscriber", "lead", "mql", "sql")


def _copy(conn: Any, table: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> int:
    n = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def _leads(leads: int) -> Iterator[tuple[Any, ...]]:
    for i in range(leads):
        at = START + timedelta(minutes=i % 1440)
        yield (f"b-{i}", f"b{i}@example.com", f"First{i}", f"Last{i}", JOURNEY, "Europe/Berlin", "en",
               json.dumps({"profession": "nurse", "years_experience": i % 20}), json.dumps({"email": True}),
               (i * 7) % 120, "ABCD"[i % 4], LIFECYCLE[i % 4], "{}", "{}", "{}", None, 1, at, at, at, None)


def _events(leads: int) -> Iterator[tuple[Any, ...]]:
    for i in range(leads):
        for n in range(EVENTS_PER_LEAD):
            at = START + timedelta(hours=n * 5, minutes=i % 60)
            yield (f"ev-{i}-{n}", f"b-{i}", EVENT_TYPES[n % len(EVENT_TYPES)],
                   json.dumps({"category": "education", "url": f"https://example.com/p/{n}"}), at, at, None, "api",
                   5 if n % 3 == 0 else 0, "[]")


def _score_changes(leads: int) -> Iterator[tuple[Any, ...]]:
    for i in range(leads):
        for n in range(SCORE_CHANGES_PER_LEAD):
            yield (f"b-{i}", START + timedelta(hours=n * 15, minutes=i % 60), 5, 5 * (n + 1), "content_engagement",
                   "downloaded a guide", f"ev-{i}-{n * 3}", 1)


def _emails(i: int) -> int:
    return 1 + i % 9


def _step_runs(leads: int) -> Iterator[tuple[Any, ...]]:
    for i in range(leads):
        for k in range(1, _emails(i) + 1):
            at = START + timedelta(days=3 * k, minutes=i % 60)
            steps = ([(f"wait_{k:02d}", "wait", "done")] if k > 1 else []) + [(f"email_{k:02d}", "send", "sent")]
            for step, kind, status in steps:
                yield (f"b-{i}:{JOURNEY}:1:{step}:0", f"b-{i}", JOURNEY, JOURNEY, 1, step, kind, "0", status, at,
                       STAGES[k - 1], f"msg-{i}-{k}" if kind == "send" else "", "")


def _engagements(leads: int) -> Iterator[tuple[Any, ...]]:
    for i in range(leads):
        for k in range(1, _emails(i) + 1):
            if (i + k) % 3 == 0:
                yield (f"open-{i}-{k}", f"b-{i}", JOURNEY, f"email_{k:02d}", "email_opened",
                       START + timedelta(days=3 * k, hours=2, minutes=i % 60))


def _transitions(leads: int) -> Iterator[tuple[Any, ...]]:
    for i in range(leads):
        entered = START + timedelta(minutes=i % 60)
        yield (f"b-{i}", JOURNEY, JOURNEY, 1, entered, "entered", f"entered {JOURNEY}", None, "email_01", "welcome",
               "segment_skilled_professional", json.dumps({"event": "lead_created"}))
        yield (f"b-{i}", JOURNEY, JOURNEY, 1, entered, "stage", "stage welcome", None, "email_01", "welcome", None,
               json.dumps({"from": None}))
        later = entered + timedelta(days=3 * _emails(i))
        stage = STAGES[_emails(i) - 1]
        yield (f"b-{i}", JOURNEY, JOURNEY, 1, later, "stage", f"stage {stage}", None, None, stage, None,
               json.dumps({"from": "welcome", "hours_in_previous": 72.0 * _emails(i)}))
        if i % 10 == 0:
            yield (f"b-{i}", JOURNEY, JOURNEY, 1, later, "exited", f"exited {JOURNEY}: segment_changed",
                   f"email_{_emails(i):02d}", None, stage, "segment_changed", json.dumps({"reason": "segment_changed"}))
        else:
            yield (f"b-{i}", JOURNEY, JOURNEY, 1, later, "step", f"waiting at wait_{_emails(i) + 1:02d}",
                   f"email_{_emails(i):02d}", f"wait_{_emails(i) + 1:02d}", stage, None, "{}")


def _enrollments(leads: int) -> Iterator[tuple[Any, ...]]:
    for i in range(leads):
        if i % 10 == 0:
            continue  # exited
        k = _emails(i)
        entered = START + timedelta(minutes=i % 60)
        due = START + timedelta(days=3 * k + 3)
        e = Enrollment(ekey=JOURNEY, journey=JOURNEY, version=1, instance="", entry=1, status="active",
                       step=f"wait_{k + 1:02d}", stage=STAGES[k - 1], due=due, entered_at=entered,
                       stage_at=entered, waiting="delay", last_sent=f"email_{k:02d}")
        yield (f"b-{i}", JOURNEY, JOURNEY, 1, "", "active", STAGES[k - 1], f"wait_{k + 1:02d}", due, 1, 0, entered,
               None, None, json.dumps(e.to_json(), default=str))


def load(database_url: str, leads: int, seed: int = 1) -> dict[str, int]:
    """Every table's rows for `leads` leads, then VACUUM ANALYZE (the planner's statistics and the
    visibility map index-only scans need, as autovacuum leaves them after such a load). Returns rows
    written per table."""
    random.seed(seed)
    engine = sa.create_engine(database_url)
    out: dict[str, int] = {}
    try:
        raw = engine.raw_connection()
        try:
            conn: Any = raw.driver_connection
            out["scoring_leads"] = _copy(conn, "scoring_leads", (
                "id", "email", "first_name", "last_name", "segment", "timezone", "locale", "attributes", "consent",
                "score", "grade", "lifecycle_stage", "counters", "recent", "interests", "crm_id", "version",
                "created_at", "updated_at", "last_engaged_at", "lapse_due_at"), _leads(leads))
            out["scoring_events"] = _copy(conn, "scoring_events", (
                "id", "lead_id", "type", "properties", "occurred_at", "received_at", "idempotency_key", "source",
                "score_delta", "signals"), _events(leads))
            out["scoring_score_changes"] = _copy(conn, "scoring_score_changes", (
                "lead_id", "at", "delta", "score_after", "rule", "reason", "event_id", "model_version"),
                _score_changes(leads))
            out["journeys_step_runs"] = _copy(conn, "journeys_step_runs", (
                "dedupe_key", "lead_id", "ekey", "journey", "version", "step", "step_type", "occurrence", "status",
                "at", "stage", "message_id", "detail"), _step_runs(leads))
            out["journeys_engagements"] = _copy(conn, "journeys_engagements", (
                "event_id", "lead_id", "journey", "step", "type", "at"), _engagements(leads))
            out["journeys_transitions"] = _copy(conn, "journeys_transitions", (
                "lead_id", "ekey", "journey", "version", "at", "type", "summary", "step_from", "step_to", "stage",
                "rule", "facts"), _transitions(leads))
            out["journeys_enrollments"] = _copy(conn, "journeys_enrollments", (
                "lead_id", "ekey", "journey", "version", "instance", "status", "stage", "step", "due", "token",
                "side_pending", "entered_at", "ended_at", "outcome", "data"), _enrollments(leads))
            conn.commit()
        finally:
            raw.close()
        # The journeys' step counters are kept as the service writes its records; rows written straight
        # here are counted the way the service counts a record it finds at start (derived from it).
        with Session(engine) as s, s.begin():
            out["journeys_step_counts"] = journeys_storage.rebuild_counters(s)
        raw = engine.raw_connection()
        try:
            conn = raw.driver_connection
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE")  # as autovacuum leaves a table: statistics and the visibility map
        finally:
            raw.close()
    finally:
        engine.dispose()
    out["timeline_items"] = out["scoring_events"] + out["scoring_score_changes"] + out["journeys_transitions"]
    return out
