"""Shared platform for the BorderBridge Nurture services: settings, clock, gRPC bootstrap, storage,
event bus, rules adapter and telemetry. Everything every process needs lives here once."""
