"""Versions of the scoring model: the seed from data/model.yaml, drafts, publishing and its dry run.

Marketing and sales set point values together (the 004 seed): a draft is validated (every problem
listed) and stored under the next version; publishing makes it live in this process at once and in
every other scoring process within seconds (`refresh`). Publishing re-grades existing leads under
the new fit rules and moves lifecycle stages the new thresholds reach (stages only move forward, as
they do on events); scores stay, since points apply to what leads do from then on. A dry run says
which leads would change, and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from nurture import times
from nurture.jsontypes import JsonObject, JsonValue
from nurture.rules import InvalidRule
from services.scoring import storage as st
from services.scoring.domain.rules import ScoringModel, order_problems, validate_model

SAMPLE = 100      # changed leads listed in a publish reply
CHUNK = 500       # leads per transaction when publishing


class UnknownVersion(LookupError):
    pass


@dataclass
class PublishResult:
    """What publishing a version did (or, on a dry run, would do) to the stored leads."""

    version: int
    dry_run: bool
    leads: int = 0
    grade_changes: int = 0
    stage_changes: int = 0
    changes: list[JsonObject] = field(default_factory=list)  # a sample: {lead_id, grade?, lifecycle_stage?}


_aware = times.rfc3339_or_none


class ModelVersions:
    """Blocking operations; the server runs them in the database executor."""

    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]]) -> None:
        self._sessions = sessions
        self._compiled: dict[int, ScoringModel] = {}

    def live(self, seed: ScoringModel, now: datetime) -> ScoringModel:
        """The published model; model.yaml seeds the table, and a model.yaml of a higher version than
        any stored one (a deploy) is published on start."""
        with self._sessions() as s:
            newest = st.newest_model_version(s)
            if newest is None or seed.version > int(newest):
                st.retire_published_model(s)
                st.insert_model(s, version=seed.version, status="published",
                                definition=json.dumps(seed.definition, default=str), created_at=now,
                                published_at=now)
                self._compiled[seed.version] = seed
                return seed
        current = self.published_version()
        return self.model(current) if current is not None else seed

    def published_version(self) -> int | None:
        with self._sessions() as s:
            value = st.published_model_version(s)
        return int(value) if value is not None else None

    def model(self, version: int) -> ScoringModel:
        """A stored version, compiled once per process (durable_rules cannot drop a rule set)."""
        if version not in self._compiled:
            with self._sessions() as s:
                text = st.model_definition(s, version)
            if text is None:
                raise UnknownVersion(f"no scoring model version {version}")
            self._compiled[version] = ScoringModel(json.loads(text))
        return self._compiled[version]

    def versions(self) -> list[JsonObject]:
        """Every version, oldest first, as the API lists them."""
        with self._sessions() as s:
            rows = st.model_version_rows(s)
        return [{"version": r.version, "status": r.status, "created_at": _aware(r.created_at),
                 "published_at": _aware(r.published_at)} for r in rows]

    def segments_ever(self) -> list[str]:
        """Every segment some stored version defines, sorted: a segment a past version gave leads stays
        in their recorded history after a later version drops it."""
        with self._sessions() as s:
            texts = st.model_definitions(s)
        names: set[str] = set()
        for text in texts:
            definition = json.loads(text)
            segments = definition.get("segments") if isinstance(definition, dict) else None
            for segment in segments if isinstance(segments, list) else []:
                if isinstance(segment, dict) and segment.get("segment"):
                    names.add(str(segment["segment"]))
        return sorted(names)

    def put_draft(self, definition: JsonValue, now: datetime, *, validate_only: bool = False) -> tuple[int, list[str]]:
        """Store a valid definition as the next version (a draft); (0, problems) when it is not.
        `validate_only`: the same checks, compiling included, and nothing stored ((0, []) when valid)."""
        if not isinstance(definition, Mapping):
            return 0, ["model: expected an object"]
        with self._sessions() as s:
            newest = int(st.newest_model_version(s) or 0)
            document = {**definition, "version": newest + 1}
            problems = validate_model(document)
            # Only a new draft: a stored or published model in this order still loads (rules.order_problems).
            problems += [p for p in order_problems(document) if p not in problems]
            if not problems:
                try:  # what validation cannot see (a condition the engine refuses) shows up compiling
                    compiled = ScoringModel(document)
                except (InvalidRule, ValueError, TypeError, KeyError) as exc:
                    problems = list(exc.problems) if isinstance(exc, InvalidRule) else [f"model: {exc}"]
            if problems or validate_only:
                return 0, problems
            st.insert_model(s, version=newest + 1, status="draft", definition=json.dumps(document, default=str),
                            created_at=now)
        self._compiled[newest + 1] = compiled
        return newest + 1, []

    def publish(self, version: int, *, dry_run: bool, now: datetime,
                announce: Callable[[Session, Mapping[str, object], Mapping[str, list[str]], list[str], datetime],
                                   None]) -> PublishResult:
        """Re-grade every lead under `version` (only counting, on a dry run), then make it the live one.
        `announce(session, lead_row, changes, signals, now)` writes the bus messages of a changed lead
        (`changes`: field -> [old, new]; `signals`: the new lifecycle stage's signal, as an event moving
        the lead there would raise it, e.g. mql_reached)."""
        model = self.model(version)
        result = PublishResult(version=version, dry_run=dry_run)
        after = ""
        while True:
            with self._sessions() as s:
                # Locked (unless a dry run) in key order, as every multi-row lock (nurture.db).
                rows = st.leads_after(s, after, CHUNK, lock=not dry_run)
                for row in rows:
                    result.leads += 1
                    attributes = json.loads(row.attributes or "{}")
                    _, grade, _ = model.fit(attributes, row.email)
                    stage = model.stage_for(row.lifecycle_stage, int(row.score), None)
                    changed: dict[str, list[str]] = {}
                    if grade != row.grade:
                        result.grade_changes += 1
                        changed["grade"] = [row.grade, grade]
                    if stage != row.lifecycle_stage:
                        result.stage_changes += 1
                        changed["lifecycle_stage"] = [row.lifecycle_stage, stage]
                    if not changed:
                        continue
                    if len(result.changes) < SAMPLE:
                        result.changes.append({"lead_id": row.id, **changed})
                    if not dry_run:
                        values = {"grade": grade, "lifecycle_stage": stage, "version": int(row.version) + 1,
                                  "updated_at": now}
                        st.update_lead(s, row.id, values)
                        signal = model.stage_signals.get(stage) if "lifecycle_stage" in changed else None
                        announce(s, {**row._mapping, **values}, changed, [signal] if signal else [], now)
            if len(rows) < CHUNK:
                break
            after = rows[-1].id
        if not dry_run:
            with self._sessions() as s:
                st.retire_published_model(s)
                st.mark_model_published(s, version, now)
        return result
