"""What a bus batch costs journeys per lead: a lead's state row is encoded once per flush, however many
of the batch's messages are the lead's, and the row stored is the state after its last message."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from nurture.busmessage import BusMessage, LeadSnapshot
from services.journeys import storage
from services.journeys.domain.state import LeadState
from tests.integration.journeys.conftest import Mesh
from tests.integration.journeys.fakes import lead, publish, settle

pytestmark = pytest.mark.anyio


async def test_a_batch_encodes_a_leads_state_once_and_stores_the_last(mesh: Mesh,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    ana = lead("l-batch", "skilled_professional")
    await publish(mesh.pub, mesh.clock, ana, "lead_created")
    await settle(mesh.admin)

    encoded: Counter[str] = Counter()
    flushed: Counter[str] = Counter()
    to_json, flush = LeadState.to_json, storage.Writes.flush

    def counting_to_json(self: LeadState) -> Any:
        encoded[self.lead_id] += 1
        return to_json(self)

    def counting_flush(self: storage.Writes, session: Any) -> None:
        flushed.update(list(self.leads))  # the leads whose state rows this flush writes
        flush(self, session)

    monkeypatch.setattr(LeadState, "to_json", counting_to_json)
    monkeypatch.setattr(storage.Writes, "flush", counting_flush)
    views = 8
    # One publish: the eight messages are on the lead's shard together, read by one batch (or two, if the
    # consumer's blocking read woke at the first of them).
    await mesh.pub.publish([
        BusMessage(id=f"view-{n}", lead_id="l-batch", type="page_viewed", properties={"category": "pricing"},
                   occurred_at=mesh.clock.now().isoformat(),
                   lead=LeadSnapshot.from_dict({**ana, "counters": {**ana["counters"], "interactions_24h": n}}))
        for n in range(1, views + 1)])
    await settle(mesh.admin)

    assert 1 <= flushed["l-batch"] < views
    # The main code encoded the state at every message (eight times here) to keep the last.
    assert encoded["l-batch"] == flushed["l-batch"], (encoded, flushed)
    engine = sa.create_engine(mesh.settings.database_url_for("journeys"))
    try:
        with engine.connect() as conn:
            raw = conn.execute(sa.select(storage.LeadRow.state).where(storage.LeadRow.lead_id == "l-batch")).scalar()
            done = conn.execute(sa.select(sa.func.count()).select_from(storage.ProcessedRow)
                                .where(storage.ProcessedRow.message_id.like("view-%"))).scalar()
    finally:
        engine.dispose()
    assert json.loads(raw)["lead"]["counters"]["interactions_24h"] == views
    assert done == views
