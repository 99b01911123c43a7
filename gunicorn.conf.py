"""Gunicorn settings for production (``make serve``): ``gunicorn -c gunicorn.conf.py "api:create_app()"``.

Every setting can be overridden from the environment (names below) or the command line. Workers are
separate processes that share nothing but PostgreSQL (and Redis for rate limits), so any number of
workers and instances can run side by side: API keys are checked in the database on every request,
and writes are serialized by the database (see protocols/versioning.py).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from typing import Any

from gunicorn.glogging import Logger, SafeAtoms

from protocols.keys import redact


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

# Logs: the app writes one JSON object per request to stderr (api/logging_setup.py, with request id,
# status, duration and key name). Gunicorn's access log is JSON too and carries no headers: never
# add %({authorization}i)s here.
accesslog = os.environ.get("PROTOCOLS_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("PROTOCOLS_LOG_LEVEL", "info")
access_log_format = (
    '{"time":"%(t)s","logger":"gunicorn.access","remote_addr":"%(h)s","method":"%(m)s","path":"%(U)s",'
    '"status":%(s)s,"bytes":"%(B)s","duration_ms":%(M)s,"request_id":"%({x-request-id}o)s"}'
)


class JsonSafeAtoms(SafeAtoms):
    """gunicorn's atoms escaped for a JSON string: its own escaping covers '"' only, so a request for
    ``/v1/a%0Ab`` split a line in two and ``/v1/c%5C`` swallowed the closing quote (any client could
    write lines that are not JSON; found by an adversarial probe).

    Escaped as the format reads them, not all up front: the atoms hold every request and response
    header and the format reads eight of them; escaping them all was 6 % of the server's CPU on a 304
    (``bench/profile.py --path-kind get_304 --gil``, docs/performance.md)."""

    def __init__(self, atoms: dict[str, object]) -> None:  # replaces SafeAtoms' escaping, not added to it
        dict.__init__(self, atoms)

    def __getitem__(self, key: str) -> object:
        value = super().__getitem__(key)  # SafeAtoms: header names case-blind, "-" for what is missing
        # ASCII escapes: a raw U+0085 or U+2028 (a line break to str.splitlines) cannot split a line either.
        # A key sent in the path (a templated URL filled with the wrong variable) is redacted, as the error
        # log's filter redacts one in a malformed request line (a security probe).
        return json.dumps(redact(value))[1:-1] if isinstance(value, str) else value




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
    atoms_wrapper_class = JsonSafeAtoms

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log.addFilter(redact_keys)


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
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(switch_interval_s)
