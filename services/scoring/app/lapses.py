"""Inactivity: leads that went quiet have their score decayed and `engagement_lapsed` announced
(re-engagement journeys enter on it)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from nurture import times
from services.scoring import storage as st
from services.scoring.app.base import CoreBase
from services.scoring.domain import messages
from services.scoring.domain.profile import decayed_score


class Lapses(CoreBase):
    def next_lapse(self) -> datetime | None:
        with self._sessions() as s:
            return st.next_lapse(s)

    def run_lapses(self, now: datetime, limit: int = 1000) -> int:
        """Leads that went quiet: decay their score and announce `engagement_lapsed` (re-engagement)."""
        decay = self.model.decay
        with self._sessions() as s:
            rows = st.due_lapses(s, now, limit)
            for row in rows:
                lead = st.internal(row)
                due = times.utc_or_none(row.lapse_due_at)
                assert due is not None
                last = lead["last_engaged_at"] or due
                days = (due - last).days
                old = int(lead["score"])
                new = decayed_score(old, decay)
                lead_snapshot = dataclasses.replace(st.lead_snapshot(row, due), score=new,
                                                    version=int(row.version) + 1)
                if new != old:
                    st.add_score_change(s, lead_id=row.id, at=due, delta=new - old, score_after=new,
                                        rule="inactivity_decay", reason=f"No engagement for {days} days",
                                        event_id=None, model_version=self.model.version)
                st.record_decay(s, row.id, new, due + timedelta(days=int(decay["every_days"])), now)
                st.insert_outbox(self._writes, s, [messages.engagement_lapsed(row.id, due, days, old, new,
                                                                              lead_snapshot)])
            return len(rows)
