"""Single event posts that arrive together go to scoring in one IngestEvents call.

A gRPC call costs the gateway and scoring far more than the event it carries, so while calls are in
flight, the posts that arrive wait and leave together in the next one, and calls start at least
`interval` apart (NURTURE_INGEST_CALL_INTERVAL_MS): a post on a quiet gateway goes at once, and under
load each call carries what arrived since the last started (a full call of MAX_EVENTS goes at once).
Each event keeps its own trace (it travels in `Event.traceparent`, with its sampling decision), and each
post gets its own result. The call itself runs in the trace of the first sampled post it carries, so
scoring records its work when any of the call's events is sampled (nurture.telemetry.batch_parent).
"""

from __future__ import annotations

import asyncio
import contextvars
import math

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import inject

from gateway.deps import Mesh
from nurture.aio import resolve
from nurture.api.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from nurture.telemetry import batch_parent

# A waiting post: its event, and the future its result (or the call's error) is given to.
Waiting = tuple[scoring_pb2.Event, asyncio.Future[scoring_pb2.EventResult]]

# Calls in flight at once on SQLite. One: a call's cost to scoring is mostly fixed (the gRPC call, the
# transaction), so the fewer and fuller the calls, the less CPU an event costs, and under load the
# batch grows by itself with the round trip. Measured at 500 posts/s: scoring used 0.61-0.68 of a
# core with one call in flight and 0.73-0.81 with two; p99 accept latency 41-44 ms against 74-104 ms.
# On PostgreSQL scoring runs `ingest_writers` transactions at once, each mostly waiting for the
# server, and as many calls keep a post from waiting for a whole call before its own starts
# (Settings.ingest_in_flight).
MAX_IN_FLIGHT = 1
# Events per call, so one call stays well inside a deadline made for one event.
MAX_EVENTS = 250
# Seconds between the starts of two calls (Settings.ingest_call_interval_ms). One call in flight alone
# lets the batch grow with the round trip only, and on a quiet host that is short, while scoring's CPU
# per event is mostly per call (measured under load, `IngestEvents` with one call in flight: 2.3 ms of
# scoring CPU per event at one event a call, 1.3 at two, 0.77 at four, 0.49 at eight; docs/CAPACITY.md).
# A post waits at most this long more, and only when calls would start closer together than this.
CALL_INTERVAL_S = 0.005


class EventSender:
    def __init__(self, mesh: Mesh, in_flight: int = MAX_IN_FLIGHT, interval: float = CALL_INTERVAL_S) -> None:
        self._mesh = mesh
        self._max_in_flight = max(1, in_flight)
        self._interval = max(0.0, interval)
        self._last_start = -math.inf  # the event loop's time when the last call started
        self._timer: asyncio.TimerHandle | None = None  # armed to start the next call at its time
        # Each waiting event, its post's future, and its post's span (the call joins a sampled one).
        self._pending: list[tuple[scoring_pb2.Event, asyncio.Future[scoring_pb2.EventResult], trace.SpanContext]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, event: scoring_pb2.Event) -> scoring_pb2.EventResult:
        """Ingest one event; its result, or the call's gRPC error."""
        carrier: dict[str, str] = {}
        inject(carrier)
        event.traceparent = carrier.get("traceparent", "")
        future: asyncio.Future[scoring_pb2.EventResult] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future, trace.get_current_span().get_span_context()))
        self._maybe_start()
        return await future

    def _maybe_start(self) -> None:
        """Start calls for the waiting posts while fewer than the limit are in flight: at once when the
        last started `interval` ago or more, or a full call waits; else when that time comes."""
        loop = asyncio.get_running_loop()
        while self._pending and self._in_flight < self._max_in_flight:
            due = self._last_start + self._interval
            if len(self._pending) < MAX_EVENTS and loop.time() < due:
                if self._timer is None:
                    self._timer = loop.call_at(due, self._on_time)
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._start(loop.time())

    def _on_time(self) -> None:
        self._timer = None
        self._maybe_start()

    def _start(self, now: float) -> None:
        taken, self._pending = self._pending[:MAX_EVENTS], self._pending[MAX_EVENTS:]
        self._in_flight += 1
        self._last_start = now
        parent, _ = batch_parent(span for _, _, span in taken)
        task = asyncio.create_task(self._call([(e, f) for e, f, _ in taken]), context=_with_trace(parent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, taken: list[Waiting]) -> None:
        outcomes: list[scoring_pb2.EventResult | Exception]
        try:
            stub = self._mesh.stub(scoring_pb2_grpc.ScoringStub, "scoring")
            reply = await stub.IngestEvents(scoring_pb2.IngestRequest(events=[e for e, _ in taken]),
                                            timeout=self._mesh.timeout)
            outcomes = list(reply.results)
            if len(outcomes) != len(taken):
                raise RuntimeError(f"scoring answered {len(outcomes)} results for {len(taken)} events")
        except Exception as exc:  # every post of the call gets the error (a gRPC one becomes a 503)
            outcomes = [exc] * len(taken)
        except asyncio.CancelledError as exc:  # the gateway is stopping: nobody waits forever
            resolve((future, exc) for _, future in taken)
            raise
        finally:
            self._in_flight -= 1
            self._maybe_start()
        resolve((future, outcome) for (_, future), outcome in zip(taken, outcomes, strict=True))


def _with_trace(parent: otel_context.Context | None) -> contextvars.Context:
    """A copy of the current context whose current span is `parent`'s, for the call's task."""
    ctx = contextvars.copy_context()
    if parent is not None:
        ctx.run(otel_context.attach, parent)
    return ctx
