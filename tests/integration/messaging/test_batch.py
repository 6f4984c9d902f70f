"""SendBatch against the real service: every item is its own Send (own dedupe key, own outcome), bad
items never fail or block the others, and an oversized batch is refused as a whole."""

from __future__ import annotations

import grpc
import pytest

from nurture.api.messaging.v1 import messaging_pb2
from tests.integration.messaging.conftest import Mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio


def item(lead_id: str, template: str, *, key: str | None = None, channel: str = "email",
         category: str = "") -> messaging_pb2.SendRequest:
    journey, _, step = template.partition(".")
    return messaging_pb2.SendRequest(
        dedupe_key=f"{lead_id}:{journey}:1:{step}:0" if key is None else key, lead_id=lead_id, journey=journey,
        journey_version=1, step=step, channel=channel, template=template, category=category)


async def test_batch_items_have_their_own_outcomes(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("b1"))
    mesh.scoring.add(make_lead("b2"))
    mesh.scoring.add(make_lead("bad", email="nobody@reject.invalid"))
    mesh.scoring.add(make_lead("nc", consent={"email": False}))
    items = [
        item("b1", "family.email_01"),
        item("bad", "family.email_01"),                     # refused by the SMTP server at delivery
        item("b2", "family.email_99"),                      # unknown template: recorded as failed
        item("b2", "family.email_01", channel="fax"),       # can never be valid
        item("b2", "family.email_03", key=""),              # no dedupe key
        item("b2", "family.email_02"),
        item("b1", "family.email_01"),                      # the first item's key again
        item("nc", "family.email_01"),                      # no consent: suppressed at delivery
    ]
    reply = await mesh.stub.SendBatch(messaging_pb2.SendBatchRequest(items=items), timeout=5)
    got = [(r.status, r.reason) for r in reply.results]
    assert [s for s, _ in got] == ["scheduled", "scheduled", "failed", "invalid", "invalid", "scheduled",
                                   "duplicate", "scheduled"]
    assert "unknown template" in got[2][1] and "channel must be one of" in got[3][1]
    assert "dedupe_key and lead_id are required" in got[4][1]
    assert reply.results[6].message_id == reply.results[0].message_id
    assert not reply.results[3].message_id and not reply.results[4].message_id
    await mesh.settle()
    b1 = await mesh.messages("b1")
    assert [(m.template, m.status) for m in b1] == [("family.email_01", "sent")]
    assert sorted((m.template, m.status) for m in await mesh.messages("b2")) == [
        ("family.email_02", "sent"), ("family.email_99", "failed")]   # the invalid items left no record
    [bad] = await mesh.messages("bad")
    assert bad.status == "failed" and bad.reason.startswith("550")
    [nc] = await mesh.messages("nc")
    assert nc.status == "suppressed" and nc.reason == "no email consent"
    mails = mesh.mails()
    assert sorted(m["To"].addresses[0].addr_spec for m in mails) == ["b1@example.com", "b2@example.com"]
    assert {m["Message-ID"] for m in mails} == {
        f"<{reply.results[i].message_id}@nurture.borderbridge.example>" for i in (0, 5)}
    # The same batch again is all duplicates with the first ids; a single Send of a key sent in a batch too.
    again = await mesh.stub.SendBatch(messaging_pb2.SendBatchRequest(items=items), timeout=5)
    assert [r.status for r in again.results] == ["duplicate"] * 3 + ["invalid"] * 2 + ["duplicate"] * 3
    assert [r.message_id for r in again.results if r.status == "duplicate"] == [
        r.message_id for r in reply.results if r.status != "invalid"]
    assert "already sent" in again.results[0].reason
    single = await mesh.send("b2", "family.email_02")
    assert (single.status, single.message_id) == ("duplicate", reply.results[5].message_id)
    await mesh.settle()
    assert len(mesh.sink.messages()) == 2                  # nothing delivered twice


async def test_oversized_batch_is_refused_and_records_nothing(mesh: Mesh) -> None:
    mesh.scoring.add(make_lead("big"))
    items = [item("big", "family.email_01", key=f"big:family:1:email_01:{i}") for i in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mesh.stub.SendBatch(messaging_pb2.SendBatchRequest(items=items), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1000" in (err.value.details() or "") and "1001" in (err.value.details() or "")
    assert await mesh.messages("big") == []
    empty = await mesh.stub.SendBatch(messaging_pb2.SendBatchRequest(), timeout=5)
    assert list(empty.results) == []
    # The largest allowed batch goes through, one result per item, in order.
    full = await mesh.stub.SendBatch(messaging_pb2.SendBatchRequest(items=items[:1000]), timeout=10)
    assert [r.status for r in full.results] == ["scheduled"] * 1000
    assert len({r.message_id for r in full.results}) == 1000
    assert len(await mesh.messages("big")) == 1000


async def test_refused_recipients_inside_a_connection_share_block_nothing(mesh: Mesh) -> None:
    # 24 emails in one worker batch: each SMTP connection takes a run of 3, so the refused (550) and
    # deferred (451) recipients sit in the middle of runs, with messages after them on the same connection.
    kinds = {4: "nobody@reject.invalid", 10: "later@tempfail.invalid", 13: "nobody2@reject.invalid"}
    items = []
    for i in range(24):
        mesh.scoring.add(make_lead(f"r{i}", email=kinds.get(i, f"r{i}@example.com")))
        items.append(item(f"r{i}", "webinar.email_01", category="transactional"))
    reply = await mesh.stub.SendBatch(messaging_pb2.SendBatchRequest(items=items), timeout=5)
    assert [r.status for r in reply.results] == ["scheduled"] * 24
    await mesh.settle()
    status = {i: (await mesh.messages(f"r{i}"))[0] for i in range(24)}
    assert {i for i, m in status.items() if m.status == "sent"} == set(range(24)) - set(kinds)
    assert status[4].status == status[13].status == "failed" and status[4].reason.startswith("550")
    assert status[10].status == "scheduled" and status[10].reason.startswith("retrying: 451")
    assert len(mesh.sink.messages()) == 21
    assert len(mesh.scoring.of_type("email_hard_bounced")) == 2
