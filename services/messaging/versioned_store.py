"""SQL storage of named content kept as versioned data (templates, segments' copy): a head row per name
(its published and latest version numbers) and a row per version (draft | published | superseded, where it
came from, the content's own columns). Blocking functions, run through `Database.run`, each one
transaction. What differs between kinds (the tables, the name's column, the content's columns) is given
to `VersionedStore`; the versioning itself (seeding, drafts, publishing, history) is here once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from services.messaging.storage import aware, naive

SessionFactory = Callable[[], AbstractContextManager[Session]]
C = TypeVar("C")


class VersionConflict(Exception):
    """A version that does not exist, or a save or publish that lost a race with another."""


@dataclass(frozen=True)
class Head:
    key: str
    published_version: int   # 0: none yet
    latest_version: int
    updated_at: datetime


@dataclass(frozen=True)
class Version(Generic[C]):
    key: str
    version: int
    status: str          # draft | published | superseded
    content: C
    source: str          # seed | api
    created_at: datetime
    published_at: datetime | None


class VersionedStore(Generic[C]):
    """`heads` (key, published_version, latest_version, updated_at) and `versions` (key, version, status,
    source, created_at, published_at and the content's columns), the key in the column `key_column` of
    both; `values` gives a content's columns, `read` a content from a version row; `noun` names the kind
    in a refusal ("template", "segment")."""

    def __init__(self, sessions: SessionFactory, *, heads: Table, versions: Table, key_column: str, noun: str,
                 values: Callable[[C], dict[str, object]], read: Callable[[Mapping[Any, Any]], C]) -> None:
        self._sessions = sessions
        self._heads, self._versions = heads, versions
        self._hk, self._vk = heads.c[key_column], versions.c[key_column]
        self._key_column = key_column
        self._noun = noun
        self._values, self._read = values, read

    def _version(self, row: Mapping[Any, Any]) -> Version[C]:
        created = aware(row["created_at"])
        assert created is not None
        return Version(key=str(row[self._key_column]), version=int(row["version"]), status=str(row["status"]),
                       content=self._read(row), source=str(row["source"]), created_at=created,
                       published_at=aware(row["published_at"]))

    def seed(self, seeds: Sequence[tuple[str, C]], now: datetime) -> list[str]:
        """Version 1, published, of every seed whose key the store does not hold yet; returns the keys seeded.
        Idempotent: a key the store already holds (seeded before, or made through the API) is left alone."""
        at = naive(now)
        with self._sessions() as s:
            have = set(s.execute(select(self._hk)).scalars())
            fresh = [(k, c) for k, c in seeds if k not in have]
            if fresh:
                s.execute(insert(self._heads), [{self._key_column: k, "published_version": 1, "latest_version": 1,
                                                 "updated_at": at} for k, _ in fresh])
                s.execute(insert(self._versions), [
                    {self._key_column: k, "version": 1, "status": "published", "source": "seed", "created_at": at,
                     "published_at": at, **self._values(c)} for k, c in fresh])
        return [k for k, _ in fresh]

    def heads(self) -> list[Head]:
        with self._sessions() as s:
            rows = s.execute(select(self._heads).order_by(self._hk)).mappings().all()
        return [Head(str(r[self._key_column]), int(r["published_version"]), int(r["latest_version"]),
                     aware(r["updated_at"]) or r["updated_at"]) for r in rows]

    def live_versions(self) -> dict[str, int]:
        """Each key's published version (0: none), in one small read: how a process learns that another
        one published (the libraries' refresh)."""
        with self._sessions() as s:
            rows = s.execute(select(self._hk, self._heads.c.published_version)).all()
        return {str(k): int(v or 0) for k, v in rows}

    def published(self) -> list[Version[C]]:
        """The live version of every key."""
        with self._sessions() as s:
            rows = s.execute(select(self._versions).join(self._heads, (self._hk == self._vk) & (
                self._heads.c.published_version == self._versions.c.version))).mappings().all()
        return [self._version(r) for r in rows]

    def versions(self, key: str) -> list[Version[C]]:
        """Every version of a key, oldest first ([] for an unknown key)."""
        with self._sessions() as s:
            rows = s.execute(select(self._versions).where(self._vk == key)
                             .order_by(self._versions.c.version)).mappings().all()
        return [self._version(r) for r in rows]

    def version(self, key: str, version: int) -> Version[C] | None:
        with self._sessions() as s:
            row = s.execute(select(self._versions).where(
                self._vk == key, self._versions.c.version == version)).mappings().first()
        return self._version(row) if row is not None else None

    def put_draft(self, key: str, content: C, now: datetime) -> int:
        """Store a new draft version of `key` (its first when the key is new); its number."""
        at = naive(now)
        with self._sessions() as s:
            latest = s.execute(select(self._heads.c.latest_version).where(self._hk == key)).scalar()
            if latest is None:
                s.execute(insert(self._heads).values({self._key_column: key, "published_version": 0,
                                                      "latest_version": 1, "updated_at": at}))
                number = 1
            else:
                number = int(latest) + 1
                # Conditional on the number read: two drafts saved at once cannot take the same one.
                done = s.execute(update(self._heads).where(self._hk == key, self._heads.c.latest_version == latest)
                                 .values(latest_version=number, updated_at=at)).rowcount  # type: ignore[attr-defined]
                if done != 1:
                    raise VersionConflict(f"{self._noun} {key!r} changed while saving; save again")
            s.execute(insert(self._versions).values({self._key_column: key, "version": number, "status": "draft",
                                                     "source": "api", "created_at": at, "published_at": None,
                                                     **self._values(content)}))
        return number

    def publish(self, key: str, version: int, now: datetime) -> int:
        """Make `version` live; returns the version live before (0: none). VersionConflict when unknown."""
        at = naive(now)
        with self._sessions() as s:
            current = s.execute(select(self._heads.c.published_version).where(self._hk == key)).scalar()
            exists = s.execute(select(self._versions.c.version).where(
                self._vk == key, self._versions.c.version == version)).scalar()
            if current is None or exists is None:
                raise VersionConflict(f"{self._noun} {key!r} has no version {version}")
            if int(current) == version:
                return version
            done = s.execute(update(self._heads).where(self._hk == key, self._heads.c.published_version == current)
                             .values(published_version=version, updated_at=at)).rowcount  # type: ignore[attr-defined]
            if done != 1:
                raise VersionConflict(f"{self._noun} {key!r} was published by someone else meanwhile; try again")
            if current:
                s.execute(update(self._versions).where(self._vk == key, self._versions.c.version == current)
                          .values(status="superseded"))
            s.execute(update(self._versions).where(self._vk == key, self._versions.c.version == version)
                      .values(status="published", published_at=at))
        return int(current)
