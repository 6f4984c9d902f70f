"""The names a report's filters must be one of: the journeys there are (archived ones too: their history
stays), the segments some version of the scoring model defines, the mailbox providers. A filter naming
nothing that exists matches nothing ever, so it is a typo the caller is told about (422, `details.fields`
naming it), not a report of zeros.

The journeys' and segments' lists are kept on the Mesh for FRESH_S seconds, so a filter costs no call in
the usual case; a name missing from a kept list is looked up again before it is refused, so a journey
created a moment ago is accepted at once. A service that does not answer leaves its filter unchecked:
the report stays readable when journeys or scoring is down, as it was before the check."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

import grpc

from gateway.deps import ApiError, Mesh
from nurture.api.journeys.v1 import journeys_pb2, journeys_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc

log = logging.getLogger(__name__)

# Messaging's mailbox providers (services/messaging/data/deliverability.yaml `providers`, and "other" for
# every address elsewhere): tests/unit/gateway/test_known.py keeps the two lists one.
PROVIDERS = ("gmail", "yahoo", "microsoft", "apple", "other")
FRESH_S = 30.0


async def _journeys(m: Mesh) -> frozenset[str]:
    stub = m.stub(journeys_pb2_grpc.JourneysStub, "journeys")
    reply = await stub.ListJourneys(journeys_pb2.ListJourneysRequest(), timeout=m.timeout)
    return frozenset(j.key for j in reply.journeys)


async def _segments(m: Mesh) -> frozenset[str]:
    stub = m.stub(scoring_pb2_grpc.ScoringStub, "scoring")
    reply = await stub.GetScoringModel(scoring_pb2.ScoringModelRequest(), timeout=m.timeout)
    live = json.loads(reply.definition_json or "{}").get("segments") or []
    return frozenset({*reply.segments_ever, *(str(s.get("segment")) for s in live if isinstance(s, dict))})


async def _is_known(m: Mesh, kind: str, name: str, read: Callable[[Mesh], Awaitable[frozenset[str]]]
                    ) -> frozenset[str] | None:
    """None when `name` is one of the `kind` names (or they cannot be read now), else the names."""
    kept = m.known.get(kind)
    if kept is not None and time.monotonic() - kept[0] < FRESH_S and name in kept[1]:
        return None
    try:
        names = await read(m)
    except grpc.aio.AioRpcError as exc:
        log.warning("%s filter left unchecked: the names could not be read (%s)", kind, exc.code().name)
        return None
    m.known[kind] = (time.monotonic(), names)
    return None if name in names else names


async def check_report_filters(m: Mesh, *, journey: str | None, segment: str | None,
                               provider: str | None = None) -> None:
    """422 naming each filter that names nothing there is. `segment=` (empty) is kept: leads without one."""
    problems: dict[str, str] = {}
    if provider is not None and provider not in PROVIDERS:
        problems["provider"] = f"must be one of {', '.join(PROVIDERS)}"
    if journey:
        journeys = await _is_known(m, "journeys", journey, _journeys)
        if journeys is not None:
            problems["journey"] = f"is not a journey; there are {', '.join(sorted(journeys)) or 'none'}"
    if segment:
        segments = await _is_known(m, "segments", segment, _segments)
        if segments is not None:
            problems["segment"] = f"is not a segment of any scoring model version: {', '.join(sorted(segments))}"
    if problems:
        raise ApiError(422, "invalid", "; ".join(f"{k} {v}" for k, v in problems.items()),
                       {"field": next(iter(problems)), "fields": problems})
