"""Two crm_sync replicas take two versions of one CRM contact at the same moment (a CRM delivers its
webhooks concurrently and out of order): the newer modification wins in scoring's lead and in
crm_sync's row, whichever replica takes which version and whichever arrives first; the older answers
`stale` (or `updated`, when it was applied before the newer one arrived). Each replica calls its own
scoring replica, so the only meeting point is the database.

Replicas run on PostgreSQL only (`nurture up --replicas` refuses SQLite), so this skips on SQLite."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
import redis
import redis.asyncio as aioredis
import sqlalchemy as sa

from nurture.api.common.v1 import common_pb2, common_pb2_grpc
from nurture.api.crm_sync.v1 import crm_sync_pb2, crm_sync_pb2_grpc
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.clock import VirtualClock
from nurture.service import Running
from nurture.settings import Settings
from tests.conftest import free_port, mesh_channel, start_service
from tests.integration.crm_sync.conftest import AUTH, TOKEN, Emulator

pytestmark = pytest.mark.anyio

ROUNDS = 24


@dataclass
class Replicas:
    settings: Settings
    crm: list[crm_sync_pb2_grpc.CrmSyncStub]
    scoring: scoring_pb2_grpc.ScoringStub
    clock: VirtualClock
    admins: list[common_pb2_grpc.AdminStub]   # both scorings', then both crm_syncs'

    async def settle(self, rounds: int = 20) -> None:
        """Settle every replica (under the virtual clock only Settle consumes the bus) until none has work."""
        for _ in range(rounds):
            done = [await a.Settle(common_pb2.SettleRequest(), timeout=30) for a in self.admins]
            if all(d.work_done == 0 for d in done):
                return


@pytest.fixture
async def replicas(settings: Settings, emulator: Emulator) -> AsyncIterator[Replicas]:
    if not settings.database_url:
        pytest.skip("replicas share one PostgreSQL database (NURTURE_TEST_DATABASE_URL); SQLite runs one process")
    running: list[Running] = []
    channels = []
    try:
        for _ in range(2):
            running.append(await start_service("scoring", settings))
        crm_settings = [settings.with_overrides(crm_url=emulator.url, scoring_addr=s.address,
                                                journeys_addr=f"127.0.0.1:{free_port()}",
                                                crm_tokens={"test-crm": TOKEN}) for s in running[:2]]
        for s in crm_settings:
            running.append(await start_service("crm_sync", s))
        channels = [mesh_channel(r.address) for r in running]
        yield Replicas(settings=crm_settings[0], crm=[crm_sync_pb2_grpc.CrmSyncStub(c) for c in channels[2:]],
                       scoring=scoring_pb2_grpc.ScoringStub(channels[0]),
                       clock=VirtualClock(redis.Redis.from_url(settings.redis_url)),
                       admins=[common_pb2_grpc.AdminStub(c) for c in channels])
    finally:
        for c in channels:
            await c.close()
        for r in reversed(running):
            await asyncio.wait_for(r.stop(grace=0.5), 10)


def contact(crm_id: str, at: datetime, first_name: str, company: str, **props: str) -> crm_sync_pb2.Contact:
    c = crm_sync_pb2.Contact(crm_id=crm_id, email="ana@example.com", first_name=first_name,
                             properties_json=json.dumps({"company": company, **props}))
    c.modified_at.FromDatetime(at)
    return c


async def upsert(stub: crm_sync_pb2_grpc.CrmSyncStub, c: crm_sync_pb2.Contact) -> crm_sync_pb2.ContactResult:
    reply = await stub.UpsertContacts(crm_sync_pb2.UpsertContactsRequest(contacts=[c]), metadata=AUTH, timeout=30)
    [result] = reply.results
    return result


async def test_the_newer_of_two_concurrent_versions_wins_across_replicas(replicas: Replicas) -> None:
    t0 = replicas.clock.now() - timedelta(days=1)
    first = await upsert(replicas.crm[0], contact("c-1", t0, "First", "first"))
    assert first.status == "created", first
    lead_id = first.lead_id
    engine = sa.create_engine(replicas.settings.database_url_for("crm_sync"))
    outcomes: dict[str, int] = {}
    try:
        for n in range(1, ROUNDS + 1):
            older_at, newer_at = t0 + timedelta(minutes=2 * n), t0 + timedelta(minutes=2 * n + 1)
            older = contact("c-1", older_at, f"Old{n}", f"old-{n}")
            newer = contact("c-1", newer_at, f"New{n}", f"new-{n}")
            # Each version to each replica, each sent first, in turn.
            old_stub, new_stub = replicas.crm[n % 2], replicas.crm[1 - n % 2]
            if (n // 2) % 2:
                old_r, new_r = await asyncio.gather(upsert(old_stub, older), upsert(new_stub, newer))
            else:
                new_r, old_r = await asyncio.gather(upsert(new_stub, newer), upsert(old_stub, older))
            assert new_r.status == "updated", (n, new_r)
            assert old_r.status in ("stale", "updated"), (n, old_r)
            outcomes[old_r.status] = outcomes.get(old_r.status, 0) + 1
            lead = await replicas.scoring.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)
            assert (lead.first_name, json.loads(lead.attributes_json).get("company")) == (f"New{n}", f"new-{n}"), n
            with engine.connect() as conn:
                row = conn.execute(sa.text("SELECT contact_modified_at FROM crm_sync_leads WHERE lead_id = :l"),
                                   {"l": lead_id}).one()
            assert row.contact_modified_at == newer_at, n
    finally:
        engine.dispose()
    # Sent at the same moment, the two meet: most rounds, the older one comes second.
    # Sent at the same moment, the two meet: when the newer is sent first, the older comes second.
    assert outcomes.get("stale", 0) >= ROUNDS // 4, outcomes


async def test_a_value_set_back_while_the_change_races_at_another_replica_wins(replicas: Replicas) -> None:
    """X → Y → X, Y and the second X at two replicas at once, after both know the lead shows X (settled):
    the lead ends at X whichever scoring applies first. The replica taking the second X had judged it
    against crm_sync's copy of the lead (X), so it sent nothing; when scoring applied Y first, Y stayed.
    Fields the CRM owns (prefer_crm_unless_blank: company; always_crm: phone) are now always sent, and
    scoring's order by modification time decides."""
    t0 = replicas.clock.now() - timedelta(days=1)
    first = await upsert(replicas.crm[0], contact("c-3", t0, "Ana", "x", phone="1"))
    assert first.status == "created", first
    for n in range(1, ROUNDS // 2 + 1):
        await replicas.settle()
        y = contact("c-3", t0 + timedelta(minutes=2 * n), "Ana", f"y-{n}", phone=f"y{n}")
        x = contact("c-3", t0 + timedelta(minutes=2 * n + 1), "Ana", "x", phone="1")
        y_stub, x_stub = replicas.crm[n % 2], replicas.crm[1 - n % 2]
        if n % 4 < 2:
            y_r, x_r = await asyncio.gather(upsert(y_stub, y), upsert(x_stub, x))
        else:
            x_r, y_r = await asyncio.gather(upsert(x_stub, x), upsert(y_stub, y))
        assert y_r.status in ("updated", "stale") and x_r.status in ("updated", "unchanged"), (n, y_r, x_r)
        lead = await replicas.scoring.GetLead(scoring_pb2.GetLeadRequest(id=first.lead_id), timeout=5)
        attrs = json.loads(lead.attributes_json)
        assert (attrs["company"], attrs["phone"]) == ("x", "1"), n


async def test_a_most_recent_field_set_back_while_the_change_races_at_another_replica_wins(
        replicas: Replicas) -> None:
    """X → Y → X of a `most_recent` field (first_name, jobtitle), Y and the second X at two replicas at
    once. Such a field is sent only when it differs from crm_sync's copy or the CRM's previous value:
    judged at the same time, the second X was judged against X (sent nothing) while Y was sent, and when
    scoring applied Y first the lead kept Y. Now each contact's lease orders the two across replicas:
    the second to be judged reads the first's row."""
    t0 = replicas.clock.now() - timedelta(days=1)
    first = await upsert(replicas.crm[0], contact("c-4", t0, "Xena", "acme", jobtitle="cto"))
    assert first.status == "created", first
    for n in range(1, ROUNDS + 1):
        await replicas.settle()   # both replicas' copy of the lead shows X (the bus brought it)
        y = contact("c-4", t0 + timedelta(minutes=2 * n), f"Y{n}", "acme", jobtitle=f"y-{n}")
        x = contact("c-4", t0 + timedelta(minutes=2 * n + 1), "Xena", "acme", jobtitle="cto")
        y_stub, x_stub = replicas.crm[n % 2], replicas.crm[1 - n % 2]
        if n % 4 < 2:
            y_r, x_r = await asyncio.gather(upsert(y_stub, y), upsert(x_stub, x))
        else:
            x_r, y_r = await asyncio.gather(upsert(x_stub, x), upsert(y_stub, y))
        assert y_r.status in ("updated", "stale") and x_r.status in ("updated", "unchanged"), (n, y_r, x_r)
        lead = await replicas.scoring.GetLead(scoring_pb2.GetLeadRequest(id=first.lead_id), timeout=5)
        assert (lead.first_name, json.loads(lead.attributes_json).get("profession")) == ("Xena", "cto"), n


async def test_a_contact_whose_lease_another_replica_holds_waits_then_goes_on(replicas: Replicas) -> None:
    """A replica handed a contact that another replica is handling (its lease in Redis) waits for the
    lease, trying again alone (the rest of its batches go on), then applies it."""
    t0 = replicas.clock.now() - timedelta(days=1)
    first = await upsert(replicas.crm[0], contact("c-5", t0, "Ana", "acme"))
    client = aioredis.Redis.from_url(replicas.settings.redis_url)
    lease = "nurture:crm_sync:contact:{test-crm:id:c-5}"
    try:
        assert await client.set(lease, "other-replica", nx=True, px=120_000)
        async with client.monitor() as monitor:
            call = asyncio.ensure_future(upsert(replicas.crm[1], contact("c-5", t0 + timedelta(minutes=1),
                                                                          "Bea", "acme")))

            async def tries(wanted: int) -> None:
                seen = 0
                while seen < wanted:
                    command = (await monitor.next_command())["command"]
                    seen += command.startswith(f"SET {lease} ") and " NX " in command

            await asyncio.wait_for(tries(3), 30)   # the replica tried, found it held, tried again
        assert not call.done()
        lead = await replicas.scoring.GetLead(scoring_pb2.GetLeadRequest(id=first.lead_id), timeout=5)
        assert lead.first_name == "Ana"
        await client.delete(lease)   # the other replica is done
        result = await call
        assert result.status == "updated", result
        lead = await replicas.scoring.GetLead(scoring_pb2.GetLeadRequest(id=first.lead_id), timeout=5)
        assert lead.first_name == "Bea"
        assert await client.exists(lease) == 0   # given back
    finally:
        await client.aclose()


async def wait_until(check: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting until {what}")


def waiting(engine: sa.Engine) -> int:
    """How many of the database's sessions wait for a lock."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                        " AND wait_event_type = 'Lock'")).scalar_one())


async def test_an_older_version_applied_first_in_scoring_but_recorded_last_is_stale(replicas: Replicas) -> None:
    """The other interleaving: scoring applies the older version, then the newer (both in order), but
    the older's replica records its row last (its writes queue behind a slow transaction). Its row
    write must find the newer one there, under the row's lock, and answer stale."""
    t0 = replicas.clock.now() - timedelta(days=1)
    first = await upsert(replicas.crm[0], contact("c-2", t0, "First", "first"))
    lead_id = first.lead_id
    scoring_db = sa.create_engine(replicas.settings.database_url_for("scoring"))
    crm_db = sa.create_engine(replicas.settings.database_url_for("crm_sync"))

    def scoring_has(at: datetime) -> bool:
        with scoring_db.connect() as conn:
            stored = conn.execute(sa.text("SELECT source_modified_at FROM scoring_leads WHERE id = :l"),
                                  {"l": lead_id}).scalar_one()
        return bool(stored == at)

    try:
        older = contact("c-2", t0 + timedelta(minutes=1), "Old", "old")
        newer = contact("c-2", t0 + timedelta(minutes=2), "New", "new")
        act = crm_sync_pb2.Activity(activity_id="note-1", crm_id="c-2", kind="note", body="slow write")
        act.modified_at.FromDatetime(t0)
        with crm_db.connect() as blocker:
            # Replica 0's writes wait behind an activity of its own whose insert waits for this lock
            # (reads go on: EXCLUSIVE lets plain SELECTs through).
            blocker.execute(sa.text("LOCK TABLE crm_sync_inbound IN EXCLUSIVE MODE"))
            slow = asyncio.ensure_future(replicas.crm[0].RecordActivity(
                crm_sync_pb2.RecordActivityRequest(activity=act), metadata=AUTH, timeout=30))
            await wait_until(lambda: waiting(crm_db) == 1, "the activity's write waits for the lock")
            old_call = asyncio.ensure_future(upsert(replicas.crm[0], older))
            await wait_until(lambda: scoring_has(t0 + timedelta(minutes=1)), "scoring applied the older version")
            new_r = await upsert(replicas.crm[1], newer)
            assert new_r.status == "updated", new_r
            assert not old_call.done()
            blocker.rollback()
        old_r = await old_call
        assert (await slow).status == "recorded"
        assert old_r.status == "stale", old_r
        lead = await replicas.scoring.GetLead(scoring_pb2.GetLeadRequest(id=lead_id), timeout=5)
        assert lead.first_name == "New" and json.loads(lead.attributes_json)["company"] == "new"
        with crm_db.connect() as conn:
            row = conn.execute(sa.text("SELECT contact_modified_at, fields FROM crm_sync_leads WHERE lead_id = :l"),
                               {"l": lead_id}).one()
            notes = conn.execute(sa.text("SELECT type FROM crm_sync_timeline WHERE lead_id = :l"),
                                 {"l": lead_id}).scalars().all()
        assert row.contact_modified_at == t0 + timedelta(minutes=2)
        assert json.loads(row.fields)["first_name"]["crm_value"] == "New"
        assert "contact_stale" in notes
    finally:
        scoring_db.dispose()
        crm_db.dispose()


async def test_the_first_delivery_of_a_new_contact_at_two_replicas_makes_one_lead(replicas: Replicas) -> None:
    """No lead yet: scoring matches both by email, and takes them in turn (the address is locked before
    the match), so the second finds the first's lead; the newer version wins as above."""
    t0 = replicas.clock.now() - timedelta(days=1)
    crm_db = sa.create_engine(replicas.settings.database_url_for("crm_sync"))
    scoring_db = sa.create_engine(replicas.settings.database_url_for("scoring"))
    try:
        for n in range(10):
            older = crm_sync_pb2.Contact(crm_id=f"n-{n}", email=f"New{n}@example.com", first_name="Older")
            older.modified_at.FromDatetime(t0)
            newer = crm_sync_pb2.Contact(crm_id=f"n-{n}", email=f"new{n}@example.com", first_name="Newer")
            newer.modified_at.FromDatetime(t0 + timedelta(minutes=1))
            old_stub, new_stub = replicas.crm[n % 2], replicas.crm[1 - n % 2]
            if n % 4 < 2:
                old_r, new_r = await asyncio.gather(upsert(old_stub, older), upsert(new_stub, newer))
            else:
                new_r, old_r = await asyncio.gather(upsert(new_stub, newer), upsert(old_stub, older))
            assert new_r.status in ("created", "updated") and old_r.status in ("created", "updated", "stale"), \
                (n, old_r, new_r)
            assert old_r.lead_id == new_r.lead_id, n
            with scoring_db.connect() as conn:
                leads = conn.execute(sa.text("SELECT id, first_name FROM scoring_leads WHERE lower(email) = :e"),
                                     {"e": f"new{n}@example.com"}).all()
            with crm_db.connect() as conn:
                row = conn.execute(sa.text("SELECT lead_id, contact_modified_at FROM crm_sync_leads"
                                           " WHERE crm_id = :c"), {"c": f"n-{n}"}).one()
            assert [tuple(x) for x in leads] == [(new_r.lead_id, "Newer")], n
            assert (row.lead_id, row.contact_modified_at) == (new_r.lead_id, t0 + timedelta(minutes=1)), n
    finally:
        crm_db.dispose()
        scoring_db.dispose()


async def deal_at(stub: crm_sync_pb2_grpc.CrmSyncStub, crm_id: str, deal_id: str, stage: str,
                  at: datetime) -> crm_sync_pb2.InboundReply:
    d = crm_sync_pb2.Deal(deal_id=deal_id, crm_id=crm_id, stage=stage, amount=1000)
    d.modified_at.FromDatetime(at)
    reply: crm_sync_pb2.InboundReply = await stub.ReportDeal(crm_sync_pb2.ReportDealRequest(deal=d), metadata=AUTH,
                                                             timeout=30)
    return reply


async def test_two_versions_of_one_deal_at_two_replicas_are_judged_in_turn(replicas: Replicas) -> None:
    """A deal's versions delivered at the same moment to two replicas: the record ends at the newer, and
    a version found older than the one recorded is stale before it reaches scoring (no event of it),
    whichever replica takes which and whichever is sent first. Before, each replica judged staleness
    alone: both sent their events, and the older could be recorded last."""
    t0 = replicas.clock.now() - timedelta(days=1)
    first = await upsert(replicas.crm[0], contact("c-9", t0, "Dee", "deals"))
    lead_id = first.lead_id
    crm_db = sa.create_engine(replicas.settings.database_url_for("crm_sync"))
    scoring_db = sa.create_engine(replicas.settings.database_url_for("scoring"))
    outcomes: dict[str, int] = {}
    try:
        for n in range(ROUNDS):
            deal_id = f"d-{n}"
            assert (await deal_at(replicas.crm[n % 2], "c-9", deal_id, "appointment", t0)).status == "recorded"
            older_at, newer_at = t0 + timedelta(minutes=1), t0 + timedelta(minutes=2)
            old_stub, new_stub = replicas.crm[n % 2], replicas.crm[1 - n % 2]
            if (n // 2) % 2:
                old_r, new_r = await asyncio.gather(deal_at(old_stub, "c-9", deal_id, "qualified", older_at),
                                                    deal_at(new_stub, "c-9", deal_id, "negotiation", newer_at))
            else:
                new_r, old_r = await asyncio.gather(deal_at(new_stub, "c-9", deal_id, "negotiation", newer_at),
                                                    deal_at(old_stub, "c-9", deal_id, "qualified", older_at))
            assert new_r.status == "updated", (n, new_r)
            assert old_r.status in ("stale", "updated"), (n, old_r)
            outcomes[old_r.status] = outcomes.get(old_r.status, 0) + 1
            with crm_db.connect() as conn:
                row = conn.execute(sa.text("SELECT modified_at, state FROM crm_sync_inbound"
                                           " WHERE kind = 'deal' AND object_id = :d"), {"d": deal_id}).one()
            assert (row.modified_at, row.state) == (newer_at, "negotiation"), n
            with scoring_db.connect() as conn:
                keys = set(conn.execute(sa.text("SELECT idempotency_key FROM scoring_events WHERE lead_id = :l"
                                                " AND idempotency_key LIKE :k"),
                                        {"l": lead_id, "k": f"crm:test-crm:deal:{deal_id}:%"}).scalars())
            stages = {k.split(":")[4] for k in keys}
            # The newer's event always; the older's only when it was judged first (then it came first).
            assert stages == ({"appointment", "negotiation"} if old_r.status == "stale"
                              else {"appointment", "qualified", "negotiation"}), (n, old_r.status, stages)
    finally:
        crm_db.dispose()
        scoring_db.dispose()
    assert outcomes.get("stale", 0) >= ROUNDS // 4, outcomes


async def test_an_email_only_contacts_newer_version_wins_across_replicas(replicas: Replicas) -> None:
    """A CRM that sends contacts by address alone (no CRM id) names no contact record, so nothing ordered
    two versions of one at two replicas: the older, applied last, was kept. Now its address names the
    record (a digest of it), and scoring judges as for a CRM id."""
    t0 = replicas.clock.now() - timedelta(days=1)

    def by_email(at: datetime, first_name: str) -> crm_sync_pb2.Contact:
        c = crm_sync_pb2.Contact(email="Bo@Example.com", first_name=first_name)
        c.modified_at.FromDatetime(at)
        return c

    first = await upsert(replicas.crm[0], by_email(t0, "First"))
    assert first.status == "created", first
    outcomes: dict[str, int] = {}
    for n in range(1, ROUNDS + 1):
        older, newer = by_email(t0 + timedelta(minutes=2 * n), f"Old{n}"), by_email(t0 + timedelta(minutes=2 * n + 1),
                                                                                     f"New{n}")
        old_stub, new_stub = replicas.crm[n % 2], replicas.crm[1 - n % 2]
        if (n // 2) % 2:
            old_r, new_r = await asyncio.gather(upsert(old_stub, older), upsert(new_stub, newer))
        else:
            new_r, old_r = await asyncio.gather(upsert(new_stub, newer), upsert(old_stub, older))
        assert new_r.status == "updated" and new_r.lead_id == first.lead_id, (n, new_r)
        assert old_r.status in ("stale", "updated"), (n, old_r)
        outcomes[old_r.status] = outcomes.get(old_r.status, 0) + 1
        lead = await replicas.scoring.GetLead(scoring_pb2.GetLeadRequest(id=first.lead_id), timeout=5)
        assert lead.first_name == f"New{n}", (n, lead.first_name, old_r.status)
    assert outcomes.get("stale", 0) >= ROUNDS // 4, outcomes
