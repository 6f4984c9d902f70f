"""Every area of scoring's application in one object, as the servicer and the wiring see it."""

from __future__ import annotations

from services.scoring.app.ingest import Ingest
from services.scoring.app.lapses import Lapses
from services.scoring.app.leads import Leads
from services.scoring.app.outbox import OutboxRows


class ScoringCore(Leads, Ingest, Lapses, OutboxRows):
    """Blocking operations over SQL; the server runs them in the database executor."""
