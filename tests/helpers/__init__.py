"""Helpers shared by tests (the kill tests' process handling, ...)."""
