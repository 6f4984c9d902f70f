"""Reading leads from scoring (the owner of profile and consent) as `Lead` records."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TypedDict

import grpc
from google.protobuf import json_format

from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.jsontypes import JsonObject
from nurture.rpc import DEADLINE_S


def email_hash(address: str) -> str:
    """sha256 of the lowercased address: the only thing kept about an erased person."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


class Lead(TypedDict, total=False):
    """A lead as messaging reads it: what templates render, rules decide on (as facts) and sends go to.
    A dict, because templates and rules read it by key; every key may be absent (a sample lead, an
    anonymous visitor's partial profile), so readers use `.get`."""

    id: str
    email: str
    first_name: str
    last_name: str
    segment: str
    timezone: str
    locale: str
    attributes: JsonObject     # custom fields (progressive profiling): free-form on purpose
    consent: JsonObject        # channel -> bool, as scoring keeps it
    score: int
    grade: str
    lifecycle_stage: str
    counters: JsonObject       # engagement counters by name
    interests: JsonObject


def lead_dict(lead: scoring_pb2.Lead) -> Lead:
    counters = _json(lead.counters_json)
    interests = counters.pop("interests", {}) if isinstance(counters.get("interests"), dict) else {}
    return {
        "id": lead.id, "email": lead.email, "first_name": lead.first_name, "last_name": lead.last_name,
        "segment": lead.segment, "timezone": lead.timezone, "locale": lead.locale,
        "attributes": _json(lead.attributes_json), "consent": _json(lead.consent_json), "score": lead.score,
        "grade": lead.grade, "lifecycle_stage": lead.lifecycle_stage, "counters": counters, "interests": interests,
    }


def anonymous_profile(text: str) -> Lead:
    """An anonymous visitor's profile as scoring's Lead in protobuf JSON (PersonalizationRequest), as
    a lead dict; InvalidArgument-worthy input raises ValueError."""
    try:
        return lead_dict(json_format.Parse(text, scoring_pb2.Lead(), ignore_unknown_fields=True))
    except json_format.ParseError as exc:
        raise ValueError(f"anonymous_profile_json is not a Lead: {exc}") from exc


def _json(text: str) -> JsonObject:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class LeadSource:
    """GetLead/GetLeads over one channel; batches so a worker pass costs one round trip."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = scoring_pb2_grpc.ScoringStub(channel)

    @property
    def stub(self) -> scoring_pb2_grpc.ScoringStub:
        return self._stub

    async def get_many(self, ids: Iterable[str]) -> dict[str, Lead]:
        """id → lead for every lead that exists; raises grpc.aio.AioRpcError when scoring is down."""
        wanted = sorted(set(ids))
        out: dict[str, Lead] = {}
        for start in range(0, len(wanted), 500):
            reply = await self._stub.GetLeads(scoring_pb2.GetLeadsRequest(ids=wanted[start:start + 500]),
                                              timeout=DEADLINE_S)
            for lead in reply.leads:
                out[lead.id] = lead_dict(lead)
        return out

    async def get(self, lead_id: str) -> Lead | None:
        try:
            return lead_dict(await self._stub.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=DEADLINE_S))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
