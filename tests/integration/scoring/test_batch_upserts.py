"""A batch of lead upserts in one transaction answers exactly as the same upserts one at a time: the
batch reads its leads up front (by id and by email) and writes them at the end, so every interplay inside
a batch (a lead created then matched by email, an email moved off a lead then taken by another, one lead
changed twice, a taken email, a missing lead) must come out as it does when each upsert commits alone."""

from __future__ import annotations

import json
import random
import re

import pytest

from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.settings import Settings
from tests.conftest import mesh_channel, start_service

pytestmark = pytest.mark.anyio

IDS = ["l1", "l2", "l3", "l4"]
MAILBOXES = ["ann", "bob", "cy", "dee", "eve"]


def operations(rng: random.Random, n: int) -> list[dict[str, object]]:
    ops: list[dict[str, object]] = []
    for _ in range(n):
        op: dict[str, object] = {"merge": rng.random() < 0.7, "must_exist": rng.random() < 0.15}
        if rng.random() < 0.75:
            op["id"] = rng.choice(IDS)
        fields: dict[str, object] = {}
        if rng.random() < 0.7:
            box = rng.choice(MAILBOXES)
            fields["email"] = (box.upper() if rng.random() < 0.3 else box) + "@{domain}"
        if rng.random() < 0.6:
            fields["attributes"] = {"n": rng.randrange(3), "country": rng.choice(["Canada", "India"])}
        if rng.random() < 0.3:
            fields["first_name"] = rng.choice(["A", "B"])
        if rng.random() < 0.2:
            fields["consent"] = {"email": rng.random() < 0.5}
        if not fields and "id" not in op:
            fields["email"] = rng.choice(MAILBOXES) + "@{domain}"
        op["fields"] = fields
        ops.append(op)
    return ops


def request(op: dict[str, object], space: str) -> scoring_pb2.UpsertLeadRequest:
    text = json.dumps(op["fields"]).replace("{domain}", f"{space}.example")
    lead_id = f"{space}-{op['id']}" if "id" in op else ""
    return scoring_pb2.UpsertLeadRequest(id=lead_id, fields_json=text, merge=bool(op["merge"]),
                                         must_exist=bool(op["must_exist"]), source="test")


def seen(result: scoring_pb2.UpsertLeadResult, space: str) -> tuple[object, ...]:
    """A result with the id space taken out (and generated ids, which differ, named by their email)."""
    def plain(text: str) -> str:
        return re.sub(rf"\b{space}[-.]", "X-", text)
    if result.error_code:
        return ("error", result.error_code, plain(result.error_message))
    lead = result.lead
    lead_id = plain(lead.id) if lead.id.startswith(f"{space}-") else f"new:{plain(lead.email)}"
    return (lead_id, result.created, plain(lead.email), lead.first_name, plain(lead.attributes_json),
            lead.consent_json, lead.version, lead.grade)


async def test_a_batch_answers_as_the_same_upserts_one_by_one(settings: Settings) -> None:
    service = await start_service("scoring", settings)
    try:
        async with mesh_channel(service.address) as ch:
            stub = scoring_pb2_grpc.ScoringStub(ch)
            for seed in range(12):
                ops = operations(random.Random(seed), 30)
                batch, alone = f"b{seed}", f"s{seed}"
                reply = await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(
                    leads=[request(op, batch) for op in ops]), timeout=30)
                together = [seen(r, batch) for r in reply.results]
                one_by_one = []
                for op in ops:
                    single = await stub.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[request(op, alone)]),
                                                    timeout=30)
                    one_by_one.append(seen(single.results[0], alone))
                assert together == one_by_one, seed
                # Some of every kind happened, or the comparison proves little.
                kinds = {r[0] if r[0] == "error" else ("created" if r[1] else "updated") for r in together}
                assert {"created", "updated"} <= kinds, (seed, kinds)
                stored = await stub.GetLeads(scoring_pb2.GetLeadsRequest(ids=[f"{batch}-{i}" for i in IDS]),
                                             timeout=10)
                again = await stub.GetLeads(scoring_pb2.GetLeadsRequest(ids=[f"{alone}-{i}" for i in IDS]),
                                            timeout=10)
                assert ([(x.id[len(batch):], x.email.replace(batch, ""), x.attributes_json.replace(batch, ""),
                          x.version) for x in stored.leads]
                        == [(x.id[len(alone):], x.email.replace(alone, ""), x.attributes_json.replace(alone, ""),
                             x.version) for x in again.leads])
    finally:
        await service.stop(grace=0.2)
