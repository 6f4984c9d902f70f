"""The chaos run (issue #18): a mesh with 2 replicas of every service on PostgreSQL and a Redis Cluster of
3 masters with a replica each, under a load of leads and events with timed journey steps in virtual time,
while seeded random service replicas are SIGKILLed at random moments and one Redis master fails over.
Afterwards the record is checked and the counts printed (then one JSON line with all):

- accepted events lost: a 202'd event id missing from scoring's record, or not handled by a consumer
  (journeys_processed and messaging_inbox in SQL; analytics_facts for the events that moved the score, the
  only ones it keeps a fact of; crm_sync keeps no per-message record, so its consumer group on the bus
  must have nothing pending and nothing undelivered);
- duplicate sends: mail the SMTP sink stored beyond messaging's sent messages, plus replays of one
  Message-ID the sink dropped (`duplicates.log`: a receiver without that check would have shown them);
- lost timers: enrolments still active with a step due before the final virtual time (after the last
  settle every due step has run);
- per-lead order: a lead whose accepted events the bus holds other than in the order posted (the bus is
  what every consumer reads, in order); and accepted events missing on the bus (a failover lost them: a
  consumer that had not read them yet never will).

    nice -n 10 .venv/bin/python bench/chaos.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/x \
        [--seed 7] [--leads 40] [--events 6] [--kills 12] [--failover graceful|crash|none]

The Redis failover: `graceful` runs `CLUSTER FAILOVER` on a master's replica (the replica catches up with
its master's replication offset before taking over: nothing acknowledged is lost); `crash` stops the
master (SIGSTOP) until its replica is elected, then SIGKILLs it (the supervisor restarts it as a replica
of the new master): replication is asynchronous, so writes the master acknowledged and had not yet
passed on are lost, but on one machine the replica's socket already holds everything the master has
acknowledged, so nothing is; `lossy` makes the window a network or machine failure would: the replica is
stopped (SIGSTOP) for LAG_S while the master acknowledges writes alone, then the master is SIGKILLed, the
replica continued and made master (`CLUSTER FAILOVER TAKEOVER`) without what it missed. The counts say
what each cost (docs/ARCHITECTURE.md, "Redis failover").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.cluster
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._mesh import Mesh, fresh_database, mesh_children, private_mesh  # noqa: E402
from nurture import busmessage  # noqa: E402
from nurture.settings import Settings  # noqa: E402

SERVICES = ("scoring", "journeys", "messaging", "crm_sync", "analytics")
CONSUMERS = ("journeys", "messaging", "crm_sync", "analytics")
DAY = 86400
# Virtual time moved during and after the load: under the 7 days journeys keeps processed bus ids for
# (PROCESSED_KEEP), so the record of what journeys handled is whole when it is read.
ADVANCE_S = 6 * 3600
LAG_S = 3.0  # how long the `lossy` failover's replica stops reading its master's writes (--lag)
FINAL_DAYS = 4


@dataclass
class Run:
    seed: int
    accepted: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # lead -> event ids, posted order
    refused: int = 0  # posts that got no 202 (a killed replica mid-call): never accepted, not counted as lost
    kills: list[str] = field(default_factory=list)
    failover: str = ""
    started: float = field(default_factory=time.monotonic)


def _cluster(mesh: Mesh) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster.from_url(mesh.env["NURTURE_REDIS_URL"], decode_responses=True)


def _node(mesh: Mesh, port: int) -> redis.Redis:
    password = redis.connection.parse_url(mesh.env["NURTURE_REDIS_URL"]).get("password")
    return redis.Redis(host="127.0.0.1", port=port, password=password, decode_responses=True, socket_timeout=5)


def fail_over(mesh: Mesh, rng: random.Random, mode: str, lag_s: float = LAG_S) -> str:
    """One Redis master's slots move to its replica: `graceful` (CLUSTER FAILOVER) or `crash` (the master
    stopped until its replica is elected, then SIGKILLed). Returns what was done."""
    first = int(mesh.env["NURTURE_REDIS_URL"].rpartition(":")[2].split("/")[0])
    lines = str(_node(mesh, first).execute_command("CLUSTER", "NODES"))  # two words: no reply parser, the text
    nodes = [line.split() for line in lines.splitlines() if line.strip()]
    masters = sorted((n for n in nodes if "master" in n[2] and "fail" not in n[2]), key=lambda n: n[1])
    master = rng.choice(masters)
    replica = next(n for n in nodes if n[3] == master[0])
    master_port = int(master[1].split("@")[0].rpartition(":")[2])
    replica_port = int(replica[1].split("@")[0].rpartition(":")[2])
    node = _node(mesh, replica_port)
    started = time.monotonic()
    pid = mesh_children(mesh).get(f"redis:{master_port}", 0) if mode != "graceful" else 0
    if mode != "graceful" and not pid:  # never os.kill(0, ...): that is this whole process group
        return f"{mode}: no process found for master {master_port}"
    if mode == "graceful":
        node.execute_command("CLUSTER", "FAILOVER")
    elif mode == "crash":
        os.kill(pid, signal.SIGSTOP)
    else:  # lossy: the replica is cut off (stopped, its link closed), the master acknowledges writes alone, dies
        replica_pid = mesh_children(mesh).get(f"redis:{replica_port}", 0)
        if not replica_pid:
            return f"{mode}: no process found for replica {replica_port}"
        os.kill(replica_pid, signal.SIGSTOP)
        # What the master sent before is in the stopped replica's socket and would still arrive: close the link.
        alone = _node(mesh, master_port)
        alone.execute_command("CLIENT", "KILL", "TYPE", "replica")
        time.sleep(lag_s)
        offset, entries = int(alone.info("replication")["master_repl_offset"]), _bus_entries(mesh, alone)
        os.kill(pid, signal.SIGKILL)
        os.kill(replica_pid, signal.SIGCONT)
        behind = offset - int(node.info("replication").get("slave_repl_offset", offset))
        node.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")  # no master to agree with: take over as is
    try:
        while node.info("replication")["role"] != "master":
            if time.monotonic() - started > 60:
                return f"{mode}: replica {replica_port} of {master_port} was not promoted within 60 s"
            time.sleep(0.1)
    finally:
        if mode == "crash":  # the supervisor restarts it; it rejoins as the new master's replica
            os.kill(pid, signal.SIGKILL)
    if mode == "lossy":
        return (f"lossy: replica {replica_port} stopped {lag_s:.0f} s while master {master_port} took writes alone, "
                f"master killed, replica took over in {time.monotonic() - started:.1f} s, "
                f"{behind} bytes of writes behind; bus entries lost: {entries - _bus_entries(mesh, node)}")
    return f"{mode}: master {master_port} → replica {replica_port} in {time.monotonic() - started:.1f} s"


def _bus_entries(mesh: Mesh, node: redis.Redis) -> int:
    """The entries of the bus streams this node serves (the others' answer MOVED)."""
    total = 0
    for s in range(int(mesh.env.get("NURTURE_BUS_SHARDS") or Settings.bus_shards)):
        try:
            total += int(node.xlen(f"nurture:bus:{{s{s}}}"))
        except redis.ResponseError:
            continue
    return total


def chaos(mesh: Mesh, run: Run, kills: int, spread_s: float, failover: str, stop: threading.Event,
          lag_s: float = LAG_S, failover_at: int | None = None) -> None:
    """SIGKILL `kills` random service replicas at random moments over about `spread_s` seconds (each pick
    and pause from the seeded generator, printed), and fail one Redis master over before kill number
    `failover_at` (default: half-way; `kills`: after the last)."""
    rng = random.Random(run.seed)
    at = (kills // 2 if failover_at is None else failover_at) if failover != "none" else -1
    for n in range(kills + 1):
        if n == kills and at != kills:
            return
        if stop.wait(rng.uniform(0.3, 2 * spread_s / max(kills, 1))):
            return
        if n == at:
            began = time.monotonic() - run.started
            try:
                run.failover = fail_over(mesh, rng, failover, lag_s)
            except Exception as exc:  # reported, not hidden: the run says it had no failover
                run.failover = f"{failover} failed: {exc!r}"
            run.failover += f" (began {began:.1f} s into the run)"
            print(f"  redis {run.failover}", flush=True)
        if n == kills:
            return
        name = f"{rng.choice(SERVICES)}-{rng.choice('01')}"
        pid = mesh_children(mesh).get(name)
        if pid is None:  # being restarted by the supervisor right now
            continue
        os.kill(pid, signal.SIGKILL)
        run.kills.append(name)
        print(f"  SIGKILL {name} (pid {pid})", flush=True)


async def _post(api: httpx.AsyncClient, path: str, body: dict[str, Any], tries: int = 60) -> httpx.Response:
    """POST until answered (a killed replica's call fails; the gateway's channels move on to the other)."""
    for attempt in range(tries):
        try:
            r = await api.post(path, json=body)
            if r.status_code < 500:
                return r
        except httpx.HTTPError:
            pass
        await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
    raise RuntimeError(f"{path} not answered after {tries} tries")


async def load(mesh: Mesh, run: Run, leads: int, events: int) -> None:
    """Create the leads (entrepreneurs: the journey of 17 timed emails), then post each lead's events in
    order (the leads in parallel), moving virtual time along meanwhile."""
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    async with httpx.AsyncClient(base_url=mesh.url, headers=headers, timeout=60) as api:
        ids = [f"chaos-{i}" for i in range(leads)]
        for i in range(0, leads, 10):
            await asyncio.gather(*(_post(api, "/v1/leads", {
                "id": lead, "email": f"{lead}@example.com", "consent": {"email": True}, "timezone": "Europe/Lisbon"})
                for lead in ids[i:i + 10]))

        async def one_lead(lead: str) -> None:
            for k in range(events):
                body = {"lead_id": lead, "type": "page_viewed",
                        "properties": {"category": "funding", "page": f"/chaos/{lead}/{k}"}}
                try:
                    r = await api.post("/v1/events", json=body)
                except httpx.HTTPError:
                    run.refused += 1
                    continue
                if r.status_code == 202:
                    run.accepted[lead].append(r.json()["event_id"])
                else:
                    run.refused += 1
                await asyncio.sleep(0.05)

        async def clock() -> None:
            while True:
                await asyncio.sleep(3)
                await _post(api, "/v1/admin/clock/advance", {"seconds": ADVANCE_S})

        ticking = asyncio.create_task(clock())
        try:
            await asyncio.gather(*(one_lead(lead) for lead in ids))
        finally:
            ticking.cancel()


async def settle(mesh: Mesh, days: int) -> str:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    async with httpx.AsyncClient(base_url=mesh.url, headers=headers, timeout=300) as api:
        for _ in range(days * 4):
            await _post(api, "/v1/admin/clock/advance", {"seconds": DAY // 4})
        return str((await api.get("/v1/admin/clock")).json()["now"])


def bus_behind(mesh: Mesh) -> dict[str, int]:
    """Per consumer group, the bus entries not yet acknowledged (pending, or not delivered at all)."""
    client = _cluster(mesh)
    behind: dict[str, int] = defaultdict(int)
    try:
        shards = int(mesh.env.get("NURTURE_BUS_SHARDS") or Settings.bus_shards)
        for s in range(shards):
            key = f"nurture:bus:{{s{s}}}"
            if not client.exists(key):
                continue
            last = client.xinfo_stream(key)["last-generated-id"]
            for group in client.xinfo_groups(key):
                behind[group["name"]] += int(group["pending"]) + (group["last-delivered-id"] != last)
    finally:
        client.close()
    return dict(behind)


def bus_order(mesh: Mesh) -> dict[str, list[str]]:
    """Per lead, its message ids in the order the bus holds them (first appearance: a message the outbox
    published twice is dropped by its consumers the second time). Every consumer reads a lead's shard in
    this order, and a replica taking a shard over handles the pending entries first."""
    client = _cluster(mesh)
    order: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    try:
        for s in range(int(mesh.env.get("NURTURE_BUS_SHARDS") or Settings.bus_shards)):
            for _, fields in client.xrange(f"nurture:bus:{{s{s}}}") or []:
                if not fields:
                    continue
                m = busmessage.decode(fields["m"])
                if m.id not in seen:
                    seen.add(m.id)
                    order[m.lead_id].append(m.id)
    finally:
        client.close()
    return order


def verify(mesh: Mesh, run: Run, database_url: str, now: str, wait_s: float = 300) -> dict[str, Any]:
    """The counts, from the record (waiting up to wait_s for the consumers to catch up after the load)."""
    accepted = {e for ids in run.accepted.values() for e in ids}
    engine = sa.create_engine(database_url)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            with engine.connect() as c:
                def ids(sql: str) -> set[str]:
                    return {str(r[0]) for r in c.execute(sa.text(sql))}
                recorded = ids("SELECT id FROM scoring_events")
                # Analytics keeps a fact per event that moved the score (`<event id>:score`), not per event.
                scored = ids("SELECT id FROM scoring_events WHERE score_delta <> 0") & accepted
                handled = {"journeys": ids("SELECT message_id FROM journeys_processed"),
                           "messaging": ids("SELECT id FROM messaging_inbox"),
                           "analytics": {i.removesuffix(":score") for i in ids(
                               "SELECT id FROM analytics_facts WHERE kind = 'score'")} | (accepted - scored)}
                sent = int(c.scalar(sa.text("SELECT count(*) FROM messaging_messages WHERE status = 'sent'")) or 0)
                # Two messages sent for one step of one lead's journey: a duplicate even under two Message-IDs.
                twice = int(c.scalar(sa.text(
                    "SELECT count(*) FROM (SELECT 1 FROM messaging_messages WHERE status = 'sent' AND step <> '' "
                    "GROUP BY lead_id, journey, step HAVING count(*) > 1) AS d")) or 0)
                due_left = int(c.scalar(sa.text(
                    "SELECT count(*) FROM journeys_enrollments WHERE status = 'active' AND due IS NOT NULL "
                    "AND due < :now"), {"now": datetime.fromisoformat(now)}) or 0)
            missing = {name: len(accepted - got) for name, got in handled.items()}
            behind = bus_behind(mesh)
            if (not any(missing.values()) and not behind.get("crm_sync")) or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        engine.dispose()
    mail = Path(mesh.data_dir) / "mail"
    stored = len(list(mail.rglob("*.eml")))
    replays = len((mail / "duplicates.log").read_text().splitlines()) if (mail / "duplicates.log").exists() else 0
    on_bus = bus_order(mesh)
    present = {e for ids in on_bus.values() for e in ids}
    out_of_order = sorted(lead for lead, posted in run.accepted.items()
                          if [e for e in on_bus.get(lead, []) if e in accepted] != [e for e in posted if e in present])
    return {
        "accepted": len(accepted), "refused_posts": run.refused,
        "lost_from_record": len(accepted - recorded),
        "lost_per_consumer": {**missing, "crm_sync": behind.get("crm_sync", 0)},
        "bus_behind": behind,
        "sent_messages": sent, "mail_stored": stored, "duplicate_sends": max(0, stored - sent) + twice,
        "steps_sent_twice": twice,
        "missing_mail": max(0, sent - stored), "wire_replays_dropped_by_sink": replays,
        "lost_timers": due_left, "leads_out_of_order": len(out_of_order), "out_of_order": out_of_order[:10],
        # Per such lead, the posted positions of its events in the order the bus holds them (what moved).
        "out_of_order_positions": {lead: [run.accepted[lead].index(e) for e in on_bus.get(lead, []) if e in accepted]
                                   for lead in out_of_order[:3]},
        "missing_on_bus": len(accepted - present),
        "kills": len(run.kills), "killed": run.kills, "failover": run.failover, "seed": run.seed,
    }


def chaos_run(database_url: str, seed: int, leads: int, events: int, kills: int, failover: str,
              wait_replicas: bool = True, lag_s: float = LAG_S, failover_at: int | None = None) -> dict[str, Any]:
    run = Run(seed=seed)
    print(f"chaos run: seed {seed}, {leads} leads × {events} events, {kills} kills, failover {failover}, "
          f"publishes {'wait for a replica' if wait_replicas else 'do not wait'}", flush=True)
    with fresh_database(database_url) as url, \
            private_mesh(clock="virtual", database_url=url, replicas=2, redis_cluster=3,
                         redis_cluster_replicas=1 if failover != "none" else 0,
                         # Consumers at the accept path's priority: at nice 19 on a machine others keep busy,
                         # the settling alone took most of an hour.
                         settings={"NURTURE_CONSUMER_NICE": "0",
                                   **({} if wait_replicas else {"NURTURE_REDIS_WAIT_REPLICAS": "0"})}) as mesh:
        assert url is not None
        stop = threading.Event()
        spread = max(20.0, leads * events * 0.05 / 2)
        killer = threading.Thread(target=chaos, args=(mesh, run, kills, spread, failover, stop, lag_s, failover_at),
                                  daemon=True)
        started = run.started = time.monotonic()
        killer.start()
        try:
            asyncio.run(load(mesh, run, leads, events))
            print(f"  load done in {time.monotonic() - started:.1f} s", flush=True)
        finally:
            killer.join(timeout=spread * 3)  # the kills are part of the run: let them all happen
            stop.set()
        print(f"  chaos done in {time.monotonic() - started:.1f} s; settling {FINAL_DAYS} days", flush=True)
        now = asyncio.run(settle(mesh, FINAL_DAYS))
        counts = verify(mesh, run, url, now)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("NURTURE_DATABASE_URL"), required=False)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    parser.add_argument("--leads", type=int, default=40)
    parser.add_argument("--events", type=int, default=6)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--failover", choices=("graceful", "crash", "lossy", "none"), default="graceful")
    parser.add_argument("--no-wait", action="store_true",
                        help="NURTURE_REDIS_WAIT_REPLICAS=0: publishes do not wait for a replica (to measure the loss)")
    parser.add_argument("--lag", type=float, default=LAG_S, help="seconds the lossy failover's replica is cut off")
    parser.add_argument("--failover-at", type=int, help="fail over before this kill (default: half-way; "
                        "= --kills: after the last, so no restarted scoring re-publishes what the failover lost)")
    args = parser.parse_args()
    if not (args.database_url or "").startswith("postgresql"):
        parser.error("replicas share a PostgreSQL database: --database-url postgresql+psycopg://...")
    counts = chaos_run(args.database_url, args.seed, args.leads, args.events, args.kills, args.failover,
                       wait_replicas=not args.no_wait, lag_s=args.lag, failover_at=args.failover_at)
    per = counts["lost_per_consumer"]
    print(f"accepted events: {counts['accepted']} (posts not accepted: {counts['refused_posts']})")
    print(f"accepted events lost: {counts['lost_from_record']} from the record; per consumer "
          + ", ".join(f"{k} {v}" for k, v in per.items()))
    print(f"sends: {counts['sent_messages']} sent, {counts['mail_stored']} in the sink: duplicate sends "
          f"{counts['duplicate_sends']} (steps sent twice {counts['steps_sent_twice']}), "
          f"missing {counts['missing_mail']} (wire replays the sink dropped: "
          f"{counts['wire_replays_dropped_by_sink']})")
    print(f"lost timers: {counts['lost_timers']}; leads out of order: {counts['leads_out_of_order']}; accepted events "
          f"missing on the bus now: {counts['missing_on_bus']} (handled before a failover lost them, or lost)")
    print(f"kills: {counts['kills']} {counts['killed']}; redis failover: {counts['failover'] or 'none'}; "
          f"seed {counts['seed']}")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
