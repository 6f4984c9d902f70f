"""Ops find a lead's traces by its id: the spans that handle one lead, event or message carry
`nurture.lead_id`, `nurture.event_id` and `nurture.message_id` (a batch's span the list of them). No span
carried any, so a lead's complaint could not be traced without its trace id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nurture import telemetry
from nurture.api.common.v1 import common_pb2
from nurture.busmessage import BusMessage
from nurture.settings import Settings
from tests.integration.gateway.test_traces import _mesh
from tests.integration.templates.mesh import templates_mesh

pytestmark = pytest.mark.anyio


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_the_spans_of_an_event_name_its_lead_and_event(settings: Settings, spans: InMemorySpanExporter) -> None:
    handled: list[BusMessage] = []
    async with _mesh(settings, handled) as (client, consumer, admin):
        spans.clear()
        r = await client.post("/v1/events", json={"lead_id": "t", "type": "page_viewed"})
        assert r.status_code == 202, r.text
        event_id = r.json()["event_id"]
        await admin.Settle(common_pb2.SettleRequest(), timeout=5)
        await consumer.drain()
    finished = spans.get_finished_spans()
    by_name = {s.name: _attrs(s) for s in finished if _attrs(s).get(telemetry.LEAD_ID) == "t"}
    for name in ("POST /v1/events", "/nurture.api.scoring.v1.Scoring/IngestEvents", "ingest",
                 "bus handle trace-test"):
        assert name in by_name, sorted(by_name)
        assert by_name[name][telemetry.EVENT_ID] == event_id, (name, by_name[name])
    # Only where the ids are known, and on no span of its own: the SQL and Redis spans carry none.
    assert not [s.name for s in finished if s.name.startswith(("sql", "redis")) and telemetry.LEAD_ID in _attrs(s)]


async def test_journeys_messaging_and_crm_sync_spans_name_the_lead_and_the_message(
        settings: Settings, tmp_path: Path, spans: InMemorySpanExporter) -> None:
    async with templates_mesh(settings, tmp_path, extra=("crm_sync", "analytics")) as mesh:
        spans.clear()
        await mesh.add_lead("ana")
        r = await mesh.client.post("/v1/admin/clock/advance", headers=mesh.headers("admin"), json={"seconds": 60})
        assert r.status_code == 200, r.text
        r = await mesh.client.get("/v1/leads/ana/messages", headers=mesh.headers("viewer"))
        sent = [m for m in r.json()["items"] if m["status"] == "sent"]
        assert sent, r.json()
    finished = spans.get_finished_spans()

    def tagged(name: str, key: str = telemetry.LEAD_ID) -> list[Any]:
        return [_attrs(s)[key] for s in finished if s.name == name and key in _attrs(s)]

    def has(values: list[Any], one: str) -> bool:
        return any(v == one or (not isinstance(v, str) and one in v) for v in values)

    # journeys' per-lead work (its bus consumer), crm_sync's (the pushes it queues), messaging's send
    assert has(tagged("bus handle journeys"), "ana"), sorted({s.name for s in finished})
    assert has(tagged("bus handle crm_sync"), "ana"), sorted({s.name for s in finished})
    sends = [s for s in finished if s.name.startswith("/nurture.api.messaging.v1.Messaging/Send")
             and _attrs(s).get(telemetry.LEAD_ID) == "ana"]
    assert sends and all(_attrs(s).get(telemetry.MESSAGE_ID) for s in sends), [_attrs(s) for s in sends]
    message_ids = {m["id"] for m in sent}
    delivered = tagged("messages due", telemetry.MESSAGE_ID)
    assert all(has(delivered, mid) for mid in message_ids), (message_ids, delivered)
    assert has(tagged("messages due"), "ana")


class _Recording(trace.NonRecordingSpan):
    def __init__(self, recording: bool) -> None:
        super().__init__(trace.INVALID_SPAN_CONTEXT)
        self.recording = recording
        self.attributes: dict[str, Any] = {}

    def is_recording(self) -> bool:
        return self.recording

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value


def test_a_batch_span_gets_the_distinct_ids_and_an_unsampled_one_nothing() -> None:
    span = _Recording(True)
    many = [f"l-{i}" for i in range(100)]
    telemetry.tag_ids(span, lead_ids=["a", "", "b", "a"], event_ids=["e"], message_ids=many)
    assert span.attributes == {telemetry.LEAD_ID: ["a", "b"], telemetry.EVENT_ID: "e",
                               telemetry.MESSAGE_ID: many[:telemetry.MAX_TAGGED_IDS]}

    def never() -> Any:
        raise AssertionError("an unsampled span reads no ids")
        yield

    unsampled = _Recording(False)
    telemetry.tag_ids(unsampled, lead_ids=never(), event_ids=never())
    assert unsampled.attributes == {}
