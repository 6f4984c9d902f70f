"""Kill -9 crm_sync again and again while the CRM calls it and lead activity makes it push: every
acknowledged inbound upsert is persisted once, and every outbound push reaches the CRM emulator once.

Real processes on free ports: Redis (the session's server), scoring, the CRM emulator and crm_sync
(real clock, so its bus consumer and push loop run on their own). The CRM side retries every call
until it is acknowledged, as a CRM's middleware does; only crm_sync is killed."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel
from tests.helpers.processes import spawn_service, wait_serving
from tests.integration.crm_sync.conftest import AUTH, TOKEN, Emulator

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
CONTACTS = 60        # born in the CRM; every 6th has no email (matched by CRM id only)
PLATFORM = 16        # born on the platform: crm_sync creates them in the CRM; every 4th has no email
KILLS = 4
# Real clock. CRM modification times a little ahead of every platform change the test makes (a CRM
# clock a few minutes fast), within the skew crm_sync allows (it refuses times far ahead of its clock).
T0 = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)


def spawn(service: str, settings: Settings, port: int) -> subprocess.Popen[bytes]:
    return spawn_service(service, settings.with_overrides(grpc_port=port),
                         log=settings.data_dir.parent / f"{service}.log")


async def until_acked(call: Any, *, what: str, limit_s: float = 60) -> Any:
    """Call until crm_sync answers (it may be dead or restarting); the CRM cannot know whether a call
    that failed was applied, so it simply sends it again."""
    end = time.monotonic() + limit_s
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                raise
            if time.monotonic() > end:
                raise AssertionError(f"{what}: never acknowledged") from exc
            await asyncio.sleep(0.05)


def contact(n: int, crm_id: str, version: int) -> crm_sync_pb2.Contact:
    c = crm_sync_pb2.Contact(crm_id=crm_id, email="" if n % 6 == 0 else f"c{n}@kill.example",
                             first_name=f"V{version}-{n}", last_name=f"Last{n}",
                             properties_json=json.dumps({"company": f"Co {n}", "jobtitle": f"job {version}"}))
    c.modified_at.FromDatetime(T0 + timedelta(minutes=version))
    return c


def query(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    """Read what the service stored, through the same URL it stores it under (SQLite file or PostgreSQL)."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


@pytest.mark.timeout(240)  # restarts cost seconds each on a loaded machine; unloaded it takes ~30 s
async def test_kill_crm_sync_under_load_exactly_once(settings: Settings, tmp_path: Path) -> None:
    emu = Emulator(tmp_path / "crm")
    emu.start()
    scoring_port, crm_port = free_port(), free_port()
    cfg = settings.with_overrides(clock="real", log_level="WARNING", crm_url=emu.url,
                                  scoring_addr=f"127.0.0.1:{scoring_port}", crm_sync_addr=f"127.0.0.1:{crm_port}",
                                  journeys_addr=f"127.0.0.1:{free_port()}", crm_tokens={"kill-crm": TOKEN})
    scoring_proc = spawn("scoring", cfg, scoring_port)
    crm_proc = spawn("crm_sync", cfg, crm_port)
    crm_db = sa.create_engine(cfg.database_url_for("crm_sync"))
    scoring_db = sa.create_engine(cfg.database_url_for("scoring"))
    rng = random.Random(5)
    kills = 0
    done = asyncio.Event()
    try:
        await wait_serving(cfg.scoring_addr)
        await wait_serving(cfg.crm_sync_addr)
        # The CRM already holds its contacts: their ids are what it sends.
        crm_ids = [str(emu.post("/crm/v3/objects/contacts", {"properties": (
            {} if n % 6 == 0 else {"email": f"c{n}@kill.example"})})["id"]) for n in range(CONTACTS)]
        # A CRM that takes a while to answer: crm_sync records a batch of pushes after its slowest one,
        # so most kills land while some pushes are made in the CRM but not yet recorded here.
        emu.fault(mode="slow", delay=0.2)
        s_ch = mesh_channel(cfg.scoring_addr)
        c_ch = mesh_channel(cfg.crm_sync_addr)
        scoring = scoring_pb2_grpc.ScoringStub(s_ch)
        crm = crm_sync_pb2_grpc.CrmSyncStub(c_ch)
        sales = crm_sync_pb2_grpc.SalesOpsStub(c_ch)
        acked: dict[str, dict[int, crm_sync_pb2.ContactResult]] = {i: {} for i in crm_ids}
        tasks_acked: dict[str, str] = {}
        activities: set[str] = set()

        async def killer() -> None:
            nonlocal crm_proc, kills
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.4, 1.6))
                crm_proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(crm_proc.wait)
                kills += 1
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                crm_proc = spawn("crm_sync", cfg, crm_port)
                await wait_serving(cfg.crm_sync_addr)
            done.set()

        async def upserts(version: int, lane: int) -> None:
            for start in range(lane * 5, CONTACTS, 5 * 4):
                batch = [contact(n, crm_ids[n], version) for n in range(start, min(start + 5, CONTACTS))]
                pending = list(batch)
                while pending:
                    reply = await until_acked(lambda p=pending: crm.UpsertContacts(
                        crm_sync_pb2.UpsertContactsRequest(contacts=p), metadata=AUTH, timeout=5), what="upsert")
                    retry = []
                    for c, r in zip(pending, reply.results, strict=True):
                        assert r.status != "error" or r.error_code == "unavailable", r
                        if r.status == "error":
                            retry.append(c)
                        else:
                            acked[c.crm_id][version] = r
                    pending = retry
                    await asyncio.sleep(0.01)

        async def activity(n: int) -> None:
            """What the lead does and what sales asks: a score change (a contact push), a bottom-funnel
            visit (a sales alert task, pushed with its note), a sales call fed back, a journey's task."""
            lead_id = acked[crm_ids[n]][1].lead_id
            category = "bottom_funnel" if n % 3 == 0 else "pricing"
            reply = await scoring.IngestEvents(scoring_pb2.IngestRequest(events=[scoring_pb2.Event(
                lead_id=lead_id, type="page_viewed", idempotency_key=f"kill:{n}",
                properties_json=json.dumps({"category": category}))]), timeout=10)
            assert not reply.results[0].error_code, reply
            if n % 4 == 0:
                act = crm_sync_pb2.Activity(activity_id=f"call-{n}", crm_id=crm_ids[n], kind="call",
                                            outcome="connected")
                act.modified_at.FromDatetime(T0 + timedelta(minutes=5))
                r = await until_acked(lambda: crm.RecordActivity(crm_sync_pb2.RecordActivityRequest(activity=act),
                                                                 metadata=AUTH, timeout=5), what="activity")
                assert r.status in ("recorded", "duplicate"), r
                activities.add(act.activity_id)
            if n % 5 == 0:
                req = crm_sync_pb2.TaskRequest(dedupe_key=f"journey:{n}", lead_id=lead_id, kind="consultation",
                                               title=f"Consultation {n}", priority="normal")
                t = await until_acked(lambda: sales.RequestTask(req, timeout=5), what="task")
                assert tasks_acked.setdefault(req.dedupe_key, t.task_id) == t.task_id  # a retry: the same task
        async def platform_leads() -> list[str]:
            ids = []
            for p in range(PLATFORM):
                fields = {"first_name": f"P{p}", "attributes": {"company": f"Plat {p}"}}
                if p % 4:
                    fields["email"] = f"p{p}@kill.example"
                reply = await scoring.UpsertLead(scoring_pb2.UpsertLeadRequest(
                    fields_json=json.dumps(fields), source="api"), timeout=10)
                ids.append(reply.lead.id)
                await asyncio.sleep(rng.uniform(0, 0.05))
            return ids

        async def drive() -> list[str]:
            await asyncio.gather(*(upserts(1, lane) for lane in range(4)))
            made = asyncio.create_task(platform_leads())
            acts = [activity(n) for n in range(CONTACTS)]
            await asyncio.gather(*acts, *(upserts(2, lane) for lane in range(4)))
            return await made

        kill_task = asyncio.create_task(killer())
        platform = await drive()
        await kill_task
        assert kills == KILLS
        emu.fault(mode="ok")

        # Quiet: everything queued has been pushed and every lead's latest score reached the CRM.
        leads = {r.id: r for r in (await scoring.GetLeads(scoring_pb2.GetLeadsRequest(
            ids=[acked[i][1].lead_id for i in crm_ids] + platform), timeout=10)).leads}
        deadline = time.monotonic() + 60
        while True:
            open_jobs = query(crm_db, "select count(*) from crm_sync_outbox where status in ('pending', 'running')")
            remote = emu.get("/crm/v3/objects/contacts?limit=1000")["results"]
            linked = dict(query(crm_db, "select crm_id, lead_id from crm_sync_leads where crm_id is not null"))
            scores = {linked.get(c["id"]): c["properties"].get("nurture_score") for c in remote}
            if open_jobs[0][0] == 0 and all(scores.get(i) == str(r.score) for i, r in leads.items()):
                break
            assert time.monotonic() < deadline, f"not settled: {open_jobs} open jobs, {len(remote)} contacts"
            await asyncio.sleep(0.2)
        await s_ch.close()
        await c_ch.close()
    finally:
        for proc in (crm_proc, scoring_proc):
            # Killed, not stopped: what is on disk after a kill is what this test is about, and the
            # checks below read it (a graceful stop would only add seconds).
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        emu_stats = emu.get("/_emulator/stats") if emu.proc else {}
        tasks_remote = emu.get("/crm/v3/objects/tasks?limit=1000")["results"] if emu.proc else []
        notes_remote = emu.get("/crm/v3/objects/notes?limit=1000")["results"] if emu.proc else []
        emu.stop()

    # Inbound: one lead per CRM contact, in scoring and in crm_sync, with the last acknowledged version.
    assert all(set(v) == {1, 2} for v in acked.values())
    for crm_id, by_version in acked.items():
        assert by_version[1].lead_id == by_version[2].lead_id, crm_id   # matched, never a second lead
    rows = query(scoring_db, "select id, crm_id, first_name from scoring_leads")
    assert len(rows) == CONTACTS + PLATFORM, "a retried upsert created a second lead"
    by_crm_id = {r[1]: r for r in rows if r[1]}
    for n, crm_id in enumerate(crm_ids):
        lead_id, _, first_name = by_crm_id[crm_id]
        assert lead_id == acked[crm_id][2].lead_id and first_name == f"V2-{n}"
    links = query(crm_db, "select crm_id, lead_id from crm_sync_leads where crm_id is not null")
    assert len(links) == len({c for c, _ in links}) == CONTACTS + PLATFORM
    assert {c: lead for c, lead in links if c in acked} == {c: acked[c][2].lead_id for c in crm_ids}
    # Each acknowledged activity fed back to scoring once.
    fed = Counter(json.loads(r[0])["activity_id"] for r in query(
        scoring_db, "select properties from scoring_events where type = 'sales_activity'"))
    assert set(fed) == activities and set(fed.values()) == {1}

    # Outbound: one CRM contact per lead (none doubled by a replayed create), each with its latest score.
    remote_by_lead: dict[str, list[dict[str, Any]]] = {}
    link = {c: lead for c, lead in links}
    for c in remote:
        remote_by_lead.setdefault(link.get(c["id"], f"unlinked:{c['id']}"), []).append(c)
    assert len(remote) == CONTACTS + PLATFORM, sorted(remote_by_lead)
    assert set(remote_by_lead) == set(leads), "a contact in the CRM no lead is linked to"
    for lead_id, lead in leads.items():
        [only] = remote_by_lead[lead_id]
        assert only["properties"]["nurture_score"] == str(lead.score), lead_id
    # One CRM task (and one note) per task crm_sync decided on; the journey's tasks among them.
    ours = query(crm_db, "select id, status, remote_id, document from crm_sync_tasks")
    assert {status for _, status, _, _ in ours} == {"pushed"}
    assert set(tasks_acked.values()) <= {t for t, _, _, _ in ours}
    remote_tasks = Counter(t["properties"]["nurture_task_id"] for t in tasks_remote)
    assert remote_tasks == Counter(t for t, _, _, _ in ours), "a task missing or doubled in the CRM"
    assert {r for _, _, r, _ in ours} == {t["id"] for t in tasks_remote}
    remote_notes = Counter(n["properties"]["nurture_task_id"] for n in notes_remote)
    assert remote_notes == Counter(t for t, _, _, doc in ours if doc), "a note missing or doubled in the CRM"
    assert len(ours) >= CONTACTS // 3
    dead = query(crm_db, "select op, last_error from crm_sync_outbox where status = 'dead'")
    assert not dead, dead
    crm_db.dispose()
    scoring_db.dispose()
    print(f"crm_sync kill test: {kills} kills, {len(remote)} contacts, {len(ours)} tasks, "
          f"emulator writes {emu_stats.get('writes')}")
