"""Per-lead order on the bus across two scoring replicas on one database and one Redis.

A client posts a lead's events one after another, each after the answer to the one before, and may
send each to either replica (the gateway balances its calls). Replica A's connection to Redis goes
through a relay the test holds, as if A's Redis master were stopped (SIGSTOP) or A paused: what A
sends waits, then goes through in order. The answer to a post must mean its event is on the bus, so
that the next event, taken by replica B, cannot overtake it; a retry of a post A committed but could
not announce, sent to B, must not be answered before that event is on the bus either."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest

from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.service import Running
from nurture.settings import Settings
from tests.conftest import mesh_channel, start_service
from tests.integration.scoring.test_outbox import bus, event, wait_for

pytestmark = pytest.mark.anyio

HOLD_S = 1.0


class HeldRelay:
    """A TCP relay in front of Redis. While held, what the client sends is read and kept, not passed
    on (the client's commands wait, as against a stopped server); released, it goes through in order."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gated: bool) -> None:
            try:
                while data := await src.read(65536):
                    if gated:
                        await self._open.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        tasks = [asyncio.ensure_future(pump(reader, up_writer, True)),
                 asyncio.ensure_future(pump(up_reader, writer, False))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def through(redis_url: str, port: int) -> str:
    """The same Redis URL (its database) at the relay's port."""
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[tuple[HeldRelay, Running, Running]]:
    """(relay, A, B): A reaches Redis through the relay, B directly; one database and one bus."""
    settings = settings.with_overrides(clock="real")  # the virtual clock reads Redis on every write
    parts = urlsplit(settings.redis_url)
    relay = HeldRelay(parts.hostname or "127.0.0.1", parts.port or 6379)
    await relay.start()
    a = await start_service("scoring", settings.with_overrides(redis_url=through(settings.redis_url, relay.port)))
    b = await start_service("scoring", settings)
    try:
        yield relay, a, b
    finally:
        relay.release()
        await a.stop(grace=0.5)
        await b.stop(grace=0.5)
        await relay.close()


def first_positions(settings: Settings, lead: str) -> list[str]:
    """The lead's message ids on the bus, each at its first occurrence (consumers drop repeats)."""
    return list(dict.fromkeys(m.id for m in bus(settings) if m.lead_id == lead))


async def make_lead(stub: scoring_pb2_grpc.ScoringStub, settings: Settings, lead: str) -> None:
    await stub.UpsertLead(scoring_pb2.UpsertLeadRequest(id=lead, fields_json=json.dumps(
        {"email": f"{lead}@example.com"})), timeout=10)
    await wait_for(lambda: any(m.lead_id == lead for m in bus(settings)))


@contextlib.asynccontextmanager
async def stubs_with_lead(a: Running, b: Running, settings: Settings, lead: str
                          ) -> AsyncIterator[tuple[scoring_pb2_grpc.ScoringStub, scoring_pb2_grpc.ScoringStub]]:
    """Stubs of replicas A and B, once B has made `lead` and its creation is on the bus."""
    async with mesh_channel(a.address) as ch_a, mesh_channel(b.address) as ch_b:
        stub_a, stub_b = scoring_pb2_grpc.ScoringStub(ch_a), scoring_pb2_grpc.ScoringStub(ch_b)
        await make_lead(stub_b, settings, lead)
        yield stub_a, stub_b


async def test_a_post_answered_by_one_replica_is_on_the_bus_before_the_next_post_answered_by_the_other(
    settings: Settings, replicas: tuple[HeldRelay, Running, Running]
) -> None:
    relay, a, b = replicas
    async with stubs_with_lead(a, b, settings, "lead-1") as (stub_a, stub_b):
        relay.hold()  # A's publishes wait from now on, for HOLD_S
        asyncio.get_running_loop().call_later(HOLD_S, relay.release)
        started = time.monotonic()
        first = await stub_a.IngestEvents(scoring_pb2.IngestRequest(events=[event("lead-1", tag="1")]), timeout=10)
        first_id = first.results[0].event_id
        # The client's next event, after that answer, to the other replica.
        second = await stub_b.IngestEvents(scoring_pb2.IngestRequest(events=[event("lead-1", tag="2")]), timeout=10)
        second_id = second.results[0].event_id
        on_bus = first_positions(settings, "lead-1")
        assert first_id in on_bus, (
            f"B answered the second event {time.monotonic() - started:.2f} s in with the first not on the bus")
        assert on_bus.index(first_id) < on_bus.index(second_id)
        await wait_for(lambda: relay._open.is_set())
        await asyncio.sleep(0.3)  # whatever A still sends lands after the second: the order must hold
        on_bus = first_positions(settings, "lead-1")
        assert on_bus.index(first_id) < on_bus.index(second_id)


async def test_a_retry_at_the_other_replica_is_answered_once_the_first_attempt_is_on_the_bus(
    settings: Settings, replicas: tuple[HeldRelay, Running, Running]
) -> None:
    relay, a, b = replicas
    async with stubs_with_lead(a, b, settings, "lead-2") as (stub_a, stub_b):
        relay.hold()  # A commits but cannot publish: a paused or dying replica
        first = scoring_pb2.Event(lead_id="lead-2", type="webinar_registered", idempotency_key="post-1",
                                  properties_json=json.dumps({"tag": "1"}))
        try:
            await stub_a.IngestEvents(scoring_pb2.IngestRequest(events=[first]), timeout=1.5)
        except grpc.aio.AioRpcError as exc:
            # A says why before the deadline: stored, not announced (a 503 at the gateway, and not a
            # status the channel re-sends by itself). The client retries, at the other replica.
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert json.loads(exc.details() or "{}").get("code") == "unconfirmed", exc.details()
        retried = await stub_b.IngestEvents(scoring_pb2.IngestRequest(events=[first]), timeout=10)
        assert retried.results[0].duplicate, "the first attempt was not committed: the test proves nothing"
        first_id = retried.results[0].event_id
        assert first_id in first_positions(settings, "lead-2"), \
            "B answered the retry as a duplicate with the event not on the bus"
        second = await stub_b.IngestEvents(scoring_pb2.IngestRequest(events=[event("lead-2", tag="2")]), timeout=10)
        second_id = second.results[0].event_id
        relay.release()  # A publishes its rows too: repeats, which consumers drop by message id
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: [m.id for m in bus(settings)].count(first_id) > 1, timeout=3)
        on_bus = first_positions(settings, "lead-2")
        assert on_bus.index(first_id) < on_bus.index(second_id)


async def test_a_lead_update_answered_by_one_replica_is_on_the_bus_before_the_next_event_at_the_other(
    settings: Settings, replicas: tuple[HeldRelay, Running, Running]
) -> None:
    """A lead write's messages go out by the sweep, not from memory: the same hole as an event's, and
    journeys would act on the event before it saw the change."""
    relay, a, b = replicas
    async with stubs_with_lead(a, b, settings, "lead-3") as (stub_a, stub_b):
        relay.hold()
        asyncio.get_running_loop().call_later(HOLD_S, relay.release)
        reply = await stub_a.UpsertLead(scoring_pb2.UpsertLeadRequest(
            id="lead-3", merge=True, fields_json=json.dumps({"attributes": {"plan": "pro"}})), timeout=10)
        updated = f"lead_updated:lead-3:{reply.lead.version}"
        posted = await stub_b.IngestEvents(scoring_pb2.IngestRequest(events=[event("lead-3", tag="1")]), timeout=10)
        event_id = posted.results[0].event_id
        assert updated in first_positions(settings, "lead-3"), "B answered the event with A's update not on the bus"
        await wait_for(lambda: relay._open.is_set())
        await asyncio.sleep(0.3)
        on_bus = first_positions(settings, "lead-3")
        assert on_bus.index(updated) < on_bus.index(event_id)


async def test_an_upsert_retried_at_the_other_replica_is_answered_once_the_first_attempt_is_on_the_bus(
    settings: Settings, replicas: tuple[HeldRelay, Running, Running]
) -> None:
    """A lead upsert publishes the rows it writes from memory, not by a sweep of the whole outbox. The
    CRM's retry at B of an upsert A committed but could not announce changes nothing, so it writes no
    row of its own: it must still not be answered before A's lead_updated is on the bus (the lead's
    rows still in the outbox go out ahead of the answer)."""
    relay, a, b = replicas
    async with stubs_with_lead(a, b, settings, "lead-4") as (stub_a, stub_b):
        relay.hold()  # A commits but cannot publish: a paused or dying replica
        upsert = scoring_pb2.UpsertLeadRequest(id="lead-4", merge=True, source="crm:hubspot",
                                               fields_json=json.dumps({"attributes": {"plan": "pro"}}))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub_a.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[upsert]), timeout=1.5)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert json.loads(raised.value.details() or "{}").get("code") == "unconfirmed", raised.value.details()
        retried = await stub_b.UpsertLeads(scoring_pb2.UpsertLeadsRequest(leads=[upsert]), timeout=10)
        [result] = retried.results
        assert not result.created and result.lead.version == 2, "the first attempt was not committed: proves nothing"
        updated = f"lead_updated:lead-4:{result.lead.version}"
        assert updated in first_positions(settings, "lead-4"), "B answered the retry with A's update not on the bus"
        event_posted = await stub_b.IngestEvents(scoring_pb2.IngestRequest(events=[event("lead-4", tag="1")]),
                                                 timeout=10)
        relay.release()  # A publishes its row too: a repeat, which consumers drop by message id
        await asyncio.sleep(0.3)
        on_bus = first_positions(settings, "lead-4")
        assert on_bus.index(updated) < on_bus.index(event_posted.results[0].event_id)
