"""Gunicorn settings for production (``make serve``): ``gunicorn -c gunicorn.conf.py "api:create_app()"``.

Every setting can be overridden from the environment (names below) or the command line. Workers are
separate processes that share nothing but PostgreSQL (and Redis for rate limits), so any number of
workers and instances can run side by side: API keys are checked in the database on every request,
and writes are serialized by the database (see protocols/versioning.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from gunicorn.glogging import Logger

from protocols.redaction import redact


def _number(name: str, default: float, low: float, high: float, kind: type = int) -> float:
    """An environment setting as a number within [low, high], or one line naming it: "two" workers was
    a traceback ("Failed to read config file"), and a GIL switch interval of 0 killed every worker as
    it booted (found by an operations probe)."""
    raw = os.environ.get(name, "")
    if raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise SystemExit(f"Error: {name} must be a {'whole ' if kind is int else ''}number from {low} to {high}, "
                         f"got {raw!r}")
    return value


def _bind(name: str, default: str) -> str:
    """What gunicorn binds: ``host:port`` (``[v6]:port``) with a port from 1 to 65535, a host alone (port
    8000), ``unix:<path>`` or ``fd://<n>`` (systemd socket activation), or one line naming the setting:
    port 99999 was a 30-line traceback (found by an operations probe)."""
    raw = os.environ.get(name, "").strip() or default
    if (raw.startswith("unix:") and len(raw) > len("unix:")) or re.fullmatch(r"fd://[0-9]+", raw):
        return raw
    if re.fullmatch(r"\[[0-9A-Fa-f:.]+\]|[0-9]{1,3}(\.[0-9]{1,3}){3}|localhost", raw):  # an address alone: port 8000
        return raw
    host, _, port = raw.rpartition(":")
    if not host or any(c.isspace() for c in host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SystemExit(f"Error: {name} must be host:port (a port from 1 to 65535), unix:<path> or fd://<n>, "
                         f"got {raw!r}")
    return raw


bind = _bind("PROTOCOLS_BIND", "127.0.0.1:8000")
workers = int(_number("PROTOCOLS_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 8), 1, 256))
worker_class = "sync"
# A request that takes longer than this is killed and its worker replaced (no request here should:
# the database's own connect/statement limits answer 503 well before).
timeout = int(_number("PROTOCOLS_WORKER_TIMEOUT", 30, 1, 3600))
graceful_timeout = int(_number("PROTOCOLS_GRACEFUL_TIMEOUT", 30, 1, 3600))
keepalive = 5
# Recycle workers now and then so slow leaks cannot accumulate; jitter avoids all restarting at once.
max_requests = int(_number("PROTOCOLS_MAX_REQUESTS", 10000, 0, 10**9))  # 0: never recycle
max_requests_jitter = 500
# Bound request lines and headers (the JSON body limit is MAX_CONTENT_LENGTH in the app).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# The same default as the app's (api/proxy.py): unset, no peer is trusted with X-Forwarded-* headers
# (gunicorn's own default, 127.0.0.1, let a local client set the scheme of generated links).
forwarded_allow_ips = os.environ.get("PROTOCOLS_FORWARDED_ALLOW_IPS", "")
# gunicorn's runtime control socket lives at one fixed path per user: several instances on one host
# would fight over it, and nothing here needs it.
control_socket_disable = True

# Logs: one line per request, the app's request line (api/logging_setup.py: request id, method, path,
# status, duration, bytes sent, key name, client address; JSON unless PROTOCOLS_LOG_JSON=false), written
# by gunicorn's access log once the response has been sent (requests gunicorn refuses itself included).
# It never holds headers, query strings or bodies, and a key sent in the path is redacted.
# Empty turns gunicorn's access log off (the app then writes its own lines); gunicorn itself read "" as a
# file name and refused to start (a review).
accesslog = os.environ.get("PROTOCOLS_ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("PROTOCOLS_LOG_LEVEL", "info")


def redact_keys(record: logging.LogRecord) -> bool:
    """A log filter that writes any API key in a message, or in the traceback it carries, as
    ``tpk_[redacted]``. gunicorn's warning about a request it refuses quotes the request line or header
    line at fault, key and all (``Invalid HTTP Header: 'Authorization Bearer tpk_…'``, a header without
    its colon; a key in the query of a malformed request line), and the logs promise no keys (found by
    a security probe)."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed call (wrong arguments): logging reports it, as it did without this filter
        return True
    redacted = redact(message)
    if redacted != message:
        record.msg, record.args = redacted, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    return True


class JsonAccessLogger(Logger):
    """gunicorn's logger, whose access log writes the app's request line.

    gunicorn's own access line (``access_log_format``) repeated the app's line with fewer facts, so each
    request was logged twice. Now the app records the key's name in the request's environ and leaves
    the line to this log, which knows what the app cannot: the bytes sent, the time until the last one,
    and the requests gunicorn answers itself: a refusal's line carries the id of its error body (and the
    peer's address: no proxy header was read), and a response that failed before anything was sent is
    logged once, as the 500 the client gets, under its request id. Set up in each worker by
    ``post_worker_init`` (``write_request_lines``), which imports the app's modules: the master never
    loads the service."""

    _request_record: Callable[..., logging.LogRecord] | None = None
    _actor_key = ""
    _errors: Any = None  # api.server_errors, once set up

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log.addFilter(redact_keys)
        self._request_record = None  # a reload replaces the handlers: each worker sets them up again

    def write_request_lines(self) -> None:
        """Give the access log's handlers the app's formatter and tell the app to leave its line to them;
        with the access log off (``PROTOCOLS_ACCESS_LOG=``), the app writes its own."""
        from api import logging_setup, server_errors
        from api.config import ConfigError, from_env

        if not self.access_log_enabled:
            return
        try:
            json_lines = bool(from_env()["PROTOCOLS_LOG_JSON"])
        except ConfigError:  # the service's settings check (on_starting) has named it already
            json_lines = True
        formatter = logging_setup.JsonFormatter() if json_lines else logging_setup.TextFormatter()
        for handler in self.access_log.handlers:
            handler.setFormatter(formatter)
        self._request_record = logging_setup.request_record
        self._actor_key = logging_setup.ACTOR_ENVIRON_KEY
        self._errors = server_errors
        logging_setup.leave_request_lines_to_server()

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        if self._request_record is None:
            self.write_request_lines()
        try:
            errors = self._errors
            status = getattr(resp, "status_code", None)  # set by start_response; handle_error's has none
            facts = {"request_id": next((value for name, value in resp.headers if name.lower() == "x-request-id"),
                                        None),
                     "method": environ.get("REQUEST_METHOD") or getattr(req, "method", None) or "-",
                     "path": _path(environ, req), "actor": environ.get(self._actor_key),
                     "remote_addr": environ.get("REMOTE_ADDR")}
            failed = sys.exc_info()[1]  # in the handler's finally: the exception on its way out, if any
            if isinstance(status, int) and not resp.headers_sent and isinstance(failed, Exception) \
                    and not isinstance(failed, OSError):
                errors.defer_line(req, facts)  # handle_error answers a 500 and logs that, with these facts
                return
            errors.defer_line(None, None)
            if not isinstance(status, int):  # handle_error's answer: a refusal, or a failed response's 500
                status = int(str(resp.status)[:3])
                facts = {**facts, **errors.answering_line(), "request_id": errors.answering_request_id()}
                errors.answered_logged()  # the error writer then asks for no line of its own
            self._write(facts, status, round(request_time.total_seconds() * 1000, 2), getattr(resp, "sent", None))
        except Exception:
            self.error(traceback.format_exc())

    def refusal_line(self, status: int, request_id: str, addr: Any) -> None:
        """The line of a request gunicorn refused before it had parsed one (a request line or headers it
        could not read, too long, too many): nothing of it is known but the peer."""
        if not self.access_log_enabled or self._request_record is None:
            return
        try:
            peer = addr[0] if isinstance(addr, tuple | list) and addr else None
            self._write({"request_id": request_id, "method": "-", "path": "", "actor": None, "remote_addr": peer},
                        status, None, None)
        except Exception:
            self.error(traceback.format_exc())

    def _write(self, facts: dict[str, Any], status: int, duration_ms: float | None, sent: int | None) -> None:
        build = self._request_record
        assert build is not None
        self.access_log.handle(build(facts["request_id"], facts["method"], facts["path"], status, duration_ms,
                                     facts["actor"], facts["remote_addr"], sent=sent))


def _path(environ: dict[str, Any], req: Any) -> str:
    """The request's path as the app reads it: WSGI's ``PATH_INFO`` holds the raw bytes as Latin-1, which
    Werkzeug decodes as UTF-8 (a non-ASCII path was logged garbled; a review); ``handle_error``'s environ
    has none, the parsed request's path then."""
    raw = environ.get("PATH_INFO")
    if raw is None:
        return str(getattr(req, "path", "") or "")
    return str(raw).encode("latin-1", "replace").decode("utf-8", "replace")


logger_class = JsonAccessLogger

#: How long a thread may hold the GIL before another one that is ready (a request arriving on the
#: main thread, say) gets it. CPython's default, 5 ms, puts up to 5 ms of waiting in front of a
#: request that arrives while another thread of the worker is busy; this service's requests take
#: well under 1 ms of CPU, so a finer interval costs little and keeps the tail short.
switch_interval_s = _number("PROTOCOLS_GIL_SWITCH_INTERVAL", 0.0005, 0.00001, 1.0, float)


def on_starting(server: object) -> None:
    """Check the app's settings once, in the master, before any worker boots: a setting that cannot work
    (``PROTOCOLS_ANONYMOUS_READS=perhaps``) was found by each worker's ``create_app()`` and reported as a
    39-line traceback, "Worker failed to boot", instead of the one line naming the variable that
    ``flask`` prints (found by an operations probe). Only for this service's app: the benchmark's bare
    baselines (bench/baselines.py) share this file and must not carry the service's modules (a review)."""
    if not str(getattr(getattr(server, "app", None), "app_uri", "") or "").startswith("api:"):
        return
    from api.config import ConfigError, from_env

    try:
        from_env()
    except ConfigError as exc:
        raise SystemExit(f"Error: {exc.message}") from None


def post_worker_init(worker: object) -> None:
    """Warm up, then keep garbage-collection pauses out of request latency.

    Everything loaded by now (Flask, SQLAlchemy, marshmallow, the app, terminology tables) lives as
    long as the worker; ``gc.freeze()`` moves it out of the collector's reach, so a full collection
    walks only what requests allocate instead of the whole heap (full collections were the
    tens-of-milliseconds outliers in the p99 at 70 % load, docs/performance.md).
    """
    import gc
    import sys

    from api import server_errors
    from protocols import dose_units, draft_orders, units
    from schemas import fields

    # Build the two UCUM registries now (~0.5 s each: float for validation messages, Decimal for dose
    # arithmetic); otherwise the first write or dose check a worker takes waits for them. The same for
    # marshmallow's URL patterns (40-60 ms each: the first write and the first CDS Hooks call) and the
    # FHIR models a CDS Hooks call validates its draft orders with (~170 ms: the first call).
    units.check_ucum_dose_unit("mg/kg/h")
    dose_units.parse_dose_unit("mg/kg/h")
    fields.compile_url_patterns()
    draft_orders.warm_up()
    # Requests gunicorn refuses itself (request line or headers too long, malformed) get the app's
    # JSON error body instead of gunicorn's HTML page (api/server_errors.py).
    server_errors.install()
    # The request line is the access log's from the first request on (JsonAccessLogger).
    # By its method, not its class: a reload (SIGHUP) runs this file again, so the arbiter's logger, which it
    # keeps, is an instance of the class the first run made (a review: a reloaded worker logged twice).
    write_request_lines = getattr(getattr(worker, "log", None), "write_request_lines", None)
    if write_request_lines is not None:
        write_request_lines()
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(switch_interval_s)
