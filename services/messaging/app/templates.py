"""Templates as versioned data: the live version of each template compiled in memory for sends; drafts
(refused with every problem listed), publish, history, previews and test sends.

The catalog (domain/catalog.py) seeds version 1 of each of its templates on first start; the store is
the record after that. Publishing swaps the compiled live version of this process at once; the other
messaging replicas take it at their next `refresh` (every REFRESH_EVERY_S, and at each Settle), which
reads each template's published version and compiles only the ones that changed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nurture.clock import Clock
from nurture.db import Database
from services.messaging.app.segments import SegmentLibrary
from services.messaging.clients import Lead
from services.messaging.domain.catalog import Catalog, Rendered, RenderError
from services.messaging.domain.content import Compiled, ContentError, TemplateContent, parse, validate
from services.messaging.template_store import TemplateRow, TemplateStore, TemplateVersion

log = logging.getLogger(__name__)
# How often a replica looks for versions another one published: a send within this long of a publish
# at another replica may still go out in the version live before (as one just before the publish would).
REFRESH_EVERY_S = 2.0

KEY = re.compile(r"[a-z0-9_]{1,60}\.[a-z0-9_]{1,60}")
SAMPLE_LEAD: Lead = {
    "id": "sample", "first_name": "Ana", "last_name": "Costa", "email": "ana@example.com",
    "segment": "skilled_professional", "timezone": "Europe/Lisbon", "lifecycle_stage": "mql", "score": 55,
    "attributes": {"profession": "nurse", "countries_of_interest": ["CA", "AU"]}}
# A lead the website knows nothing about yet: copy must render for it too (every value empty).
SPARSE_LEAD: Lead = {"id": "sample-sparse", "email": "lead@example.com"}


class InvalidTemplate(Exception):
    """Content (or a key) that cannot be stored or published; `problems` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UnknownTemplate(Exception):
    pass


@dataclass(frozen=True)
class TemplateDetail:
    row: TemplateRow
    shown: TemplateVersion
    versions: list[TemplateVersion]


class TemplateLibrary:
    def __init__(self, *, db: Database, catalog: Catalog, clock: Clock) -> None:
        self.db = db
        self.catalog = catalog
        self.clock = clock
        self.store = TemplateStore(db.session)
        # Segments' copy (label, intro) is versioned beside the templates and loaded and refreshed with them.
        self.segments = SegmentLibrary(db=db, catalog=catalog, clock=clock, samples=(SAMPLE_LEAD, SPARSE_LEAD))
        self._live: dict[str, Compiled] = {}
        self._loaded = False
        self._lock = asyncio.Lock()
        # Previews and test sends of drafts: a few compiled versions kept, compiled again when evicted.
        self._others: OrderedDict[tuple[str, int], Compiled] = OrderedDict()
        # (key, version) → (topic, format) of the versions naming either: a message's events carry its
        # version's (content_of), sent long after another version was published too. Read at start and
        # kept as this process stores, publishes or loads a version (as `_live` is: see the docstring).
        self._named: dict[tuple[str, int], tuple[str, str]] = {}
        # Published versions that did not compile here (refresh): not tried again at every look.
        self._broken: set[tuple[str, int]] = set()

    async def ensure(self) -> None:
        """Seed (first start) and compile every live version, once."""
        if self._loaded:
            return
        await self.segments.ensure()
        async with self._lock:
            if self._loaded:
                return
            seeds = [(k, self.catalog.seed_content(k)) for k in self.catalog.specs]
            await self.db.run(self.store.seed, seeds, self.clock.now())
            # An upgrade that renamed or dropped catalog keys: their untouched seeded copies go, so the
            # template list holds only what journeys can send (and what people made).
            retired = await self.db.run(self.store.retire, list(self.catalog.specs))
            if retired:
                log.info("messaging: retired %d seeded templates the catalog no longer holds: %s",
                         len(retired), ", ".join(retired))
            live = await self.db.run(self.store.published)
            compiled: dict[str, Compiled] = {}
            for v in live:
                try:
                    compiled[v.key] = Compiled(v.key, v.version, v.content)
                except ContentError:
                    continue   # cannot happen for validated content; its sends fail as unknown instead
            self._live = compiled
            self._named = await self.db.run(self.store.named_content)
            self._loaded = True

    async def refresh(self) -> int:
        """Take the versions another replica published (or retired) since this one last looked: one
        small read when nothing changed. Returns how many templates changed here."""
        if not self._loaded:
            await self.ensure()
            return 0
        await self.segments.refresh()
        wanted = await self.db.run(self.store.live_versions)
        gone = [k for k in self._live if wanted.get(k, 0) == 0]
        changed = {k: v for k, v in wanted.items() if v and (k, v) not in self._broken
                   and (k not in self._live or self._live[k].version != v)}
        if not gone and not changed:
            return 0
        async with self._lock:
            for key, version in changed.items():
                found = await self.db.run(self.store.version, key, version)
                if found is None:
                    continue
                try:
                    self._live[key] = Compiled(key, version, found.content)
                except ContentError:
                    self._broken.add((key, version))  # said once, not at every refresh
                    log.error("template %s v%d does not compile; its sends keep the version live before", key,
                              version)
                    continue
                self._remember(key, version, found.content)
            for key in gone:
                self._live.pop(key, None)
        log.info("templates: took %d versions published and %d retired by another process", len(changed), len(gone))
        return len(changed) + len(gone)

    # --- the send path (sync, after ensure) ----------------------------------------------------------
    def live(self, key: str) -> Compiled | None:
        return self._live.get(key)

    def keys(self) -> list[str]:
        return sorted(self._live)

    def named(self, key: str, version: int) -> tuple[str, str]:
        """The topic and format version `version` of `key` names (0: the live one's); "" each for the
        template's default."""
        live = self._live.get(key)
        if live is not None and version in (0, live.version):
            return live.content.topic, live.content.format   # what this process sends from
        return self._named.get((key, version), ("", ""))

    def _remember(self, key: str, version: int, content: TemplateContent) -> None:
        if content.topic or content.format:
            self._named[(key, version)] = (content.topic, content.format)

    def _problems(self, content: TemplateContent) -> list[str]:
        """Every problem of a version's content: validate's, and a format the catalog does not list."""
        problems = validate(content)
        known = self.catalog.formats
        if content.format and known and content.format not in known:
            problems.append(f"format: {content.format!r} is not one of {', '.join(known)}")
        if content.cta_path and self.catalog.site_path(content.cta_path) is None:
            # An address elsewhere would make the button a link no one tracks to a site no one checked.
            problems.append(f"cta_path: {content.cta_path[:200]!r} is not a page of the site "
                            f"({self.catalog.site_url}): give a path (/plans/family) or an address on it")
        return problems

    # --- editing ---------------------------------------------------------------------------------------
    async def list(self) -> list[tuple[TemplateRow, str]]:
        """Every template with the subject source of its live version (the latest's when none is live)."""
        await self.ensure()
        rows = await self.db.run(self.store.heads)
        out = []
        for row in rows:
            live = self._live.get(row.key)
            subject = live.content.subject if live else ""
            if not subject:
                latest = await self.db.run(self.store.version, row.key, row.latest_version)
                subject = latest.content.subject if latest else ""
            out.append((row, subject))
        return out

    async def get(self, key: str, version: int = 0) -> TemplateDetail:
        await self.ensure()
        versions = await self.db.run(self.store.versions, key)
        if not versions:
            raise UnknownTemplate(f"unknown template {key!r}")
        row = next(r for r in await self.db.run(self.store.heads) if r.key == key)
        wanted = version or row.published_version or row.latest_version
        shown = next((v for v in versions if v.version == wanted), None)
        if shown is None:
            raise UnknownTemplate(f"template {key!r} has no version {version}")
        return TemplateDetail(row, shown, versions)

    async def put_draft(self, key: str, raw: object, *, validate_only: bool = False) -> int:
        """Validate and store a draft; InvalidTemplate listing every problem (nothing stored then)."""
        await self.ensure()
        problems = [] if KEY.fullmatch(key) else [
            "key: must be <journey>.<step>: lower-case letters, digits and _ around one dot"]
        content, shape = parse(raw)
        problems += shape
        if content is not None:
            problems += self._problems(content)
        if problems:
            raise InvalidTemplate(problems)
        assert content is not None
        if validate_only:
            return 0
        number = int(await self.db.run(self.store.put_draft, key, content, self.clock.now()))
        self._remember(key, number, content)
        return number

    async def publish(self, key: str, version: int) -> int:
        """Make `version` live for the next send; returns the version live before."""
        await self.ensure()
        found = await self.db.run(self.store.version, key, version)
        if found is None:
            raise UnknownTemplate(f"template {key!r} has no version {version}")
        problems = self._problems(found.content)
        if problems:
            raise InvalidTemplate(problems)
        compiled = Compiled(key, version, found.content)
        async with self._lock:
            previous = int(await self.db.run(self.store.publish, key, version, self.clock.now()))
            self._live[key] = compiled
        self._remember(key, version, found.content)   # (stored by another process, maybe)
        return previous

    async def compiled(self, key: str, version: int = 0) -> Compiled:
        """A version ready to render (0: the live one)."""
        await self.ensure()
        if not version:
            live = self._live.get(key)
            if live is None:
                detail = await self.get(key)   # unpublished: its latest draft
                version = detail.shown.version
            else:
                return live
        live = self._live.get(key)
        if live is not None and live.version == version:
            return live
        cached = self._others.get((key, version))
        if cached is not None:
            self._others.move_to_end((key, version))
            return cached
        found = await self.db.run(self.store.version, key, version)
        if found is None:
            raise UnknownTemplate(f"template {key!r} has no version {version}")
        try:
            cached = Compiled(key, version, found.content)
        except ContentError as exc:
            raise RenderError(str(exc)) from exc
        self._others[(key, version)] = cached
        self._remember(key, version, found.content)
        while len(self._others) > 32:
            self._others.popitem(last=False)
        return cached

    async def preview(self, key: str, version: int, lead: Mapping[str, Any], context: Mapping[str, Any],
                      variant: str = "", unsaved: object | None = None) -> Rendered:
        """A version (or `unsaved` content, validated first) rendered for a lead with untracked links (a
        preview records nothing)."""
        if unsaved is not None:
            content, problems = parse(unsaved)
            problems += self._problems(content) if content is not None else []
            if problems:
                raise InvalidTemplate(problems)
            assert content is not None
            compiled = Compiled(key, 0, content)
        else:
            compiled = await self.compiled(key, version)
        if variant and variant not in compiled.variants:
            # A preview of a variant the version does not have would show the default and say nothing.
            have = ", ".join(sorted(compiled.variants)) or "none"
            raise InvalidTemplate([f"variant: {variant!r} is not a variant of this version (it has: {have})"])
        return self.catalog.render(key, lead, context=context, content=compiled, variant=variant or None,
                                   now=self.clock.now(), unsubscribe_url="#unsubscribe",
                                   segments=self.segments.live())
