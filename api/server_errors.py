"""The requests gunicorn refuses itself are answered in the service's JSON error shape.

gunicorn rejects some requests before the app sees them: a request line longer than
``limit_request_line`` (414), more or larger headers than ``limit_request_fields`` /
``limit_request_field_size`` allow (431), a malformed request line, method or header (400), a
transfer coding it does not implement (501). For these it writes an HTML page through
``gunicorn.util.write_error``. An integration parses every error body as JSON (``code``, ``status``,
``message``, ``request_id``), as it does the app's own, so gunicorn.conf.py installs this writer in
each worker instead. Status line, ``Connection: close`` and the reason are gunicorn's; only the body
and its headers change. Like the app's own 4xx bodies, each names what was at fault in ``errors``: the
part of the request gunicorn's exception was about (``request_line``, ``method``, ``http_version``, a
header by its name, ``headers`` as a whole, ``body``).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.base import Worker

from api.errors import error_body
from api.request_ids import new_request_id

#: gunicorn's messages can quote what the client sent (a header line, a request line); enough of it
#: to recognize the request, not an echo of a 8 KB line.
MAX_MESSAGE_CHARS = 200
#: A header name quoted as the key of ``errors``: longer ones are cut, as messages are.
MAX_NAME_CHARS = 100

#: Header names whose usual spelling is not each part capitalized (a review: X-Request-Id).
_AS_DOCUMENTED = {name.title(): name for name in ("X-Request-ID", "WWW-Authenticate", "ETag", "TE", "DNT")}
#: A header name (RFC 9110 5.1: a token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

#: What each of gunicorn's refusals was about (the first match of the exception's type wins).
_AT_FAULT: tuple[tuple[type[BaseException], str], ...] = (
    (http_errors.LimitRequestLine, "request_line"),
    (http_errors.InvalidRequestLine, "request_line"),
    (http_errors.InvalidRequestMethod, "method"),
    (http_errors.InvalidHTTPVersion, "http_version"),
    (http_errors.LimitRequestHeaders, "headers"),
    (http_errors.UnsupportedTransferCoding, "Transfer-Encoding"),
    (http_errors.ExpectationFailed, "Expect"),
    (http_errors.InvalidChunkSize, "body"),
    (http_errors.ChunkMissingTerminator, "body"),
    (http_errors.InvalidChunkExtension, "body"),
    (http_errors.InvalidProxyLine, "proxy_protocol"),
)

#: The exception gunicorn's ``handle_error`` is answering on this thread (its ``write_error`` is not
#: given it): set by :func:`_handle_error`, read by :func:`write_json_error`.
_answering = threading.local()


def at_fault(exc: BaseException | None) -> str:
    """The part of the request ``exc`` refused: a header by its name where gunicorn says which."""
    for kind, where in _AT_FAULT:
        if isinstance(exc, kind):
            return where
    if isinstance(exc, http_errors.InvalidHeader | http_errors.InvalidHeaderName | http_errors.ObsoleteFolding):
        name = getattr(exc, "hdr", None)
        # gunicorn also puts a whole header line or a description there ("bare LF as line terminator")
        if isinstance(name, str) and _TOKEN.fullmatch(name.strip()):
            # gunicorn upper-cases the names it parsed (CONTENT-LENGTH); the app's errors name headers as
            # written (Content-Length, Transfer-Encoding), so a client looked for one key and got another
            # (a documentation probe).
            written = "-".join(part.capitalize() for part in name.strip().split("-"))
            return _AS_DOCUMENTED.get(written, written)[:MAX_NAME_CHARS]
        return "headers"
    return "request"


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``write_error`` with the app's error body (same signature, same status line)."""
    message = (mesg or reason)[:MAX_MESSAGE_CHARS]
    request_id = answering_request_id() or new_request_id()
    # A 500 (gunicorn's own, for an app that failed) is no fault of the request: no errors. A 501 is the
    # request's Transfer-Encoding.
    errors = {at_fault(getattr(_answering, "exc", None)): [message]} if status_int != 500 else None
    body = json.dumps(error_body(status_int, message, errors, request_id=request_id)).encode()
    if reason == "Bad Request" and status_int != 400:  # gunicorn's reason for its 501 (a documentation probe)
        reason = HTTPStatus(status_int).phrase
    head = (f"HTTP/1.1 {status_int} {reason}\r\n"
            "Connection: close\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Request-ID: {request_id}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Cache-Control: no-store\r\n"
            "\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)
    # gunicorn logs an answer only when it has parsed a request (or takes one from the exception); for the
    # rest (a request line or headers it refused) the log is asked for a line here (a review: none was
    # written), once: the access log says when it has written this answer's (a review: two lines).
    log, addr = getattr(_answering, "log", None) or (None, None)
    refusal_line = getattr(log, "refusal_line", None)
    if refusal_line is not None and not getattr(_answering, "logged", False):
        refusal_line(status_int, request_id, addr)


def answering_request_id() -> str | None:
    """The request id of the refusal this thread is answering (its access-log line and its error body
    carry the same one), or None outside ``handle_error``."""
    return getattr(_answering, "request_id", None)


def defer_line(req: Any, facts: dict[str, Any] | None) -> None:
    """Keep the facts of request ``req`` whose response failed before anything was sent (a stream whose
    first chunk raised), for the line of the 500 ``handle_error`` answers it with: it was logged twice, as a
    200 under the client's request id and as a 500 under a fresh one (a review). None forgets them."""
    _answering.deferred = (req, facts) if facts is not None else None


def answered_logged() -> None:
    """The access log has written the line of the answer this thread's ``handle_error`` is giving."""
    _answering.logged = True


def answering_line() -> dict[str, Any]:
    """The deferred facts of the request this thread's ``handle_error`` is answering, or nothing."""
    return getattr(_answering, "line", None) or {}


def install() -> None:
    """Make gunicorn's workers answer the requests they refuse with the JSON error body.

    ``Worker.handle_error`` looks ``util.write_error`` up on the module at call time, so replacing the
    module attribute is enough; it does not pass the exception on, so ``handle_error`` is wrapped to
    keep it for the writer. Called from gunicorn.conf.py's ``post_worker_init`` (once per worker).
    """
    util.write_error = write_json_error
    if getattr(Worker.handle_error, "__wrapped__", None) is None:
        original = Worker.handle_error

        def _handle_error(self: Worker, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
            # Only the request that deferred them: when its failure ended in a socket error instead (the
            # client gone), handle_error never ran for it, and the next refusal on this thread took its
            # request id (a review).
            deferred_req, deferred = getattr(_answering, "deferred", None) or (None, None)
            _answering.deferred = None
            if deferred_req is not req or deferred is None:
                deferred = {}
            # A failed response keeps the client's request id; a refusal gets a fresh one.
            _answering.exc, _answering.request_id = exc, deferred.get("request_id") or new_request_id()
            _answering.line = deferred
            _answering.log, _answering.logged = (getattr(self, "log", None), addr), False
            try:
                original(self, req, client, addr, exc)
            finally:
                _answering.exc = _answering.request_id = _answering.line = _answering.log = None
                _answering.logged = False

        _handle_error.__wrapped__ = original  # type: ignore[attr-defined]
        Worker.handle_error = _handle_error
