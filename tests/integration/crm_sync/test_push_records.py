"""A pass of contact pushes is recorded in a few statements, not a read, an update and an insert per
push, and records each push as before: the lead's CRM id and pushed hash, its timeline line."""

from __future__ import annotations

import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nurture.api.scoring.v1 import scoring_pb2
from tests.integration.crm_sync.conftest import Mesh
from tests.integration.crm_sync.test_crm_sync import contact, remote_contact, upsert

pytestmark = pytest.mark.anyio


def _crm_statements(spans: InMemorySpanExporter) -> list[str]:
    out: list[str] = []
    for span in spans.get_finished_spans():
        if span.name == "sql transaction":
            out += [str(s) for s in (span.attributes or {}).get("db.statements", ()) if "crm_sync_" in str(s)]
    return out


async def test_a_pass_of_contact_pushes_is_recorded_together(mesh: Mesh, spans: InMemorySpanExporter) -> None:
    t0 = mesh.clock.now()
    results = [r for n in range(12) for r in await upsert(
        mesh, contact(remote_contact(mesh, f"p{n}@example.com"), f"p{n}@example.com", t0, first_name=f"P{n}"))]
    await mesh.settle()
    # Every lead changes on the platform: each needs a contact push.
    for r in results:
        await mesh.scoring.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id=r.lead_id, fields_json=json.dumps({"attributes": {"company": f"Co {r.lead_id}"}}), merge=True,
            source="api"), timeout=5)
    spans.clear()
    before = mesh.emulator.get("/_emulator/stats")["writes"]
    await mesh.settle()
    assert mesh.emulator.get("/_emulator/stats")["writes"] - before >= 12
    statements = _crm_statements(spans)
    assert statements.count("UPDATE crm_sync_leads") == 0, statements  # no update per push
    # The pass's timeline lines in one statement (a multi-row insert: executemany on SQLite, one statement
    # of arrays on PostgreSQL), not one a push: a settle may run a second pass.
    assert len([s for s in statements if s.startswith("INSERT crm_sync_timeline")]) <= 2, statements
    for r in results:
        types = [i.type for i in await mesh.timeline(r.lead_id)]
        assert types.count("contact_pushed") == 2, types  # the first push and this one
        remote = mesh.emulator.get(f"/crm/v3/objects/contacts/{r.crm_id}")
        assert remote["properties"]["company"] == f"Co {r.lead_id}"
