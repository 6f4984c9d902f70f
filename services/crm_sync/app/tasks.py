"""Process automation: tasks, notifications and assignment (round robin) for sales."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from sqlalchemy.orm import Session

from nurture.api.scoring.v1 import scoring_pb2
from nurture.jsontypes import JsonMapping, JsonObject
from nurture.rpc import DEADLINE_S
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.app.base import CoreBase, InputError, ScoringUnavailable, UnknownContact
from services.crm_sync.clients import lead_from_proto

# One sales task of a kind per lead and day, whichever rule or journey asks for it first.
TASK_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class TaskRequest:
    """A task asked for by another service (journeys' RequestTask), as the servicer read it."""

    dedupe_key: str
    lead_id: str
    kind: str          # sales_alert | follow_up | consultation | notify
    title: str
    priority: str      # high | normal
    due_at: datetime | None
    details: JsonObject  # the caller's, stored verbatim with the task
    source: str


class Tasks(CoreBase):
    def _create_task(self, w: st.TaskWrites, row: st.LeadRecord, lead: JsonObject, key: str, kind: str, title: str,
                     priority: str, due_at: datetime | None, details: JsonObject, rule: str, now: datetime,
                     facts: JsonMapping | None = None, absent: bool = False,
                     journeys: Sequence[object] | None = None) -> tuple[st.Task, bool]:
        # `absent`: the caller read in this transaction that no task holds the key (the bus handler's
        # batch read, st.task_keys), so it is not asked again. `w`: SQL at once, or the bus batch's.
        # `journeys`: the lead's enrolments read now (else those the last bus message brought).
        existing = None if absent else st.get_task_by_key(w.s, key)
        if existing:
            return existing, True
        lead_id = row.lead_id
        hold = domain.task_hold(self.cfg, facts or domain.facts_for(lead, [], None),
                                row.journeys if journeys is None else journeys)
        if hold is not None:
            # Closed loop: sales said no. Recorded (a later request under the key is a duplicate),
            # never pushed: the lead is not re-alerted to sales.
            task = st.Task(id=uuid.uuid4().hex, dedupe_key=key, lead_id=lead_id, kind=kind, title=title,
                           priority=priority, owner=row.owner, due_at=due_at, details=details, document="",
                           rule=rule, status="held", remote_id=None, created_at=now)
            w.insert_task(task)
            w.add_timeline(lead_id, now, "task_held", f"{title}: not sent to sales, held by rule {hold.rule}: "
                            f"{hold.meta.get('why', '')}",
                            {"task_id": task.id, "kind": kind, "rule": rule, "hold": hold.rule,
                             "why": hold.meta.get("why", ""), "facts": dict(hold.facts), "dedupe_key": key})
            return task, False
        if kind not in ("notify", "proposal"):
            # A journey trigger and a crm rule may both ask for the same follow-up (the seed's
            # bottom-funnel alert): the first one today wins, the other is recorded as merged.
            # A proposal's task links its own document, so two proposals are two tasks.
            same = w.recent_task(lead_id, kind, now - TASK_WINDOW)
            if same:
                # Several bus messages (and a journey's retried request) can ask under one key: the
                # merge is recorded once.
                if w.was_merged(lead_id, key):
                    return same, True
                w.add_timeline(lead_id, now, "task_merged", f"{title}: merged into today's {kind} task",
                                {"task_id": same.id, "dedupe_key": key, "rule": rule})
                return same, True
        if not row.owner:
            picked = domain.pick_team(self.cfg, domain.facts_for(lead, [], None))
            if picked:
                team, arule = picked
                members = self.cfg.teams[team]
                member = members[st.next_round_robin(w.s, team, len(members))]
                row.owner, row.team, row.meeting_link = member.owner, team, member.meeting_link
                w.add_timeline(lead_id, now, "assigned", f"Assigned to {member.owner} ({team}, rule {arule})",
                                {"owner": member.owner, "team": team, "rule": arule})
                # The owner and their meeting link go onto the lead, so consultation emails can offer
                # the link (`lead.attributes.meeting_link`) and the CRM sees the owner.
                w.enqueue(lead_id, "lead", now, payload={"attributes": {
                    "sales_owner": member.owner, "meeting_link": member.meeting_link}})
                w.enqueue_contact(lead_id, now)
        document = domain.recommendation_document(lead, row.journeys, owner=row.owner,
                                                  meeting_link=row.meeting_link, task_title=title,
                                                  why=str(details.get("why", "")))
        task = st.Task(id=uuid.uuid4().hex, dedupe_key=key, lead_id=lead_id, kind=kind, title=title,
                       priority=priority, owner=row.owner, due_at=due_at, details=details, document=document,
                       rule=rule, status="queued", remote_id=None, created_at=now)
        w.insert_task(task)
        label = "notification" if kind == "notify" else "task_created"
        w.add_timeline(lead_id, now, label, f"{'Notified' if kind == 'notify' else 'Task for'} "
                        f"{row.owner or 'unassigned'}: {title}",
                        {"task_id": task.id, "kind": kind, "priority": priority, "rule": rule,
                         "dedupe_key": key, "due_at": due_at, "why": details.get("why", "")})
        w.enqueue(lead_id, "task", now, ref=task.id)
        return task, False

    async def request_task(self, req: TaskRequest) -> tuple[st.Task, bool]:
        if not req.dedupe_key or not req.lead_id:
            raise InputError("dedupe_key and lead_id are required")
        if req.kind not in ("sales_alert", "follow_up", "consultation", "notify"):
            raise InputError("kind must be sales_alert, follow_up, consultation or notify")
        if req.priority not in ("high", "normal"):
            raise InputError("priority must be high or normal")
        found = await self.read(lambda s: st.get_task_by_key(s, req.dedupe_key))
        if found:
            return found, True
        row = await self.read(lambda s: st.get_lead(s, req.lead_id))
        lead = row.snapshot if row and row.snapshot else None
        if lead is None:
            try:
                reply = await self.scoring.GetLead(scoring_pb2.GetLeadRequest(id=req.lead_id), timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise UnknownContact(f"unknown lead {req.lead_id!r}") from exc
                raise ScoringUnavailable(exc.details() or exc.code().name) from exc
            lead = lead_from_proto(reply)
        # The holds read the lead's journeys as they are now: the row keeps those of the lead's last bus
        # message, and a journey's end (the recycle track's, on a won deal) brings none.
        fresh = (await self.journeys.many([req.lead_id])).get(req.lead_id)
        now = self.clock.now()
        snapshot = lead

        def write(s: Session) -> tuple[st.Task, bool]:
            current = st.get_lead(s, req.lead_id, lock=True)
            rec = current or st.new_lead_row(req.lead_id, now)
            if current is None:
                rec.email = snapshot.get("email")
            task, dup = self._create_task(st.TaskWrites(s), rec, snapshot, req.dedupe_key, req.kind,
                                          req.title or req.kind.replace("_", " "), req.priority,
                                          req.due_at, {**req.details, "why": req.details.get(
                                              "why", f"requested by {req.source}")}, f"request:{req.source}",
                                          now, journeys=fresh)
            st.save_lead(s, rec, exists=current is not None)
            return task, dup

        result = await self.writer.submit(write)
        self.push_wake.set()
        return result
