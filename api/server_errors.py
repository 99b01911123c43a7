"""The requests gunicorn refuses itself are answered in the service's JSON error shape.

gunicorn rejects some requests before the app sees them: a request line longer than
``limit_request_line`` (414), more or larger headers than ``limit_request_fields`` /
``limit_request_field_size`` allow (431), a malformed request line, method or header (400), a
transfer coding it does not implement (501). For these it writes an HTML page through
``gunicorn.util.write_error``. An integration parses every error body as JSON (``code``, ``status``,
``message``, ``request_id``), as it does the app's own, so gunicorn.conf.py installs this writer in
each worker instead. Status line, ``Connection: close`` and the reason are gunicorn's; only the body
and its headers change.
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

from api.errors import error_body
from api.request_ids import new_request_id

#: gunicorn's messages can quote what the client sent (a header line, a request line); enough of it
#: to recognize the request, not an echo of a 8 KB line.
MAX_MESSAGE_CHARS = 200


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``write_error`` with the app's error body (same signature, same status line)."""
    message = (mesg or reason)[:MAX_MESSAGE_CHARS]
    request_id = new_request_id()
    body = json.dumps(error_body(status_int, message, request_id=request_id)).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\n"
            "Connection: close\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Request-ID: {request_id}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Cache-Control: no-store\r\n"
            "\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Make gunicorn's workers answer the requests they refuse with the JSON error body.

    ``Worker.handle_error`` looks ``util.write_error`` up on the module at call time, so replacing the
    module attribute is enough; called from gunicorn.conf.py's ``post_worker_init``.
    """
    util.write_error = write_json_error
