"""SQL storage of templates as versioned data: blocking functions, run through `Database.run`, each one
transaction (the tables: tables.templates, tables.template_versions)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from services.messaging.domain.content import TemplateContent, Variant
from services.messaging.storage import aware, naive
from services.messaging.tables import messages, template_versions, templates

SessionFactory = Callable[[], AbstractContextManager[Session]]


class VersionConflict(Exception):
    """A version that does not exist, or a publish that lost a race with another."""


@dataclass(frozen=True)
class TemplateVersion:
    key: str
    version: int
    status: str          # draft | published | superseded
    content: TemplateContent
    source: str          # seed | api
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True)
class TemplateRow:
    key: str
    published_version: int
    latest_version: int
    updated_at: datetime


def _content(row: Mapping[str, Any]) -> TemplateContent:
    raw = json.loads(str(row["variants_json"] or "{}"))
    return TemplateContent(
        subject=str(row["subject"]), preheader=str(row["preheader"]), body=str(row["body"]), text=str(row["text"]),
        variants={n: Variant(str(v.get("subject", "")), str(v.get("preheader", "")), str(v.get("intro", "")),
                             float(v.get("weight", 1.0))) for n, v in raw.items()},
        topic=str(row["topic"] or ""), format=str(row["format"] or ""), cta_label=str(row["cta_label"] or ""),
        cta_path=str(row["cta_path"] or ""))


def _version(row: Any) -> TemplateVersion:
    created = aware(row["created_at"])
    assert created is not None
    return TemplateVersion(key=str(row["key"]), version=int(str(row["version"])), status=str(row["status"]),
                           content=_content(row), source=str(row["source"]), created_at=created,
                           published_at=aware(row["published_at"]))


def _values(content: TemplateContent) -> dict[str, object]:
    variants = content.as_dict()["variants"]
    return {"subject": content.subject, "preheader": content.preheader, "body": content.body, "text": content.text,
            "variants_json": json.dumps(variants, sort_keys=True), "topic": content.topic, "format": content.format,
            "cta_label": content.cta_label, "cta_path": content.cta_path}


class TemplateStore:
    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    def seed(self, seeds: Sequence[tuple[str, TemplateContent]], now: datetime) -> list[str]:
        """Version 1, published, of every seed whose key has no template yet; returns the keys seeded.
        Idempotent: a key the store already holds (seeded before, or made in the console) is left alone."""
        at = naive(now)
        with self._sessions() as s:
            have = set(s.execute(select(templates.c.key)).scalars())
            fresh = [(k, c) for k, c in seeds if k not in have]
            if fresh:
                s.execute(insert(templates), [{"key": k, "published_version": 1, "latest_version": 1,
                                               "updated_at": at} for k, _ in fresh])
                s.execute(insert(template_versions), [
                    {"key": k, "version": 1, "status": "published", "source": "seed", "created_at": at,
                     "published_at": at, **_values(c)} for k, c in fresh])
        return [k for k, _ in fresh]

    def retire(self, catalog_keys: Collection[str]) -> list[str]:
        """Remove the templates the catalog no longer holds (renamed or dropped there) that nobody made
        or edited: every version came from the seed, so the catalog was their only source, and no
        journey sends them (every send step's template is in the catalog: the definitions check). A
        template with a version from the API is someone's work and stays; so does one a queued message
        still names (scheduled or being sent: it renders at its send), until a later start. Sent
        messages keep their template's key and version as text. Returns the keys removed."""
        keep = set(catalog_keys)
        with self._sessions() as s:
            sources: dict[str, set[str]] = {}
            for key, source in s.execute(select(template_versions.c.key, template_versions.c.source)):
                sources.setdefault(str(key), set()).add(str(source))
            stale = sorted(k for k, src in sources.items() if k not in keep and src == {"seed"})
            if stale:
                waiting = set(s.execute(select(messages.c.template).distinct().where(
                    messages.c.template.in_(stale), messages.c.status.in_(("scheduled", "sending")))).scalars())
                stale = [k for k in stale if k not in waiting]
            if stale:
                s.execute(delete(template_versions).where(template_versions.c.key.in_(stale)))
                s.execute(delete(templates).where(templates.c.key.in_(stale)))
        return stale

    def templates(self) -> list[TemplateRow]:
        with self._sessions() as s:
            rows = s.execute(select(templates).order_by(templates.c.key)).mappings().all()
        return [TemplateRow(r["key"], r["published_version"], r["latest_version"], aware(r["updated_at"]))  # type: ignore[arg-type]
                for r in rows]

    def live_versions(self) -> dict[str, int]:
        """Each template's published version (0: none), in one small read: how a process learns that
        another one published (TemplateLibrary.refresh)."""
        with self._sessions() as s:
            rows = s.execute(select(templates.c.key, templates.c.published_version)).all()
        return {str(k): int(v or 0) for k, v in rows}

    def published(self) -> list[TemplateVersion]:
        """The live version of every template."""
        with self._sessions() as s:
            rows = s.execute(select(template_versions).join(templates, (templates.c.key == template_versions.c.key) & (
                templates.c.published_version == template_versions.c.version))).mappings().all()
        return [_version(r) for r in rows]

    def named_content(self) -> dict[tuple[str, int], tuple[str, str]]:
        """(key, version) → (topic, format) of every version that names either (most name neither)."""
        with self._sessions() as s:
            rows = s.execute(select(template_versions.c.key, template_versions.c.version, template_versions.c.topic,
                                    template_versions.c.format).where(
                (template_versions.c.topic != "") | (template_versions.c.format != ""))).all()
        return {(str(k), int(v)): (str(t), str(f)) for k, v, t, f in rows}

    def versions(self, key: str) -> list[TemplateVersion]:
        """Every version of a template, oldest first ([] for an unknown key)."""
        with self._sessions() as s:
            rows = s.execute(select(template_versions).where(template_versions.c.key == key)
                             .order_by(template_versions.c.version)).mappings().all()
        return [_version(r) for r in rows]

    def version(self, key: str, version: int) -> TemplateVersion | None:
        with self._sessions() as s:
            row = s.execute(select(template_versions).where(
                template_versions.c.key == key, template_versions.c.version == version)).mappings().first()
        return _version(row) if row is not None else None

    def put_draft(self, key: str, content: TemplateContent, now: datetime) -> int:
        """Store a new draft version of `key` (a template of its own when the key is new); its number."""
        at = naive(now)
        with self._sessions() as s:
            latest = s.execute(select(templates.c.latest_version).where(templates.c.key == key)).scalar()
            if latest is None:
                s.execute(insert(templates).values(key=key, published_version=0, latest_version=1, updated_at=at))
                number = 1
            else:
                number = int(latest) + 1
                # Conditional on the number read: two drafts saved at once cannot take the same one.
                done = s.execute(update(templates).where(templates.c.key == key,
                                                         templates.c.latest_version == latest)
                                 .values(latest_version=number, updated_at=at)).rowcount  # type: ignore[attr-defined]
                if done != 1:
                    raise VersionConflict(f"template {key!r} changed while saving; save again")
            s.execute(insert(template_versions).values(key=key, version=number, status="draft", source="api",
                                                      created_at=at, published_at=None, **_values(content)))
        return number

    def publish(self, key: str, version: int, now: datetime) -> int:
        """Make `version` live; returns the version live before (0: none). VersionConflict when unknown."""
        at = naive(now)
        with self._sessions() as s:
            current = s.execute(select(templates.c.published_version).where(templates.c.key == key)).scalar()
            exists = s.execute(select(template_versions.c.version).where(
                template_versions.c.key == key, template_versions.c.version == version)).scalar()
            if current is None or exists is None:
                raise VersionConflict(f"template {key!r} has no version {version}")
            if int(current) == version:
                return version
            done = s.execute(update(templates).where(templates.c.key == key,
                                                     templates.c.published_version == current)
                             .values(published_version=version, updated_at=at)).rowcount  # type: ignore[attr-defined]
            if done != 1:
                raise VersionConflict(f"template {key!r} was published by someone else meanwhile; try again")
            if current:
                s.execute(update(template_versions).where(template_versions.c.key == key,
                                                          template_versions.c.version == current)
                          .values(status="superseded"))
            s.execute(update(template_versions).where(template_versions.c.key == key,
                                                      template_versions.c.version == version)
                      .values(status="published", published_at=at))
        return int(current)
