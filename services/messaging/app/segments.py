"""Segments' copy as versioned data (domain/segments.py), as templates are (app/templates.py): the live
version of each segment's copy in memory for sends and the website; drafts (refused with every problem
listed), publish, history.

The catalog's `segments:` seeds version 1 of each on first start (the "" entry as `_default`); the store is
the record after that. A segment without copy of its own gets the `_default` copy. Publishing swaps this
process's live copy at once; the other replicas take it at their next refresh (with the templates').
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from jinja2 import TemplateError

from nurture.clock import Clock
from nurture.db import Database
from services.messaging.clients import Lead
from services.messaging.domain.catalog import Catalog, RenderError
from services.messaging.domain.segments import DEFAULT, SEGMENT, CompiledCopy, SegmentCopy, parse
from services.messaging.segment_store import CopyVersion, SegmentRow, SegmentStore

log = logging.getLogger(__name__)


class InvalidSegmentCopy(Exception):
    """Copy (or a segment name) that cannot be stored or published; `problems` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UnknownSegment(Exception):
    pass


@dataclass(frozen=True)
class SegmentDetail:
    row: SegmentRow
    shown: CopyVersion
    versions: list[CopyVersion]


class SegmentLibrary:
    def __init__(self, *, db: Database, catalog: Catalog, clock: Clock, samples: tuple[Lead, ...]) -> None:
        self.db = db
        self.catalog = catalog
        self.clock = clock
        self.store = SegmentStore(db.session)
        # Leads a draft's intro is rendered for before it is stored: one with a full profile, one without.
        self.samples = samples
        self._live: dict[str, CompiledCopy] = {}
        self._loaded = False
        self._lock = asyncio.Lock()

    def live(self) -> Mapping[str, CompiledCopy]:
        """segment → its live copy; before the first load, the catalog's (what the store is seeded with)."""
        return self._live if self._loaded else self.catalog.segment_copy

    async def ensure(self) -> None:
        """Seed (first start) and compile every live version, once."""
        if self._loaded:
            return
        async with self._lock:
            if self._loaded:
                return
            await self.db.run(self.store.seed, list(self.catalog.seed_segments().items()), self.clock.now())
            self._live = {v.key: CompiledCopy(v.key, v.version, v.content)
                          for v in await self.db.run(self.store.published)}
            self._loaded = True

    async def refresh(self) -> int:
        """Take the versions another replica published since this one last looked; how many changed."""
        if not self._loaded:
            await self.ensure()
            return 0
        wanted = await self.db.run(self.store.live_versions)
        changed = {k: v for k, v in wanted.items() if v and (k not in self._live or self._live[k].version != v)}
        for segment, version in changed.items():
            found = await self.db.run(self.store.version, segment, version)
            if found is not None:
                self._live[segment] = CompiledCopy(segment, version, found.content)
        return len(changed)

    def _problems(self, segment: str, copy: SegmentCopy, *, render: bool) -> list[str]:
        """What parse does not see: pages off the site, and (`render`: its Jinja2 being sound) an intro that
        fails to render in an email for a lead with a full profile or an empty one."""
        problems = []
        for i, r in enumerate(copy.recommended):
            if self.catalog.site_path(r.path) is None:
                problems.append(f"recommended_content.{i}.path: {r.path[:200]!r} is not a page of the site "
                                f"({self.catalog.site_url}): give a path (/guides/study) or an address on it")
        if not render:
            return problems
        compiled = CompiledCopy(segment, 0, copy)
        key = next(iter(self.catalog.specs))
        for lead in self.samples:
            try:
                self.catalog.render(key, {**lead, "segment": segment}, segments={segment: compiled},
                                    now=self.clock.now())
            except (RenderError, TemplateError) as exc:
                problems.append(f"intro: does not render for a {'sample' if lead.get('attributes') else 'sparse'} "
                                f"lead: {exc}")
                break
        return problems

    # --- editing ---------------------------------------------------------------------------------------
    async def list(self) -> list[tuple[SegmentRow, str]]:
        """Every segment with copy, and the label of its live version (the latest's when none is live)."""
        await self.ensure()
        out = []
        for row in await self.db.run(self.store.heads):
            live = self._live.get(row.key)
            label = live.label if live else ""
            if not label:
                latest = await self.db.run(self.store.version, row.key, row.latest_version)
                label = latest.content.label if latest else ""
            out.append((row, label))
        return out

    async def get(self, segment: str, version: int = 0) -> SegmentDetail:
        await self.ensure()
        versions = await self.db.run(self.store.versions, segment)
        row = next((r for r in await self.db.run(self.store.heads) if r.key == segment), None)
        if not versions or row is None:
            raise UnknownSegment(f"segment {segment!r} has no copy of its own (it gets {DEFAULT}'s)")
        wanted = version or row.published_version or row.latest_version
        shown = next((v for v in versions if v.version == wanted), None)
        if shown is None:
            raise UnknownSegment(f"segment {segment!r} has no version {version}")
        return SegmentDetail(row, shown, versions)

    async def put_draft(self, segment: str, raw: object, *, validate_only: bool = False) -> int:
        """Validate and store a draft; InvalidSegmentCopy listing every problem (nothing stored then)."""
        await self.ensure()
        problems = [] if SEGMENT.fullmatch(segment) else [
            "segment: must be 1-64 of letters, digits, _ and - (the scoring model's segment name)"]
        copy, found = parse(raw)
        problems += found
        if copy is not None:
            problems += self._problems(segment, copy, render=not found)
        if problems:
            raise InvalidSegmentCopy(problems)
        assert copy is not None
        if validate_only:
            return 0
        return int(await self.db.run(self.store.put_draft, segment, copy, self.clock.now()))

    async def publish(self, segment: str, version: int) -> int:
        """Make `version` live for the next send; returns the version live before."""
        await self.ensure()
        found = await self.db.run(self.store.version, segment, version)
        if found is None:
            raise UnknownSegment(f"segment {segment!r} has no version {version}")
        compiled = CompiledCopy(segment, version, found.content)
        async with self._lock:
            previous = int(await self.db.run(self.store.publish, segment, version, self.clock.now()))
            self._live[segment] = compiled
        log.info("segment copy %s v%d published (v%d before)", segment, version, previous)
        return previous
