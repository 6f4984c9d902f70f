"""Every report equals a brute-force recount over the raw history, figure by figure, however the history
was delivered: in batches of any size, with redeliveries, late events, and crashes (a transaction
that fails after recording half its work, then the same messages again); and again after a rebuild
from the facts record."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from nurture.db import Database, open_database
from nurture.settings import Settings
from services.analytics import storage, tables
from services.analytics.app.core import load_costs
from services.analytics.domain import reports
from services.analytics.domain.facts import from_bus
from services.analytics.server import MIGRATIONS
from tests.integration.analytics import history as h


class Crash(Exception):
    pass


def feed(db: Database, stream: Sequence[dict[str, Any]], rnd: random.Random) -> int:
    """Deliver the stream in random batches; a fifth of them crash before commit and come again."""
    i, crashes = 0, 0
    while i < len(stream):
        n = rnd.randint(1, 60)
        batch = [f for m in stream[i:i + n] if (f := from_bus(m)) is not None]
        if rnd.random() < 0.2:
            crashes += 1
            with pytest.raises(Crash), db.session() as s:
                storage.record(s, batch)
                raise Crash
            continue
        with db.session() as s:
            storage.record(s, batch)
        i += n
    return crashes


def ranges(stream: Sequence[dict[str, Any]]) -> list[h.Range]:
    days = sorted({h.at_of(m).date() for m in stream})
    first, last = days[0], days[-1]
    middle = first + (last - first) / 3
    return [h.Range(first, last), h.Range(middle, middle + timedelta(days=9)),
            h.Range(first, last, segment="family"), h.Range(first, last, segment=""),
            h.Range(first, last, journey="welcome"), h.Range(middle, last, segment="entrepreneur", journey="webinar"),
            h.Range(date(2020, 1, 1), date(2020, 2, 1))]


def check(db: Database, stream: Sequence[dict[str, Any]]) -> int:
    figures, conversions, gaps, scored, sequenced, unconverted = 0, 0, 0, 0, 0, 0
    engaged, converted, lifecycle_rates, compared = 0, 0, set(), set()
    costs = load_costs()
    with db.session() as s:
        # The percentiles' sub-band counts, cell by cell (a wrong cell could still pick the right minutes).
        for name, counts in h.sub_bands(stream).items():
            table = tables.stage_dwell_subbands if name == "stage_dwell" else tables.lifecycle_subbands
            assert {tuple(row[:-1]): row[-1] for row in s.execute(select(table)) if row[-1]} == counts, name
            figures += len(counts)
        for r in ranges(stream):
            q = storage.Query(r.start, r.end, r.segment, r.journey)
            for group in reports.ENGAGEMENT_GROUPS:
                expected = h.engagement(stream, r, group)
                assert storage.engagement_report(s, q, group) == expected, (r, group)
                figures += sum(len(row) for row in expected)
            got = storage.progression_report(s, q)
            stages = [{k: v for k, v in row.items() if k not in ("bottleneck", "why")} for row in got["stages"]]
            expected_p = h.progression(stream, r)
            assert stages == expected_p["stages"], r
            assert got["lifecycle"] == expected_p["lifecycle"], r
            assert got["qualification"] == expected_p["qualification"], r
            assert got["time_to_conversion"] == expected_p["time_to_conversion"], r
            assert got["content_gaps"] == expected_p["content_gaps"], r
            assert got["score_progression"] == expected_p["score_progression"], r
            assert got["score_now"] == expected_p["score_now"], r
            assert got["segments"] == [], r  # computed when asked for
            got["segments"] = storage.progression_report(s, q, ("segments",))["segments"]
            assert got["segments"] == expected_p["segments"], r
            compared |= {row["segment"] for row in got["segments"]}
            scored += expected_p["score_progression"][0]["conversions"]
            lifecycle_rates |= {row["conversion_rate"] for row in expected_p["lifecycle"]}
            unconverted += expected_p["score_now"][0]["leads"]
            # One table asked for (as the dashboard and a CSV download ask): the same rows, the rest empty.
            for table in reports.PROGRESSION_TABLES:
                assert storage.progression_report(s, q, (table,)) == {
                    t: got[t] if t == table else [] for t in reports.PROGRESSION_TABLES}, (r, table)
            gaps += sum(1 for row in got["content_gaps"] if row["gap"])
            figures += sum(len(x) for part in expected_p.values() for x in part)
            conversions += expected_p["time_to_conversion"][0]["conversions"]
            for metric in reports.TIMESERIES_METRICS:
                for interval in ("day", "week"):
                    expected_t = h.timeseries(stream, r, metric, interval)
                    assert storage.timeseries_report(s, q, metric, interval) == expected_t, (r, metric, interval)
                    figures += len(expected_t)
            for model in reports.ATTRIBUTION_MODELS:
                for window in (3, 30):
                    expected_a = h.attribution(stream, r, model, window)
                    assert storage.attribution_report(s, q, model, window) == expected_a, (r, model, window)
                    figures += len(expected_a["by_template"]) + 4
            for length in reports.SEQUENCE_LENGTHS:
                for unit in reports.SEQUENCE_UNITS:
                    for window in (3, 30):
                        expected_s = h.sequences(stream, r, length, unit, window)
                        assert storage.sequences_report(s, q, length, unit, window) == expected_s, \
                            (r, length, unit, window)
                        sequenced += sum(row["conversions"] for row in expected_s["rows"])
                        engaged += sum(row["engaged"] for row in expected_s["rates"])
                        converted += sum(row["converted"] for row in expected_s["rates"])
                        figures += 3 + 6 * len(expected_s["rows"]) + 5 * len(expected_s["rates"])
            inputs = h.roi_inputs(stream, r)
            expected_roi = reports.roi_report(nurtured=inputs["nurtured"], sent_by_channel=inputs["sent_by_channel"],
                                             costs=costs, start=r.start, end=r.end,
                                             influenced=inputs["influenced"], by_journey=inputs["by_journey"])
            got_roi = storage.roi_report(s, q, costs)
            assert got_roi.pop("by_path") == h.value_by_path(stream, r), r
            assert got_roi == expected_roi, r
            figures += 5 + len(expected_roi["by_journey"])
    assert conversions > 0  # the histories hold wins after nurture: time in nurture is measured, not empty
    assert gaps > 0 and scored > 0  # and content gaps to find, and scores to compare
    assert unconverted > 0  # and leads not converted whose score moved
    assert sequenced > 0  # and wins after a sequence of content
    assert 0 < converted < engaged  # and leads that engaged with a sequence, some of them converted
    assert len(compared) == len(h.SEGMENTS)  # every segment's stages, side by side
    assert None in lifecycle_rates and any(0 < x < 1 for x in lifecycle_rates if x is not None)  # stages' rates
    return figures


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_report_equals_a_recount_of_the_raw_history(settings: Settings, seed: int) -> None:
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        stream = h.generate(seed, late_touches=True)
        crashes = feed(db, stream, random.Random(seed))
        assert crashes > 0 and len(stream) > len(h.heard(stream))  # the history had crashes and repeats
        assert check(db, stream) > 500
        # The whole stream heard again (a consumer group reset): nothing changes.
        feed(db, stream, random.Random(seed + 100))
        check(db, stream)
        with db.session() as s:
            assert storage.rebuild(s) == sum(1 for m in h.heard(stream) if from_bus(m) is not None)
        check(db, stream)
    finally:
        db.close()


def test_the_history_covers_what_the_reports_distinguish() -> None:
    """The generator must produce the cases the recount is meant to catch, or the test proves little."""
    stream = h.generate(1, late_touches=True)
    kinds = {m["type"] for m in stream}
    assert {"email_sent", "email_hard_bounced", "email_opened", "email_clicked", "unsubscribed", "stage_changed",
            "opportunity_won", "page_viewed"} <= kinds
    clicks: dict[str, int] = {}
    for m in h.heard(stream):
        if m["type"] == "email_clicked" and "message_id" in m["properties"]:
            clicks[m["properties"]["message_id"]] = clicks.get(m["properties"]["message_id"], 0) + 1
    assert max(clicks.values()) > 1  # several clicks of one message: unique clicks differ from events
    # Opens and clicks naming no message, some naming a journey: counted by no engagement figure.
    anonymous = [m for m in stream if m["type"] in ("email_opened", "email_clicked")
                 and "message_id" not in m["properties"]]
    assert any("journey" in m["properties"] for m in anonymous) and any(not m["properties"] for m in anonymous)
    late = [b for a, b in zip(h.heard(stream), h.heard(stream)[1:], strict=False)
            if a["lead_id"] == b["lead_id"] and h.at_of(b) < h.at_of(a)]
    assert late  # events heard after later ones
    scored = [m for m in h.heard(stream) if m["type"] in h.SCORED and isinstance(m["lead"].get("score"), int)]
    assert any(m["type"] == "score_changed" and any(
        o["lead_id"] == m["lead_id"] and h.at_of(o) > h.at_of(m) for o in scored[:i])
        for i, m in enumerate(scored))  # a score change heard after a later score: it must not win


def test_the_history_holds_stage_entries_heard_after_the_win_they_preceded() -> None:
    """A won deal's journey entries must take in an entry heard after the win (its sends came late)."""
    stream = h.generate(1, late_touches=True)
    found = 0
    heard = h.heard(stream)
    for (lead, _journey), entries in h.stage_entries(stream).items():
        wins = [(i, m) for i, m in enumerate(heard) if m["type"] == "opportunity_won" and m["lead_id"] == lead]
        for entry in entries:
            heard_at = next(i for i, m in enumerate(heard) if m["id"] == entry["id"])
            found += sum(1 for i, w in wins if i < heard_at and h.at_of(entry) <= h.at_of(w))
    assert found > 0


def test_the_history_holds_touches_heard_after_the_win_they_preceded() -> None:
    """A won deal's credited sequence must take in a touch heard after the win (its open came late): the
    fold recomputes the deal's sequence then, or the sequences report would miss it."""
    stream = h.generate(1, late_touches=True)
    heard = h.heard(stream)
    order = {m["id"]: i for i, m in enumerate(heard)}
    wins = [m for m in heard if m["type"] == "opportunity_won"]
    late = [(t, w) for t in h.touches(stream) for w in wins
            if t["lead_id"] == w["lead_id"] and h.at_of(t) <= h.at_of(w) and order[t["id"]] > order[w["id"]]]
    assert late


def test_an_erased_leads_deals_leave_the_sequences_and_its_rates_stay(settings: Settings) -> None:
    """Erasure takes the lead's deals out of the sequences report with its per-deal rows (the won deals are
    per-lead rows), while the rates, day aggregates with no person in them, stay as they were."""
    db = open_database(settings, service="analytics", migrations_dir=MIGRATIONS)
    try:
        stream = h.generate(2, late_touches=True)
        feed(db, stream, random.Random(2))
        everyone = ranges(stream)[0]
        credited = [d["lead_id"] for d in h.won_in(stream, everyone)]
        lead = max(set(credited), key=lambda x: (credited.count(x), x))
        before = h.sequences(stream, everyone, 2, "template", 30)
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(tables.deal_sequences)
                            .where(tables.deal_sequences.c.lead_id == lead))
            storage.erase_lead(s, lead)
        rest = [m for m in stream if m["lead_id"] != lead]
        after = h.sequences(rest, everyone, 2, "template", 30)
        assert after["conversions"] < before["conversions"]  # the erased lead's deals were in the report
        with db.session() as s:
            assert not s.scalar(select(func.count()).select_from(tables.deal_sequences)
                                .where(tables.deal_sequences.c.lead_id == lead))
            for r in ranges(stream):
                q = storage.Query(r.start, r.end, r.segment, r.journey)
                for length in reports.SEQUENCE_LENGTHS:
                    for unit in reports.SEQUENCE_UNITS:
                        for window in (3, 30):
                            expected = h.sequences(rest, r, length, unit, window)
                            expected["rates"] = h.sequence_rates(stream, r, length, unit, window)
                            assert storage.sequences_report(s, q, length, unit, window) == expected, \
                                (r, length, unit, window)
    finally:
        db.close()
