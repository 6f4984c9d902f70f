"""The collect route reads `k` from the query string by hand (gateway.routes.tracking._query_value):
it must read what Starlette's `request.query_params` would, escaped or not."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from gateway.routes.tracking import _query_value


@pytest.mark.parametrize("query", [
    b"", b"k=abc", b"k=", b"k", b"x=1&k=abc", b"k=abc&k=def", b"k=a%2Db", b"k=a+b", b"kk=1&k=2&k3=4",
    b"k=a=b", b"&&k=abc&&", b"K=abc", b"x=%ZZ&k=1", b"k=%C3%A9", b"k=\xe9", b"v=1"])
def test_the_site_key_is_read_as_starlette_reads_it(query: bytes) -> None:
    assert _query_value(query, "k") == QueryParams(query.decode("latin-1")).get("k", "")
