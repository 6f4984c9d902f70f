"""SQL storage of segments' copy as versioned data, as templates are (versioned_store.py; the tables:
tables.segments, tables.segment_versions)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from services.messaging.domain.segments import Recommendation, SegmentCopy
from services.messaging.tables import segment_versions, segments
from services.messaging.versioned_store import Head, SessionFactory, Version, VersionedStore

CopyVersion = Version[SegmentCopy]
SegmentRow = Head


def _copy(row: Mapping[Any, Any]) -> SegmentCopy:
    recommended = tuple(Recommendation(str(r.get("title", "")), str(r.get("path", "")))
                        for r in json.loads(str(row["recommended_json"] or "[]")))
    return SegmentCopy(str(row["label"]), str(row["intro"]), recommended)


def _values(copy: SegmentCopy) -> dict[str, object]:
    return {"label": copy.label, "intro": copy.intro, "recommended_json": json.dumps(copy.recommended_dicts())}


class SegmentStore(VersionedStore[SegmentCopy]):
    def __init__(self, sessions: SessionFactory) -> None:
        super().__init__(sessions, heads=segments, versions=segment_versions, key_column="segment", noun="segment",
                         values=_values, read=_copy)
