"""scoring's application layer: one module per area (see the service README)."""
