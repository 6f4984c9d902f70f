"""CRM pushes given up on (the outbox's dead jobs) as the Admin service lists and retries them
(ids `crm_push:<job>`): a retry queues the push again with a fresh count of attempts, notes on the
lead's timeline who asked, and performs the due pushes at once, so the answer says whether it went."""

from __future__ import annotations

from sqlalchemy.orm import Session

from nurture.admin import DeadLetter, Retried
from services.crm_sync import storage as st
from services.crm_sync.app.core import CrmSyncCore

PREFIX = "crm_push"


class PushDeadLetters:
    def __init__(self, core: CrmSyncCore) -> None:
        self._core = core

    async def list(self, limit: int) -> tuple[list[DeadLetter], int]:
        rows, total = await self._core.sql(lambda s: st.dead_page(s, limit))
        return [DeadLetter(id=f"{PREFIX}:{r.id}", kind=PREFIX, lead_id=str(r.lead_id),
                           summary=f"{r.op} push after {r.attempts} attempts", error=str(r.last_error or ""),
                           at=r.done_at) for r in rows], total

    async def retry(self, letter_id: str, actor: str) -> Retried | None:
        raw = letter_id.removeprefix(f"{PREFIX}:")
        if raw == letter_id or not raw.isdigit() or len(raw) > 18:
            return None
        job_id = int(raw)
        now = self._core.clock.now()

        def requeue(s: Session) -> bool:
            job = st.requeue_dead(s, job_id, now)
            if job is None:
                return False
            st.add_timeline(s, job.lead_id, now, "push_retried",
                            f"CRM push ({job.op}) retried by {actor or 'an operator'} after: {job.last_error}",
                            {"job": job_id, "op": job.op, "actor": actor, "previous_error": job.last_error})
            return True
        if not await self._core.sql(requeue):
            return None
        await self._core.process_due()
        status, error = await self._core.sql(lambda s: st.job_status(s, job_id))
        if status == "done":
            return Retried(True)
        return Retried(False, f"{'dead again' if status == 'dead' else 'will retry'}: {error or 'no error recorded'}")
