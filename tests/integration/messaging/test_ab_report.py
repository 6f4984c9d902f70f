"""The A/B report is of the live version's variants (docs/API.md, Templates: "The A/B report of the live
variants"). A marketer who adds variants to a template that has been sending for a while starts a test:
the sends from before it carry no variant, and were reported as a variant named `default`, ranked against
the test's own and named its winner once its history outweighed them."""

from __future__ import annotations

import json

import pytest

from nurture.api.messaging.v1 import messaging_pb2
from tests.integration.messaging.conftest import Mesh
from tests.integration.messaging.harness import make_lead

pytestmark = pytest.mark.anyio

KEY = "family.email_02"   # a seeded template without variants


async def test_sends_from_before_the_variants_are_no_variant_of_the_report(mesh: Mesh) -> None:
    before = [f"pre{i}" for i in range(4)]
    for lead_id in before:
        mesh.scoring.add(make_lead(lead_id))
        await mesh.send(lead_id, KEY)
    await mesh.settle()
    assert {m.variant for lead_id in before for m in await mesh.messages(lead_id)} == {""}

    current = await mesh.stub.GetTemplate(messaging_pb2.GetTemplateRequest(key=KEY), timeout=5)
    content = messaging_pb2.TemplateContent()
    content.CopyFrom(current.content)
    content.variants_json = json.dumps({"a": {}, "b": {"subject": "Your family's priorities, in five minutes"}})
    put = await mesh.stub.PutTemplate(messaging_pb2.PutTemplateRequest(key=KEY, content=content), timeout=10)
    await mesh.stub.PublishTemplate(messaging_pb2.PublishTemplateRequest(key=KEY, version=put.version), timeout=10)

    during = [f"ab{i}" for i in range(4)]
    for lead_id in during:
        mesh.scoring.add(make_lead(lead_id))
        await mesh.send(lead_id, KEY)
    await mesh.settle()
    variants = {m.variant for lead_id in during for m in await mesh.messages(lead_id)}
    assert variants <= {"a", "b"} and variants

    report = await mesh.stub.AbReport(messaging_pb2.AbReportRequest(template=KEY), timeout=5)
    assert [v.name for v in report.variants] == ["a", "b"], report
    assert sum(v.sent for v in report.variants) == len(during)
    assert "default" not in report.explanation and not report.winner
