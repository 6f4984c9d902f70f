"""Proposals: generated for a prospect (on request, or when the CRM moves a deal to a proposal stage),
stored, linked from a sales task and from the CRM deal, and emailed to the prospect on request.

Order of effects, so nothing is lost or doubled: the proposal row, its sales task, the CRM push that
writes the link onto the deal and the timeline line are one transaction (a deal's proposal is unique by
deal, so a CRM retry finds the first one). Sending goes through messaging's Send under the dedupe key
`proposal:<id>`: a retried send is messaging's duplicate, never a second email."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import grpc
from sqlalchemy.orm import Session

from nurture.api.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2
from nurture.errors import TRANSIENT
from nurture.rpc import DEADLINE_S
from services.crm_sync import proposals as doc
from services.crm_sync import storage as st
from services.crm_sync.app.base import InputError, ScoringUnavailable, UnknownContact
from services.crm_sync.app.tasks import Tasks
from services.crm_sync.clients import lead_from_proto

# The proposal's sales task is due within a working day: someone reads it before it goes out.
TASK_DUE = timedelta(hours=24)


class MessagingUnavailable(RuntimeError):
    """Messaging could not take the send now (UNAVAILABLE: the caller may retry, it is idempotent)."""


class Proposals(Tasks):
    proposals_cfg: doc.ProposalsConfig
    messaging: messaging_pb2_grpc.MessagingStub | None
    link_secrets: tuple[str, ...]
    public_url: str

    def proposal_url(self, proposal_id: str) -> str:
        return f"{self.public_url.rstrip('/')}/p/{doc.sign(self.link_secrets[0], proposal_id)}"

    async def _lead(self, lead_id: str) -> dict[str, Any]:
        row = await self.read(lambda s: st.get_lead(s, lead_id))
        if row and row.snapshot:
            return dict(row.snapshot)
        try:
            reply = await self.scoring.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise UnknownContact(f"unknown lead {lead_id!r}") from exc
            raise ScoringUnavailable(exc.details() or exc.code().name) from exc
        return lead_from_proto(reply)

    def make_proposal(self, s: Session, lead_id: str, lead: Mapping[str, Any], *, plan: str,
                      deal: Mapping[str, Any] | None, requested_by: str, now: datetime
                      ) -> tuple[st.Proposal, bool]:
        """In the caller's transaction: the deal's proposal if it has one (duplicate), else a new proposal
        with its task, the CRM deal's link push and the timeline line."""
        deal_id = str(deal["deal_id"]) if deal else ""
        if deal_id:
            existing = st.proposal_for_deal(s, deal_id)
            if existing:
                return existing, True
        try:
            offer = doc.choose(self.proposals_cfg, lead, deal, plan)
        except doc.UnknownPlan as exc:
            raise InputError(str(exc)) from exc
        current = st.get_lead(s, lead_id)
        row = current or st.new_lead_row(lead_id, now)
        if current is None:
            row.email = lead.get("email")
        proposal_id = uuid.uuid4().hex
        reference = f"P-{proposal_id[:8].upper()}"
        url = self.proposal_url(proposal_id)
        plan_name = self.proposals_cfg.file.plans[offer.plan].name
        total = f"{offer.total:,.2f} {self.proposals_cfg.currency}"
        # The task first: it may assign an owner, who then signs the document.
        title = f"Proposal {reference} ready ({plan_name}, {total}): review and send"
        task, _dup = self._create_task(
            st.TaskWrites(s), row, dict(lead), f"proposal:{proposal_id}", "proposal", title, "normal", now + TASK_DUE,
            {"why": f"Proposal {reference} for {plan_name} ({total}); read it at {url}",
             "proposal_id": proposal_id, "proposal_url": url, "deal_id": deal_id},
            f"proposal:{requested_by}", now)
        html = doc.render(self.proposals_cfg, offer, lead, reference=reference, created_at=now,
                          owner=row.owner, meeting_link=row.meeting_link)
        proposal = st.Proposal(
            id=proposal_id, lead_id=lead_id, deal_id=deal_id or None, plan=offer.plan,
            lines=tuple(st.ProposalLine(ln.kind, ln.key, ln.name, ln.price, ln.rule) for ln in offer.lines),
            pathways=tuple(p.title for p in offer.pathways), total=offer.total,
            currency=self.proposals_cfg.currency, html=html, status="generated", task_id=task.id,
            message_id=None, requested_by=requested_by[:64], created_at=now,
            valid_until=doc.valid_until(self.proposals_cfg, now), sent_at=None)
        st.insert_proposal(s, proposal)
        if deal_id:
            # The link goes onto the CRM's deal, so whoever opens the deal finds the document.
            st.enqueue(s, lead_id, "deal", now, ref=proposal_id, payload={"deal_id": deal_id, "properties": {
                "nurture_proposal_id": proposal_id, "nurture_proposal_url": url,
                "nurture_proposal_plan": offer.plan, "nurture_proposal_total": f"{offer.total:.2f}"}})
        chosen = ", ".join(f"{ln.name} (rule {ln.rule})" for ln in offer.lines)
        st.add_timeline(s, lead_id, now, "proposal_generated",
                        f"Proposal {reference}: {chosen}; total {total}"
                        + (f"; for deal {deal_id}" if deal_id else "") + f"; asked by {requested_by}",
                        {"proposal_id": proposal_id, "plan": offer.plan, "total": offer.total,
                         "lines": [ln.as_json() for ln in proposal.lines], "pathways": [p.name for p in offer.pathways],
                         "deal_id": deal_id, "task_id": task.id, "requested_by": requested_by})
        st.save_lead(s, row, exists=current is not None)
        return proposal, False

    async def generate_proposal(self, lead_id: str, *, plan: str, deal_id: str,
                                requested_by: str) -> tuple[st.Proposal, bool]:
        if not lead_id:
            raise InputError("lead_id is required")
        if plan and plan not in self.proposals_cfg.file.plans:
            raise InputError(f"unknown plan {plan!r}; plans: {', '.join(self.proposals_cfg.file.plans)}")
        if deal_id:
            found = await self.read(lambda s: st.proposal_for_deal(s, deal_id))
            if found:
                if found.lead_id != lead_id:
                    raise InputError(f"deal {deal_id!r} has a proposal for another lead")
                return found, True
        lead = await self._lead(lead_id)
        deal = {"deal_id": deal_id, "stage": "", "amount": 0, "properties": {}} if deal_id else None
        now = self.clock.now()
        result = await self.writer.submit(lambda s: self.make_proposal(
            s, lead_id, lead, plan=plan, deal=deal, requested_by=requested_by or "api", now=now))
        self.push_wake.set()
        return result

    async def list_proposals(self, lead_id: str) -> list[st.Proposal]:
        return await self.read(lambda s: st.lead_proposals(s, lead_id))

    async def get_proposal(self, proposal_id: str, token: str = "") -> st.Proposal:
        if token:
            verified = doc.verify(self.link_secrets, token)
            if verified is None:
                raise UnknownContact("no such proposal")
            proposal_id = verified
        found = await self.read(lambda s: st.get_proposal(s, proposal_id)) if proposal_id else None
        if found is None:
            raise UnknownContact("no such proposal")
        return found

    async def send_proposal(self, proposal_id: str) -> tuple[str, str, str]:
        """(message id, status, reason) of the email that sends the proposal to the prospect."""
        p = await self.get_proposal(proposal_id)
        if self.messaging is None:
            raise MessagingUnavailable("no messaging service configured")
        cfg = self.proposals_cfg
        row = await self.read(lambda s: st.get_lead(s, p.lead_id))
        context = {
            "proposal_url": self.proposal_url(p.id), "proposal_reference": f"P-{p.id[:8].upper()}",
            "plan_name": cfg.file.plans[p.plan].name if p.plan in cfg.file.plans else p.plan,
            "total_text": f"{p.total:,.2f} {p.currency}", "valid_until": p.valid_until.date().isoformat(),
            "owner_name": doc.owner_name(row.owner if row else None),
        }
        try:
            reply = await self.messaging.Send(messaging_pb2.SendRequest(
                dedupe_key=f"proposal:{p.id}", lead_id=p.lead_id, channel="email",
                template=cfg.file.email_template, category="transactional", step="proposal",
                context_json=json.dumps(context)), timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in TRANSIENT:
                raise MessagingUnavailable(exc.details() or exc.code().name) from exc
            raise InputError(f"messaging refused the send: {exc.details() or exc.code().name}") from exc
        now = self.clock.now()
        went = reply.status in ("scheduled", "sent", "duplicate")

        def record(s: Session) -> None:
            if went:
                st.proposal_sent(s, p.id, message_id=reply.message_id, at=now)
            st.add_timeline(s, p.lead_id, now, "proposal_sent" if went else "proposal_not_sent",
                            f"Proposal P-{p.id[:8].upper()} emailed ({reply.status})" if went else
                            f"Proposal P-{p.id[:8].upper()} not emailed: {reply.status} ({reply.reason})",
                            {"proposal_id": p.id, "message_id": reply.message_id, "status": reply.status,
                             "reason": reply.reason})

        await self.sql(record)
        return reply.message_id, reply.status, reply.reason
