"""Inbound contacts: CRM contact upserts, batched into one scoring call and one group commit."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NamedTuple

import grpc
from sqlalchemy.orm import Session

from nurture import jsoncodec
from nurture.api.scoring.v1 import scoring_pb2
from nurture.batching import Batcher
from nurture.jsontypes import JsonObject
from nurture.rpc import DEADLINE_S
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.app.base import CoreBase
from services.crm_sync.clients import lead_from_proto

log = logging.getLogger(__name__)


@dataclass
class ContactIn:
    crm_id: str
    email: str
    first_name: str
    last_name: str
    properties: JsonObject
    modified_at: datetime
    lead_id: str


@dataclass(frozen=True)
class ContactResult:
    """What became of one inbound contact (the ContactResult of UpsertContacts): `status` created |
    updated | unchanged | stale | duplicate | error; `conflicts`: the fields where the platform's value won."""

    crm_id: str
    lead_id: str = ""
    status: str = "error"
    error_code: str = ""
    error_message: str = ""
    conflicts: tuple[str, ...] = ()


@dataclass
class ContactWrite:
    """An applied contact, to be recorded: the lead scoring returned and the sync state to keep."""

    crm: str
    c: ContactIn
    lead: JsonObject   # the lead as scoring answered (clients.lead_from_proto)
    digest: str
    merged: domain.InboundMerge
    status: str
    now: datetime


class _Plan(NamedTuple):
    """A contact on its way to scoring: where it sits in the batch (`at`), what we knew of its lead (the
    lead row, when there is one) and what the merge decided."""

    at: int
    crm: str
    contact: ContactIn
    row: st.LeadRecord | None
    digest: str
    merged: domain.InboundMerge


class _Upserted(NamedTuple):
    """Scoring's answer for one contact: the lead, or an error code and message; `stale`: scoring had
    applied a later modification of this contact (possibly taken by another replica), nothing changed."""

    lead: scoring_pb2.Lead | None
    created: bool
    error_code: str
    error_message: str
    stale: bool = False


def _source_record(crm: str, c: ContactIn) -> str:
    """What names the contact's record in the CRM, for scoring to order its modifications by: its CRM id;
    without one, the lead it names or its address (a digest: the same length whatever the address, and no
    second copy of it on the lead); "" when it names none of them."""
    if c.crm_id:
        return f"{crm}:{c.crm_id}"
    if c.lead_id:
        return f"{crm}:lead:{c.lead_id}"
    if c.email:
        return f"{crm}:email:{hashlib.sha256(c.email.lower().encode()).hexdigest()[:40]}"
    return ""


def _stale_line(lead_id: str, at: datetime, crm: str, c: ContactIn, last_seen: datetime | None) -> st.TimelineEntry:
    """The timeline's note of a contact update ignored as older than one already applied."""
    details: JsonObject = {"crm": crm, "crm_id": c.crm_id, "modified_at": c.modified_at}
    if last_seen is not None:
        details["last_seen"] = last_seen
    return st.timeline_row(lead_id, at, "contact_stale",
                           f"Ignored an out-of-order update of CRM contact {c.crm_id}", details)


def crm_lead_id(crm: str, crm_id: str) -> str:
    """The id of a lead born from a CRM contact that has no email (stable across retries)."""
    return "crm_" + hashlib.sha256(f"{crm}:{crm_id}".encode()).hexdigest()[:32]


def _contact_keys(crm: str, c: ContactIn) -> list[str]:
    """What one inbound contact is locked by, in-process and across replicas: each way it may meet a lead
    (its CRM id, email, lead id), sorted. The address as a digest: lease names in Redis hold no address."""
    email = hashlib.sha256(c.email.lower().encode()).hexdigest()[:40] if c.email else ""
    return sorted(f"{crm}:{kind}:{value}" for kind, value in (("id", c.crm_id), ("email", email),
                                                               ("lead", c.lead_id)) if value)


class InboundContacts(CoreBase):
    contacts: Batcher[tuple[str, ContactIn], ContactResult | None]

    async def upsert_contacts(self, crm: str, contacts: list[ContactIn]) -> list[ContactResult]:
        if len(contacts) == 1:  # the CRM's usual call: no task to gather
            return [await self.upsert_contact(crm, contacts[0])]
        return list(await asyncio.gather(*(self.upsert_contact(crm, c) for c in contacts)))

    async def upsert_contact(self, crm: str, c: ContactIn) -> ContactResult:
        # Deliveries that may meet the same lead (same CRM id, email or lead id) run one after the
        # other; everything else joins the next batch. Locks are taken in sorted order (no deadlock).
        # Across replicas the batch holds each contact's leases (`_upsert_batch`): a contact another
        # replica is handling comes back None and tries again, alone, after a pause.
        keys = _contact_keys(crm, c)
        async with contextlib.AsyncExitStack() as stack:
            for key in keys:
                await stack.enter_async_context(self.locks.hold(key))
            async with self.contact_leases.waiting(f"CRM contact {c.crm_id or c.lead_id or 'by email'}") as wait:
                while (result := await self.contacts.submit((crm, c))) is None:
                    await wait()
                return result

    async def _upsert_batch(self, items: list[tuple[str, ContactIn]]) -> list[ContactResult | None | BaseException]:
        """A batch under its contacts' leases (one round trip for all of them, one to give them back), so
        two versions of one contact at two replicas are judged one after the other: the second reads
        the first's row (X -> Y -> X sent to two replicas at once ended at Y when both judged against
        X). A contact whose lease another replica holds is answered None (its caller tries again)."""
        async with self.contact_leases.hold_each([_contact_keys(crm, c) for crm, c in items]) as held:
            ready = [i for i, ok in enumerate(held) if ok]
            done = await self._apply_batch([items[i] for i in ready]) if ready else []
        out: list[ContactResult | None | BaseException] = [None] * len(items)
        for i, res in zip(ready, done, strict=True):
            out[i] = res
        return out

    async def _apply_batch(self, items: list[tuple[str, ContactIn]]) -> list[ContactResult | BaseException]:
        """Contacts of concurrent calls together: one read of what we know, one scoring call, one
        group commit. Each contact keeps its own outcome (stale, duplicate, error, ...)."""
        rows = await self.read(lambda s: st.find_leads(
            s, [st.LeadQuery(crm, c.crm_id or None, c.lead_id or None, c.email or None) for crm, c in items]))
        out: list[ContactResult | BaseException] = [ContactResult(c.crm_id) for _, c in items]
        stale: list[st.TimelineEntry] = []
        claims: list[tuple[str, str, str]] = []
        plans: list[_Plan] = []
        requests: list[scoring_pb2.UpsertLeadRequest] = []
        started = self.clock.now()
        for i, ((crm, c), row) in enumerate(zip(items, rows, strict=True)):
            result = ContactResult(c.crm_id)
            why = domain.ahead_of_clock(self.cfg, "contact.modified_at", c.modified_at, started) \
                or domain.property_problem(self.cfg, c.properties, "contact.properties_json")
            if why is not None:
                log.warning("CRM %s contact %s refused: %s", crm, c.crm_id or c.email, why)
                out[i] = replace(result, lead_id=row.lead_id if row else "", error_code="invalid", error_message=why)
                continue
            digest = hashlib.sha256(json.dumps([c.crm_id, c.email, c.first_name, c.last_name, c.properties],
                                               sort_keys=True, default=str).encode()).hexdigest()[:32]
            if row and row.crm_id == c.crm_id and row.contact_modified_at:
                if c.modified_at < row.contact_modified_at:
                    stale.append(_stale_line(row.lead_id, self.clock.now(), crm, c, row.contact_modified_at))
                    out[i] = replace(result, lead_id=row.lead_id, status="stale")
                    continue
                if c.modified_at == row.contact_modified_at and row.inbound_hash == digest:
                    out[i] = replace(result, lead_id=row.lead_id, status="duplicate")
                    continue
            elif row and c.crm_id and row.crm == crm and row.crm_id and row.contact_modified_at \
                    and c.modified_at <= row.contact_modified_at:
                # Another contact of this CRM links the lead and was modified later. The CRM keeps an email
                # on one contact at a time, so this claim is the older one (a late delivery, a contact that
                # has since lost the email or was merged): applied, it would take the link back and write
                # older values over newer ones. Its id is remembered, so its activities and deals (and a
                # newer update) still reach this lead rather than a second one.
                stale.append(st.timeline_row(
                    row.lead_id, self.clock.now(), "contact_stale",
                    f"Ignored CRM contact {c.crm_id}: contact {row.crm_id}, this lead's link, was modified later",
                    {"crm": crm, "crm_id": c.crm_id, "modified_at": c.modified_at, "linked_crm_id": row.crm_id,
                     "last_seen": row.contact_modified_at}))
                claims.append((crm, c.crm_id, row.lead_id))
                out[i] = replace(result, lead_id=row.lead_id, status="stale")
                continue
            props = dict(c.properties)
            for name, value in (("email", c.email), ("firstname", c.first_name), ("lastname", c.last_name)):
                if value:
                    props[name] = value
            snapshot = row.snapshot if row and row.snapshot else None
            merged = domain.merge_inbound(self.cfg, props, c.modified_at, snapshot, row.fields if row else {})
            fields = dict(merged.fields)
            if c.crm_id:
                fields["crm_id"] = c.crm_id
            lead_id = row.lead_id if row else (c.lead_id or "")
            if not lead_id and not c.email and c.crm_id:
                # Scoring commits before we do: after a crash between the two, the CRM's retry must land
                # on the lead the first try created. With an email scoring matches on it; without one
                # the lead id itself is derived from the CRM's id.
                lead_id = crm_lead_id(crm, c.crm_id)
            out[i] = result
            plans.append(_Plan(i, crm, c, row, digest, merged))
            request = scoring_pb2.UpsertLeadRequest(id=lead_id, fields_json=jsoncodec.dumps(fields), merge=True,
                                                    source=f"crm:{crm}")
            if record := _source_record(crm, c):
                # Scoring refuses this write if it applied a later modification of this contact: the
                # check above read our row without a lock, and another replica may be writing the
                # same contact right now (docs/ARCHITECTURE.md, "CRM inbound order").
                request.source_record = record
                request.source_modified_at.FromDatetime(c.modified_at)
            requests.append(request)
        replies = await self._scoring_upserts(requests)
        now = self.clock.now()
        writes: list[tuple[int, ContactWrite]] = []
        for plan, reply in zip(plans, replies, strict=True):
            i, merged = plan.at, plan.merged
            base = out[i]
            assert isinstance(base, ContactResult)
            if reply.lead is None:
                out[i] = replace(base, error_code=reply.error_code, error_message=reply.error_message)
                continue
            if reply.stale:
                last = plan.row.contact_modified_at if plan.row and plan.row.crm_id == plan.contact.crm_id else None
                stale.append(_stale_line(reply.lead.id, now, plan.crm, plan.contact, last))
                out[i] = replace(base, lead_id=reply.lead.id, status="stale")
                continue
            lead = lead_from_proto(reply.lead)
            status = "created" if reply.created else ("updated" if merged.changed or not plan.row else "unchanged")
            writes.append((i, ContactWrite(crm=plan.crm, c=plan.contact, lead=lead, digest=plan.digest,
                                           merged=merged, status=status, now=now)))
            out[i] = replace(base, lead_id=lead["id"], status=status,
                             conflicts=tuple(x["field"] for x in merged.conflicts if x["winner"] == "platform"))
        if not writes and not stale:
            return out
        entries = [w for _, w in writes]
        try:
            late = await self.writer.submit(functools.partial(self._write_contacts, entries=entries, stale=stale,
                                                                 claims=claims))
            self.stats.inbound += len(entries) - len(late)
        except Exception:
            # The batch's transaction failed: contact by contact, so one bad contact fails alone.
            log.warning("contact batch write failed; writing one by one", exc_info=True)
            done = await asyncio.gather(*(self.writer.submit(functools.partial(
                self._write_contacts, entries=[w], stale=[], claims=[])) for w in entries), return_exceptions=True)
            late = set()
            for n, ((i, _), res) in enumerate(zip(writes, done, strict=True)):
                if isinstance(res, BaseException):
                    out[i] = res
                elif res:
                    late.add(n)
                else:
                    self.stats.inbound += 1
        for n in late:
            i = writes[n][0]
            base = out[i]
            assert isinstance(base, ContactResult)
            out[i] = replace(base, status="stale", conflicts=())
        return out

    def _write_contacts(self, s: Session, *, entries: list[ContactWrite], stale: list[st.TimelineEntry],
                        claims: list[tuple[str, str, str]]) -> set[int]:
        """Record applied contacts in a few statements per batch (not several per contact). Answers
        which entries (by position) it left out: a later modification of the contact was recorded
        first (by another replica: its row, read locked here, is the judge), so this one is stale.
        `claims`: (crm, crm_id, lead_id) of contacts found stale against another contact of the lead."""
        existing = st.get_leads(s, [e.lead["id"] for e in entries], lock=True)
        recs: dict[str, st.LeadRecord] = {}
        owners: dict[tuple[str, str], str] = {}
        timeline: list[st.TimelineEntry] = list(stale)
        former: list[tuple[str, str, str]] = list(claims)
        late: set[int] = set()
        for n, e in enumerate(entries):
            lead_id, c = e.lead["id"], e.c
            rec = recs.get(lead_id) or existing.get(lead_id) or st.new_lead_row(lead_id, e.now)
            if (c.crm_id and rec.crm == e.crm and rec.crm_id == c.crm_id and rec.contact_modified_at
                    and c.modified_at < rec.contact_modified_at):
                timeline.append(_stale_line(lead_id, e.now, e.crm, c, rec.contact_modified_at))
                late.add(n)
                continue
            if c.crm_id and rec.crm and rec.crm_id and (rec.crm, rec.crm_id) != (e.crm, c.crm_id):
                # The lead's link moves to this contact (it carries the lead's email, or names the lead,
                # and was modified later): the contact it leaves keeps resolving to this lead.
                former.append((rec.crm, rec.crm_id, lead_id))
                timeline.append(st.timeline_row(lead_id, e.now, "contact_relinked",
                                                f"CRM {e.crm} contact {c.crm_id} now links this lead "
                                                f"(was {rec.crm_id})",
                                                {"crm": e.crm, "crm_id": c.crm_id, "previous": rec.crm_id}))
            if c.crm_id:
                rec.crm, rec.crm_id = e.crm, c.crm_id
                owners[(e.crm, c.crm_id)] = lead_id
            rec.email = e.lead["email"] or rec.email
            rec.contact_modified_at, rec.inbound_hash = c.modified_at, e.digest
            rec.fields = {**rec.fields, **e.merged.state}
            rec.updated_at = e.now
            recs[lead_id] = rec
            timeline.append(st.timeline_row(lead_id, e.now, "contact_upserted",
                                            f"CRM {e.crm} {e.status} contact {c.crm_id or c.email}",
                                            {"crm": e.crm, "crm_id": c.crm_id, "status": e.status,
                                             "applied": e.merged.fields, "modified_at": c.modified_at}))
            for conflict in e.merged.conflicts:
                timeline.append(st.timeline_row(
                    lead_id, e.now, "conflict",
                    f"{conflict['field']}: CRM says {conflict['crm_value']!r}, platform has "
                    f"{conflict['platform_value']!r}; {conflict['winner']} wins ({conflict['policy']})",
                    {"crm": e.crm, "crm_id": c.crm_id, **conflict}))
        # A CRM id that moved to another lead (contacts merged in the CRM) is dropped from the old one,
        # in the database and in this batch, before anything takes it.
        st.unlink_crm_ids(s, owners)
        st.remember_links(s, former, self.clock.now())
        for lead_id, rec in recs.items():
            if rec.crm and rec.crm_id and owners.get((rec.crm, rec.crm_id), lead_id) != lead_id:
                rec.crm_id = None
        st.save_leads(s, [r for i, r in recs.items() if i not in existing],
                      [r for i, r in recs.items() if i in existing])
        st.add_timelines(s, timeline)
        return late

    async def _scoring_upserts(self, requests: list[scoring_pb2.UpsertLeadRequest]) -> list[_Upserted]:
        """What scoring made of each request, from one UpsertLeads call."""
        if not requests:
            return []
        try:
            # One transaction for the batch: its deadline grows with its size (a lone lead: DEADLINE_S).
            reply = await self.scoring.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=requests),
                                                   timeout=DEADLINE_S + 0.05 * len(requests))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                code = "invalid" if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else "unavailable"
                return [_Upserted(None, False, code, exc.details() or exc.code().name)] * len(requests)
            # A scoring from before UpsertLeads (a rolling upgrade): one call per lead.
            return list(await asyncio.gather(*(self._scoring_upsert(r) for r in requests)))
        return [_Upserted(r.lead, r.created, "", "", r.stale) if not r.error_code else
                _Upserted(None, False, "unknown_lead" if r.error_code == "not_found" else r.error_code,
                          r.error_message)
                for r in reply.results]

    async def _scoring_upsert(self, request: scoring_pb2.UpsertLeadRequest) -> _Upserted:
        try:
            reply = await self.scoring.UpsertLead(request, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            code = "invalid" if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else (
                "unknown_lead" if exc.code() == grpc.StatusCode.NOT_FOUND else "unavailable")
            return _Upserted(None, False, code, exc.details() or exc.code().name)
        return _Upserted(reply.lead, reply.created, "", "", reply.stale)
