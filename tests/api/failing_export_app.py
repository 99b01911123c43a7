"""A gunicorn app whose FHIR ``$export`` fails before its first line is sent: the request line of a response
that fails before anything was sent (tests/api/test_gunicorn_workers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from api import create_app
from protocols import fhir_query


def _fail(*_: Any, **__: Any) -> Iterator[Any]:
    raise RuntimeError("the export's first page could not be read (a test)")
    yield  # a generator: it fails when the server asks for the first chunk


fhir_query.iter_current = _fail
app = create_app()
