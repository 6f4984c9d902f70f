"""Head sampling (nurture.telemetry): the ratio setting is a share from 0 to 1, refused otherwise with its
name; a root is recorded by the ratio, every child follows its parent's flag whatever the ratio; work
done for several traces joins the first sampled one and links the other sampled ones, at most 50."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from nurture import telemetry
from nurture.settings import Settings, SettingsError, load_settings, to_environ


@pytest.mark.parametrize(("raw", "expected"), [("0", 0.0), ("0.25", 0.25), ("1", 1.0), ("1.0", 1.0), ("1e-3", 0.001)])
def test_the_ratio_reads_as_a_share(raw: str, expected: float) -> None:
    assert load_settings(environ={"NURTURE_TRACE_SAMPLE_RATIO": raw}).trace_sample_ratio == expected


@pytest.mark.parametrize("raw", ["-0.0001", "1.0001", "2", "nan", "inf", "-inf", "10%", "half", ""])
def test_anything_else_is_refused_with_its_name(raw: str) -> None:
    with pytest.raises(SettingsError, match="NURTURE_TRACE_SAMPLE_RATIO"):
        load_settings(environ={"NURTURE_TRACE_SAMPLE_RATIO": raw})


def test_a_ratio_given_as_a_flag_is_checked_too_and_child_processes_read_it_back() -> None:
    with pytest.raises(SettingsError, match="NURTURE_TRACE_SAMPLE_RATIO"):
        load_settings(environ={}, trace_sample_ratio=math.nan)
    assert Settings().trace_sample_ratio == 1.0   # every event traced unless an operator samples
    settings = load_settings(environ={}, trace_sample_ratio=0.3)
    assert load_settings(environ=to_environ(settings)).trace_sample_ratio == 0.3


def _ctx(n: int, sampled: bool) -> trace.SpanContext:
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT)
    return trace.SpanContext(trace_id=n, span_id=n, is_remote=True, trace_flags=flags)


def _mesh_provider(ratio: float) -> TracerProvider:
    return telemetry.provider("t", load_settings(environ={}, trace_sample_ratio=ratio))


def _sdk_provider(ratio: float) -> TracerProvider:
    return TracerProvider(sampler=telemetry.sampler(ratio))


@pytest.mark.parametrize("make", [_mesh_provider, _sdk_provider], ids=["mesh tracer", "sdk tracer"])
def test_roots_are_sampled_by_the_ratio_and_children_follow_their_parent(
        make: Callable[[float], TracerProvider]) -> None:
    tracers = {ratio: make(ratio).get_tracer("t") for ratio in (0.0, 0.5, 1.0)}

    def recorded(ratio: float, parent: trace.SpanContext | None = None) -> bool:
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent else None
        span = tracers[ratio].start_span("s", context=context)
        if parent is not None:  # a child is in its parent's trace, with the parent's decision
            assert span.get_span_context().trace_id == parent.trace_id
            assert span.get_span_context().trace_flags.sampled == parent.trace_flags.sampled
        return span.is_recording()

    assert all(recorded(1.0) for _ in range(200))
    assert not any(recorded(0.0) for _ in range(200))
    share = sum(recorded(0.5) for _ in range(2000)) / 2000
    assert 0.4 < share < 0.6, share
    # The head's decision, whatever this process's ratio: a sampled parent at 0, an unsampled one at 1.
    assert recorded(0.0, _ctx(7, sampled=True))
    assert not recorded(1.0, _ctx(7, sampled=False))


def test_the_mesh_tracer_decides_a_root_as_opentelemetrys_ratio_sampler_does() -> None:
    """Any process deciding on the same trace id decides alike, whichever tracer it runs."""
    for ratio in (0.1, 0.5, 0.9):
        ours = telemetry.sampler(ratio)
        stock = TraceIdRatioBased(ratio)
        for _ in range(500):
            trace_id = random.getrandbits(128) or 1
            assert ours.root(trace_id) == stock.should_sample(None, trace_id, "s").decision.is_sampled()


def test_a_batch_joins_the_first_sampled_trace_and_links_the_other_sampled_ones() -> None:
    parent, links = telemetry.batch_parent([_ctx(1, False), _ctx(2, True), _ctx(3, False), _ctx(4, True),
                                            _ctx(2, True), trace.INVALID_SPAN_CONTEXT, _ctx(5, True)])
    assert parent is not None
    assert trace.get_current_span(parent).get_span_context().trace_id == 2
    assert [link.context.trace_id for link in links] == [4, 5]  # each sampled trace once, unsampled never


def test_a_batch_of_unsampled_traces_stays_unsampled_and_one_without_any_is_a_root() -> None:
    parent, links = telemetry.batch_parent([trace.INVALID_SPAN_CONTEXT, _ctx(1, False), _ctx(2, False)])
    assert parent is not None and links == []
    chosen = trace.get_current_span(parent).get_span_context()
    assert chosen.trace_id == 1 and not chosen.trace_flags.sampled
    assert telemetry.batch_parent([trace.INVALID_SPAN_CONTEXT]) == (None, [])
    assert telemetry.batch_parent([]) == (None, [])


def test_a_batch_links_at_most_fifty_traces_and_reads_no_further() -> None:
    read: list[int] = []

    def contexts() -> Iterator[trace.SpanContext]:
        for n in range(1, 200):
            read.append(n)
            yield _ctx(n, True)

    parent, links = telemetry.batch_parent(contexts())
    assert parent is not None and len(links) == telemetry.MAX_TRACES - 1 == 49
    assert read == list(range(1, 51))
