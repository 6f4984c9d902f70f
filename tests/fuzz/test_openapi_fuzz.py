"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis).

A real mesh (`nurture up --clock virtual`, every service) is started once; schemathesis reads
`/openapi.json` and, for every operation, sends requests generated from the document: valid ones and
invalid ones (wrong types, missing fields, out-of-range numbers, odd strings). Every response must
be a non-5xx that the document describes: a documented status, its media type, its schema and
headers. `make test` runs a bounded number of examples per operation (NURTURE_FUZZ_EXAMPLES, 12 by
default, a couple of minutes); `make fuzz` runs many more.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench._mesh import Mesh, private_mesh
from gateway.app import create_app
from nurture.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
EXAMPLES = int(os.environ.get("NURTURE_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with private_mesh(clock="virtual") as running:
        # On a busy machine the mesh can take longer than private_mesh waits: wait until it is ready.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{running.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield running


def document() -> dict[str, Any]:
    """The gateway's own document, as /openapi.json serves it (the test below checks they are one)."""
    app = create_app(load_settings(environ={}))
    return app.app.openapi()  # type: ignore[attr-defined,no-any-return]


DOCUMENT = document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_fuzzed_document_is_the_served_one(mesh: Mesh) -> None:
    served = httpx.get(f"{mesh.url}/openapi.json", timeout=30).json()
    assert served == json.loads(json.dumps(DOCUMENT))


def bounded(case: Any) -> None:
    """Keep the two operations whose cost grows with a number inside a test's time: a simulation of
    two million lead-days and a 400-day advance are valid, and slow, not interesting here."""
    body = case.body if isinstance(case.body, dict) else None
    if body is None:
        return
    if case.operation.path == "/v1/simulations":
        for name, cap in (("leads", 20), ("days", 5)):
            if isinstance(body.get(name), int) and not isinstance(body.get(name), bool) and body[name] > cap:
                body[name] = cap
    if case.operation.path == "/v1/admin/clock/advance":
        if isinstance(body.get("seconds"), int | float) and not isinstance(body.get("seconds"), bool):
            body["seconds"] = min(body["seconds"], 3600)
        body.pop("to", None)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_response_is_documented_and_none_is_a_server_error(case: Any, mesh: Mesh) -> None:
    bounded(case)
    case.call_and_validate(base_url=mesh.url, headers={"Authorization": f"Bearer {mesh.api_key}"}, checks=CHECKS,
                           timeout=60)
