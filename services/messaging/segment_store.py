"""SQL storage of segments' copy as versioned data, as template_store.py keeps templates: blocking
functions, run through `Database.run`, each one transaction (tables.segments, tables.segment_versions)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from services.messaging.domain.segments import Recommendation, SegmentCopy
from services.messaging.storage import aware, naive
from services.messaging.tables import segment_versions, segments
from services.messaging.template_store import VersionConflict

SessionFactory = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class CopyVersion:
    segment: str
    version: int
    status: str          # draft | published | superseded
    copy: SegmentCopy
    source: str          # seed | api
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True)
class SegmentRow:
    segment: str
    published_version: int
    latest_version: int
    updated_at: datetime


def _version(row: Any) -> CopyVersion:
    created = aware(row["created_at"])
    assert created is not None
    recommended = tuple(Recommendation(str(r.get("title", "")), str(r.get("path", "")))
                        for r in json.loads(str(row["recommended_json"] or "[]")))
    return CopyVersion(segment=str(row["segment"]), version=int(row["version"]), status=str(row["status"]),
                       copy=SegmentCopy(str(row["label"]), str(row["intro"]), recommended),
                       source=str(row["source"]), created_at=created, published_at=aware(row["published_at"]))


def _values(copy: SegmentCopy) -> dict[str, object]:
    return {"label": copy.label, "intro": copy.intro, "recommended_json": json.dumps(copy.recommended_dicts())}


class SegmentStore:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def seed(self, seeds: Sequence[tuple[str, SegmentCopy]], now: datetime) -> list[str]:
        """Version 1, published, of every seed whose segment has no copy yet; returns the segments seeded.
        Idempotent: a segment the store already holds (seeded before, or made through the API) is left alone."""
        at = naive(now)
        with self._sessions() as s:
            have = set(s.execute(select(segments.c.segment)).scalars())
            fresh = [(k, c) for k, c in seeds if k not in have]
            if fresh:
                s.execute(insert(segments), [{"segment": k, "published_version": 1, "latest_version": 1,
                                              "updated_at": at} for k, _ in fresh])
                s.execute(insert(segment_versions), [
                    {"segment": k, "version": 1, "status": "published", "source": "seed", "created_at": at,
                     "published_at": at, **_values(c)} for k, c in fresh])
        return [k for k, _ in fresh]

    def segments(self) -> list[SegmentRow]:
        with self._sessions() as s:
            rows = s.execute(select(segments).order_by(segments.c.segment)).mappings().all()
        return [SegmentRow(str(r["segment"]), int(r["published_version"]), int(r["latest_version"]),
                           aware(r["updated_at"]) or r["updated_at"]) for r in rows]

    def live_versions(self) -> dict[str, int]:
        """Each segment's published version (0: none), in one small read (SegmentLibrary.refresh)."""
        with self._sessions() as s:
            rows = s.execute(select(segments.c.segment, segments.c.published_version)).all()
        return {str(k): int(v or 0) for k, v in rows}

    def published(self) -> list[CopyVersion]:
        """The live version of every segment's copy."""
        with self._sessions() as s:
            rows = s.execute(select(segment_versions).join(segments, (
                segments.c.segment == segment_versions.c.segment) & (
                segments.c.published_version == segment_versions.c.version))).mappings().all()
        return [_version(r) for r in rows]

    def versions(self, segment: str) -> list[CopyVersion]:
        """Every version of a segment's copy, oldest first ([] for an unknown segment)."""
        with self._sessions() as s:
            rows = s.execute(select(segment_versions).where(segment_versions.c.segment == segment)
                             .order_by(segment_versions.c.version)).mappings().all()
        return [_version(r) for r in rows]

    def version(self, segment: str, version: int) -> CopyVersion | None:
        with self._sessions() as s:
            row = s.execute(select(segment_versions).where(
                segment_versions.c.segment == segment, segment_versions.c.version == version)).mappings().first()
        return _version(row) if row is not None else None

    def put_draft(self, segment: str, copy: SegmentCopy, now: datetime) -> int:
        """Store a new draft version of `segment`'s copy (its first when the segment is new); its number."""
        at = naive(now)
        with self._sessions() as s:
            latest = s.execute(select(segments.c.latest_version).where(segments.c.segment == segment)).scalar()
            if latest is None:
                s.execute(insert(segments).values(segment=segment, published_version=0, latest_version=1,
                                                  updated_at=at))
                number = 1
            else:
                number = int(latest) + 1
                # Conditional on the number read: two drafts saved at once cannot take the same one.
                done = s.execute(update(segments).where(segments.c.segment == segment,
                                                        segments.c.latest_version == latest)
                                 .values(latest_version=number, updated_at=at)).rowcount  # type: ignore[attr-defined]
                if done != 1:
                    raise VersionConflict(f"segment {segment!r} changed while saving; save again")
            s.execute(insert(segment_versions).values(segment=segment, version=number, status="draft",
                                                      source="api", created_at=at, published_at=None,
                                                      **_values(copy)))
        return number

    def publish(self, segment: str, version: int, now: datetime) -> int:
        """Make `version` live; returns the version live before (0: none). VersionConflict when unknown."""
        at = naive(now)
        with self._sessions() as s:
            current = s.execute(select(segments.c.published_version).where(segments.c.segment == segment)).scalar()
            exists = s.execute(select(segment_versions.c.version).where(
                segment_versions.c.segment == segment, segment_versions.c.version == version)).scalar()
            if current is None or exists is None:
                raise VersionConflict(f"segment {segment!r} has no version {version}")
            if int(current) == version:
                return version
            done = s.execute(update(segments).where(segments.c.segment == segment,
                                                    segments.c.published_version == current)
                             .values(published_version=version, updated_at=at)).rowcount  # type: ignore[attr-defined]
            if done != 1:
                raise VersionConflict(f"segment {segment!r} was published by someone else meanwhile; try again")
            if current:
                s.execute(update(segment_versions).where(segment_versions.c.segment == segment,
                                                         segment_versions.c.version == current)
                          .values(status="superseded"))
            s.execute(update(segment_versions).where(segment_versions.c.segment == segment,
                                                     segment_versions.c.version == version)
                      .values(status="published", published_at=at))
        return int(current)
