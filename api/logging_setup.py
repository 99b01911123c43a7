"""Structured logs: one JSON object per line, one ``request`` line per request.

Each request line carries the request id (also sent back as ``X-Request-ID``), method, path, status,
duration and the acting key's *name*. Headers, query strings and bodies are never logged, so
neither ``Authorization`` nor key material (which only ever appears in a header or in the one
response that creates a key) can reach the logs.

Under gunicorn with an access log (``gunicorn.conf.py``), the access log writes this line, in the same
shape, once the response has been sent: the app then leaves its line to the server and records only
what the server cannot know, the key's name (``ACTOR_ENVIRON_KEY``). Two lines per request (the app's
and gunicorn's, nearly the same facts) doubled the log volume, and the second line cost every request
a JSON encoding and a write (docs/performance.md, design choice 15).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

from protocols import redaction

ACCESS_LOGGER = "api.access"
_HANDLER_MARK = "_protocols_json_handler"
#: ``LogRecord`` attributes copied into the JSON object when a log call passes them in ``extra``.
EXTRA_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "bytes", "actor", "remote_addr")
#: Where the app leaves the acting key's name for the server's access log (a WSGI environ key).
ACTOR_ENVIRON_KEY = "protocols.actor"
#: Set in a gunicorn worker whose access log writes the request lines (``leave_request_lines_to_server``).
_server_writes_lines = False


def leave_request_lines_to_server(enabled: bool = True) -> None:
    """Called by ``gunicorn.conf.py`` in each worker whose access log is on: from then on the request
    line is the access log's (``request_record``), written when gunicorn has sent the response."""
    global _server_writes_lines
    _server_writes_lines = enabled


_second: tuple[int, str] = (-1, "")  # (whole second, its formatted text); replaced, never mutated


def _timestamp(created: float) -> str:
    """``2026-12-01T10:20:30.123456Z``; the part up to the second is formatted once per second
    (``strftime`` on every line was the single most expensive step of writing one)."""
    global _second
    second = int(created)
    micros = round((created - second) * 1_000_000)
    if micros >= 1_000_000:  # rounds up into the next second: let datetime carry it
        return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cached = _second
    if cached[0] != second:
        cached = _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{micros:06d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in EXTRA_FIELDS:
            if name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


#: A text field value written as it is: visible ASCII without quotes, backslashes or ``=``.
_PLAIN_VALUE = re.compile(r'[!#-<>-\[\]-~]+')


def _text_value(value: Any) -> str:
    """A field value for a text line: as it is when plain, else as a JSON string (quoted, with line
    breaks, quotes and non-ASCII escaped), so a path holding ``%0A`` cannot start a line of its own."""
    text = "-" if value is None else str(value)
    return text if _PLAIN_VALUE.fullmatch(text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    """``PROTOCOLS_LOG_JSON=false``: the same facts as the JSON lines, as ``name=value`` pairs after the
    message. The plain format printed only the message, so every request line read ``INFO api.access
    request``, without its id, method, path, status, duration, actor or address (an adversarial probe)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if not message.isprintable():  # a line break in a message would start a line of its own (a review)
            record.message = json.dumps(message)
        try:
            line = super().formatMessage(record)
        finally:
            record.message = message
        fields = [f"{name}={_text_value(record.__dict__[name])}" for name in EXTRA_FIELDS if name in record.__dict__]
        return " ".join([line, *fields])

    def formatException(self, ei: Any) -> str:
        """A traceback's lines, each indented, so none of them reads as a line of its own (an exception
        message with a line break could forge one; a review)."""
        return "\n".join(f"    | {line}" for line in super().formatException(ei).splitlines())


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now* (test runners and servers swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(json_lines: bool = True) -> None:
    """Give the ``api`` logger one stderr handler (idempotent: tests create many apps)."""
    logger = logging.getLogger("api")
    if any(getattr(h, _HANDLER_MARK, False) for h in logger.handlers):
        return
    handler = StderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def init_app(app: Flask) -> None:
    configure_logging(bool(app.config.get("PROTOCOLS_LOG_JSON", True)))

    @app.before_request
    def _start_clock() -> None:
        g.started_at = time.perf_counter()

    @app.after_request
    def _log_request(response: Response) -> Response:
        log_access(request.environ, g.get("request_id"), request.method, request.path, response.status_code,
                   g.get("started_at"), g.get("actor_name"), request.remote_addr)
        return response


_access = logging.getLogger(ACCESS_LOGGER)


def log_access(environ: MutableMapping[str, Any], request_id: str | None, method: str, path: str, status: int,
               started: float | None, actor: str | None, remote_addr: str | None) -> None:
    """The one ``request`` line per request (Flask views and the read fast path alike), or, when the
    server's access log writes it, the key's name for that line."""
    if _server_writes_lines:
        environ[ACTOR_ENVIRON_KEY] = actor
        return
    if not _access.isEnabledFor(logging.INFO):
        return
    duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
    _access.handle(request_record(request_id, method, path, status, duration_ms, actor, remote_addr))


def request_record(request_id: str | None, method: str, path: str, status: int, duration_ms: float | None,
                   actor: str | None, remote_addr: str | None, sent: int | None = None) -> logging.LogRecord:
    """The request line as a log record, for the app's logger or gunicorn's access log. ``sent``: the
    bytes of the body sent, which only the server knows."""
    path = redaction.redact(path)  # a key sent where an id goes: logs never hold one (a security probe)
    fields: dict[str, Any] = {"request_id": request_id, "method": method, "path": path, "status": status,
                              "duration_ms": duration_ms, "actor": actor, "remote_addr": remote_addr}
    if sent is not None:
        fields["bytes"] = sent
    # makeRecord is what Logger.info builds, minus walking the stack for the caller's file and line (the
    # line names its source in "logger" already).
    return _access.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, "request", (), None, extra=fields)
