"""What the application areas of scoring share: SQL sessions, the live model and the ingest path's writer."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session

from nurture.db import DriverWrites
from services.scoring.domain.rules import ScoringModel


class CoreBase:
    """Blocking operations; the server runs them in the database executor. `model` is the live
    scoring model (publishing swaps it)."""

    def __init__(self, db_sessions: Callable[[], AbstractContextManager[Session]], model: ScoringModel,
                 writes: DriverWrites) -> None:
        self._sessions = db_sessions
        self.model = model
        self._writes = writes

    @property
    def writes(self) -> DriverWrites:
        """The hot paths' writer (the ingest of leads' events, the collect of visitors' events)."""
        return self._writes
