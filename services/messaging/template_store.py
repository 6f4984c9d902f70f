"""SQL storage of templates as versioned data (versioned_store.py; the tables: tables.templates,
tables.template_versions), and what only templates have: retiring the seeded ones the catalog dropped, the
topics and formats versions name."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import delete, select

from services.messaging.domain.content import TemplateContent, Variant
from services.messaging.tables import messages, template_versions, templates
from services.messaging.versioned_store import Head, SessionFactory, Version, VersionConflict, VersionedStore

__all__ = ["TemplateRow", "TemplateStore", "TemplateVersion", "VersionConflict"]

TemplateVersion = Version[TemplateContent]
TemplateRow = Head


def _content(row: Mapping[Any, Any]) -> TemplateContent:
    raw = json.loads(str(row["variants_json"] or "{}"))
    return TemplateContent(
        subject=str(row["subject"]), preheader=str(row["preheader"]), body=str(row["body"]), text=str(row["text"]),
        variants={n: Variant(str(v.get("subject", "")), str(v.get("preheader", "")), str(v.get("intro", "")),
                             float(v.get("weight", 1.0))) for n, v in raw.items()},
        topic=str(row["topic"] or ""), format=str(row["format"] or ""), cta_label=str(row["cta_label"] or ""),
        cta_path=str(row["cta_path"] or ""))


def _values(content: TemplateContent) -> dict[str, object]:
    variants = content.as_dict()["variants"]
    return {"subject": content.subject, "preheader": content.preheader, "body": content.body, "text": content.text,
            "variants_json": json.dumps(variants, sort_keys=True), "topic": content.topic, "format": content.format,
            "cta_label": content.cta_label, "cta_path": content.cta_path}


class TemplateStore(VersionedStore[TemplateContent]):
    def __init__(self, sessions: SessionFactory) -> None:
        super().__init__(sessions, heads=templates, versions=template_versions, key_column="key", noun="template",
                         values=_values, read=_content)

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

    def named_content(self) -> dict[tuple[str, int], tuple[str, str]]:
        """(key, version) → (topic, format) of every version that names either (most name neither)."""
        with self._sessions() as s:
            rows = s.execute(select(template_versions.c.key, template_versions.c.version, template_versions.c.topic,
                                    template_versions.c.format).where(
                (template_versions.c.topic != "") | (template_versions.c.format != ""))).all()
        return {(str(k), int(v)): (str(t), str(f)) for k, v, t, f in rows}

