"""A gunicorn app whose FHIR ``$export`` fails before its first line is sent, and whose ``/broken-stream``
fails before its first chunk and then finds the client gone: the request lines of responses that fail
before anything was sent (tests/api/test_gunicorn_workers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from api import create_app
from protocols import fhir_query


def _fail(*_: Any, **__: Any) -> Iterator[Any]:
    raise RuntimeError("the export's first page could not be read (a test)")
    yield  # a generator: it fails when the server asks for the first chunk


class _BrokenStream:
    """A body whose first chunk fails, and whose closing finds the connection gone (a socket error, which
    gunicorn ignores without answering: the failed request's line must not go to the next request)."""

    def __iter__(self) -> _BrokenStream:
        return self

    def __next__(self) -> bytes:
        raise RuntimeError("the first chunk could not be made (a test)")

    def close(self) -> None:
        raise BrokenPipeError(32, "the client went away (a test)")


def _with_broken_stream(service: Any) -> Any:
    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/broken-stream":
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("X-Request-ID", environ.get("HTTP_X_REQUEST_ID", "-"))])
            return _BrokenStream()
        return service(environ, start_response)
    return wsgi


fhir_query.iter_current = _fail
app = _with_broken_stream(create_app())
