"""Which requests are traced is the operator's choice through OpenTelemetry's own variables
(`OTEL_TRACES_SAMPLER`, README): every process's provider takes its sampler from them. Unsampled, a
request still gets a trace id to pass on (its events keep their `traceparent`), but nothing is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture import telemetry
from nurture.settings import load_settings


@pytest.mark.parametrize(("sampler", "recorded"), [(None, True), ("parentbased_traceidratio", False),
                                                   ("always_off", False)])
def test_the_sampler_is_the_operators(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sampler: str | None,
                                      recorded: bool) -> None:
    if sampler is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    monkeypatch.setattr(telemetry, "_configured", True)  # the process-wide provider stays the tests' own
    provider = telemetry.setup("sampler-test", load_settings(environ={}, data_dir=tmp_path))
    try:
        span = provider.get_tracer("test").start_span("POST /t/v1/collect")
        assert span.is_recording() is recorded
        assert span.get_span_context().is_valid  # a trace id to carry either way
        span.end()
    finally:
        provider.shutdown()
