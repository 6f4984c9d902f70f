"""The SQL-side work of one inbound CRM contact, in one process: CPU per contact of each step and SQL
statements per contact, SQLite.

    .venv/bin/python bench/crm_sql.py [--batches 60]

`bench/crm.py` measures the whole mesh, whose figures a loaded machine scatters (its batches shrink as
its rates fall). This runs the same code on the single-contact path's batch size (14 contacts, what one
inbound batch gathers under 32 callers) without gRPC, Redis or the CRM: scoring's `upsert_leads`,
crm_sync's inbound group commit, its bus consumer's transaction for the `lead_created` messages, and a
push pass less its HTTP call (claim, read, properties, record). CPU is `time.process_time` (every thread
of this process); statements are SQLite's own (an executemany counts each row).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import Engine, event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nurture.api.scoring.v1 import scoring_pb2_grpc  # noqa: E402
from nurture.busmessage import BusMessage  # noqa: E402
from nurture.clock import FixedClock  # noqa: E402
from nurture.db import DriverWrites, open_database  # noqa: E402
from nurture.settings import load_settings  # noqa: E402
from services.crm_sync import domain  # noqa: E402
from services.crm_sync import storage as st  # noqa: E402
from services.crm_sync.app.contacts import ContactIn, ContactWrite  # noqa: E402
from services.crm_sync.app.core import CrmSyncCore  # noqa: E402
from services.crm_sync.app.outbound import ContactPushed, Outcome  # noqa: E402
from services.crm_sync.clients import JourneysLookup  # noqa: E402
from services.crm_sync.connector import HubSpotConnector  # noqa: E402
from services.crm_sync.server import MIGRATIONS as CRM_MIGRATIONS  # noqa: E402
from services.scoring.app.core import ScoringCore  # noqa: E402
from services.scoring.domain.records import LeadUpsert  # noqa: E402
from services.scoring.domain.rules import load_model  # noqa: E402
from services.scoring.server import MIGRATIONS as SCORING_MIGRATIONS  # noqa: E402

NOW = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
BATCH = 14
WARMUP = 3
STATEMENTS: Counter[str] = Counter()


@event.listens_for(Engine, "connect")
def _count_statements(dbapi_conn: Any, _record: Any) -> None:
    def seen(sql: str) -> None:
        service = "scoring" if "scoring_" in sql else "crm_sync" if "crm_sync_" in sql else "transaction"
        STATEMENTS[f"{service} {sql.split()[0].upper()}"] += 1

    dbapi_conn.set_trace_callback(seen)


async def run(batches: int) -> dict[str, Any]:
    settings = load_settings(environ={}, data_dir=Path(tempfile.mkdtemp(prefix="crm-sql-")),
                             redis_url="redis://127.0.0.1:1/0", clock="virtual", database_url=None, grpc_port=0,
                             secret="bench", mesh_token="bench")
    db = open_database(settings, service="crm_sync", migrations_dir=CRM_MIGRATIONS)
    sdb = open_database(settings, service="scoring", migrations_dir=SCORING_MIGRATIONS)
    scoring = ScoringCore(sdb.session, load_model(), DriverWrites(sdb.engine))
    channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never called on these paths
    connector = HubSpotConnector("http://127.0.0.1:9")
    core = CrmSyncCore(db=db, clock=FixedClock(NOW), cfg=domain.load_config(), connector=connector,
                       scoring=scoring_pb2_grpc.ScoringStub(channel), journeys=JourneysLookup(None),
                       crm_name="bench", virtual=True)
    cpu: Counter[str] = Counter()
    contacts_done = 0
    for b in range(batches + WARMUP):
        if b == WARMUP:
            STATEMENTS.clear()
        contacts = [ContactIn(crm_id=str(10_000 + b * BATCH + i), email=f"a{b}_{i}@bench.example",
                              first_name=f"First{i}", last_name=f"Last{i}",
                              properties={"company": f"Co {i}", "jobtitle": "engineer"}, modified_at=NOW, lead_id="")
                    for i in range(BATCH)]
        t0 = time.process_time()
        merged = [domain.merge_inbound(core.cfg, {"email": c.email, "firstname": c.first_name,
                                                  "lastname": c.last_name, **c.properties}, c.modified_at, None, {})
                  for c in contacts]
        upserted = await sdb.run(scoring.upsert_leads, [
            LeadUpsert("", {**m.fields, "crm_id": c.crm_id}, True, "crm:bench", False)
            for c, m in zip(contacts, merged, strict=True)], NOW)
        snapshots = [out[0] for out in upserted if not isinstance(out, Exception)]
        t1 = time.process_time()
        writes = [ContactWrite(crm="bench", c=c, lead={"id": snap.id, "email": snap.email}, digest="0" * 32,
                               merged=m, status="created", now=NOW)
                  for c, snap, m in zip(contacts, snapshots, merged, strict=True)]
        await core.writer.submit(lambda s, w=writes: core._write_contacts(s, entries=w, stale=[]))
        t2 = time.process_time()
        await core.handle_messages([BusMessage(
            id=f"lead_created:{snap.id}:1", lead_id=snap.id, type="lead_created",
            properties={"changed": ["email"], "source": "crm:bench"}, occurred_at=NOW.isoformat(), lead=snap)
            for snap in snapshots])
        t3 = time.process_time()
        jobs = await core.sql(lambda s: core._claim(s, NOW, 400))
        rows = await core.read(lambda s, j=jobs: st.get_leads(s, [x.lead_id for x in j]))
        results = []
        for job in jobs:
            row = rows[job.lead_id]
            computed = domain.computed_values(core.cfg, row.snapshot, row.journeys, owner=row.owner,
                                              converted_at=row.converted_at)
            props = domain.outbound_properties(core.cfg, row.snapshot, row.fields, computed, contact_exists=True)
            pushed = ContactPushed(job.lead_id, row.crm_id or "", domain.props_hash(props), {}, sorted(props))
            results.append((job, Outcome("done", contact=pushed)))
        await core._record_pass(results, claim_next=0)
        t4 = time.process_time()
        if b >= WARMUP:
            contacts_done += BATCH
            cpu["scoring_upsert"] += t1 - t0
            cpu["crm_sync_inbound_write"] += t2 - t1
            cpu["crm_sync_bus_consumer"] += t3 - t2
            cpu["crm_sync_push_pass"] += t4 - t3
    await connector.close()
    await channel.close()
    db.close()
    sdb.close()
    per = {k: round(v / contacts_done * 1000, 3) for k, v in cpu.items()}
    per["crm_sync_total"] = round(sum(v for k, v in per.items() if k.startswith("crm_sync")), 3)
    return {"contacts": contacts_done, "cpu_ms_per_contact": per,
            "statements_per_contact": {k: round(v / contacts_done, 2) for k, v in sorted(STATEMENTS.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--batches", type=int, default=60)
    result = asyncio.run(run(parser.parse_args().batches))
    for name, value in result.items():
        print(f"{name:24s} {value}")


if __name__ == "__main__":
    main()
