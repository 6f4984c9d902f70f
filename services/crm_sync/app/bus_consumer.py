"""The bus consumer: lead changes into the change feed, the push queue and planned tasks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from nurture import times
from nurture.busmessage import BusMessage
from services.crm_sync import domain
from services.crm_sync import storage as st
from services.crm_sync.app.changes import ChangeStream
from services.crm_sync.app.tasks import TASK_WINDOW, Tasks

# A message's snapshot as crm_sync keeps it, the facts its rules read, and the tasks they plan.
Planned = tuple[dict[str, Any], dict[str, Any], list[domain.TaskPlan]]


class BusConsumer(Tasks, ChangeStream):
    async def handle_messages(self, messages: list[BusMessage]) -> None:
        ids = list(dict.fromkeys(m.lead_id for m in messages if m.type != "lead_erased"))
        journeys = await self.journeys.many(ids)
        now = self.clock.now()

        # Each message's plans as its own snapshot gives them (what `_apply_message` uses unless the
        # message is an older version of the lead than the one kept), to ask SQL once for the tasks
        # that exist already: a rule's signal repeats (every bottom-funnel view signals a sales alert,
        # due once a day), and a plan whose task exists changes nothing.
        planned = [self._plan(m, now) for m in messages]

        def write(s: Session) -> None:
            # The batch's leads in one query; `rows` then follows this transaction's own changes,
            # which go to SQL together at the end (BatchWrites).
            rows = st.get_leads(s, ids, lock=True)
            # One pending contact push covers every change of the batch (it reads the latest state):
            # locked after the leads, so no pass claims it and reads the leads before this commits.
            queued = st.pending_jobs(s, ids, "contact")
            # The tasks under the batch's dedupe keys (key -> lead), read with the leads locked; the
            # batch adds those it creates. Held here, a plan's task costs neither a read nor a flush.
            tasks = st.task_keys(s, {p.dedupe_key for plan in planned if plan for p in plan[2]})
            batch = st.BatchWrites()
            # New tasks join the batch's writes; what making them reads (each lead's tasks of the day,
            # its merges) is read once for the leads whose plans have no task yet.
            writes = st.BatchTaskWrites(s, batch, queued, now - TASK_WINDOW)
            writes.preload(m.lead_id for m, plan in zip(messages, planned, strict=True)
                           if plan and any(p.dedupe_key not in tasks for p in plan[2]))
            for m, plan in zip(messages, planned, strict=True):
                self._apply_message(s, m, journeys.get(m.lead_id), now, rows, batch, plan, tasks, writes)
            batch.flush(s)

        await self.sql(write)
        self._notify_changes()
        self.push_wake.set()

    def _plan(self, m: BusMessage, now: datetime) -> Planned | None:
        """The message's snapshot as crm_sync keeps it, its facts and the tasks the rules plan for them."""
        if m.type == "lead_erased" or m.lead is None:
            return None
        lead = m.lead.as_dict()
        facts = domain.facts_for(lead, list(m.signals), {"type": m.type, "properties": m.properties})
        return lead, facts, domain.planned_tasks(self.cfg, m.lead_id, facts, now)

    def _apply_message(self, s: Session, m: BusMessage, journeys: list[dict[str, Any]] | None,
                       now: datetime, rows: dict[str, st.LeadRecord], batch: st.BatchWrites,
                       planned: Planned | None, tasks: dict[str, str], writes: st.BatchTaskWrites) -> None:
        queued = writes.queued
        lead_id = m.lead_id
        if m.type == "lead_erased":
            batch.flush(s)  # what the batch wrote before, in SQL before it is read and erased
            row = st.get_lead(s, lead_id, lock=True)
            rows.pop(lead_id, None)
            st.erase_lead(s, lead_id)
            for key in [k for k, owner in tasks.items() if owner == lead_id]:  # its tasks went with it
                del tasks[key]
            writes.forget(lead_id)
            if row and row.crm_id:
                st.enqueue(s, lead_id, "erase", now, payload={"remote_id": row.crm_id})
            st.add_change(s, lead_id, row.crm_id if row else None, ["erased"], {}, now)
            return
        if m.lead is None or planned is None:
            return
        # The snapshot as crm_sync keeps it (its snapshot column) and maps it: by configured field name.
        lead = planned[0]
        current = rows.get(lead_id)
        row = current or st.new_lead_row(lead_id, now)
        occurred = times.parse_utc(m.occurred_at) or now
        # Lead-change messages carry the lead's version (a redelivered older one is dropped); event
        # snapshots carry none and are applied in bus order, which is per-lead order.
        version = m.lead.version
        dirty = False
        if version is None or version > int(row.version):
            source = str(m.properties.get("source") or m.source or "")
            row.fields = domain.track_platform_changes(self.cfg, lead, row.fields, occurred,
                                                          from_crm=source.startswith("crm:"))
            row.snapshot, dirty = lead, True
            row.version = version if version is not None else row.version
            row.email = m.lead.email or row.email
            if m.lead.lifecycle_stage == "customer" and not row.converted_at:
                row.converted_at = occurred
            crm_id = m.lead.crm_id
            if crm_id and not row.crm_id:
                st.unlink_crm_id(s, self.crm_name, crm_id, lead_id)
                for other in rows.values():  # the rows of this batch follow the unlink
                    if other.crm_id == crm_id and other.crm == self.crm_name:
                        other.crm_id = None
                row.crm, row.crm_id = self.crm_name, crm_id
        if journeys is not None and journeys != row.journeys:
            row.journeys, dirty = journeys, True
        snapshot = row.snapshot or lead
        if dirty:
            proj = domain.projection(snapshot, row.journeys)
            changed = domain.changed_keys(row.projection, proj)
            if changed:
                batch.add_change(lead_id, row.crm_id, changed, proj, occurred)
                row.projection = proj
            if lead_id not in queued:  # one pending contact push covers every change of the batch
                batch.enqueue(lead_id, "contact", now)
                queued.add(lead_id)
        if snapshot is lead:  # the facts the plans were made from
            _, facts, plans = planned
        else:  # an older version of the lead than the one kept: the kept snapshot's facts
            facts = domain.facts_for(snapshot, list(m.signals), {"type": m.type, "properties": m.properties})
            plans = domain.planned_tasks(self.cfg, lead_id, facts, now)
        # A plan whose task exists already is a duplicate: `_create_task` would find the task and
        # return it, changing nothing.
        plans = [p for p in plans if p.dedupe_key not in tasks]
        for plan in plans:
            task, _ = self._create_task(writes, row, snapshot, plan.dedupe_key, plan.kind, plan.title, plan.priority,
                                        plan.due_at, {"why": plan.why, "facts": plan.facts, "bus_message": m.id},
                                        plan.rule, now, facts=facts, absent=True)
            if task.dedupe_key == plan.dedupe_key:  # created, held or found under the key (not merged)
                tasks[plan.dedupe_key] = lead_id
        if plans:
            # An assignment (the only way a task gives the lead an owner) queued a contact push, or
            # found one pending (`writes.queued`): either covers this batch.
            dirty = True
        if dirty or current is None:
            row.updated_at = now
            batch.save_lead(row, exists=current is not None)
            rows[lead_id] = row
