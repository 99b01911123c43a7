"""The read fast path: ``GET``/``HEAD /v1/protocols/{id}`` served without Flask's request machinery.

Why it exists: EHR integrations call this one endpoint on every medication order, and under load
Flask's request context, flask-smorest's argument parsing and six before/after-request hooks cost
more than the database read itself (docs/performance.md has the profiles). Versions are immutable
and stored as the exact bytes served, so the happy path is: check the caller, count it against its
rate limit, resolve the version in effect, send the stored bytes (or a 304) with their ETag.

Why it is safe: it serves **only the happy path** and hands every other request, unchanged, to the
Flask app: query parameters (``as_of``), CORS (an ``Origin`` header), ``If-Match`` (a precondition
Flask evaluates after the view: ``api._conditional_get``), an ``Authorization`` header it
cannot accept (malformed, unknown/revoked/expired key, missing scope), anonymous reads when the
server does not allow them, a rate-limited caller, a protocol that does not exist, is not in effect or
was retired, an id outside the plain slug alphabet, an error from a connection that turned out to be
dead (so Flask makes one more attempt, on a fresh connection), and anything it does not expect. Any
other database error (a lock or connect timeout, an exhausted pool) it answers itself with the 503
Flask would give: another attempt would only wait as long again. Every decision it makes calls the
same function the Flask hooks call (``auth.resolve_scope``/``bearer_token``, ``keys.authenticate``
(``keys.identify`` and ``KeyInfo.is_active``, which Flask's hook reaches through ``keys.state`` so the
audit trail names a refused key; the fast path hands refused keys to Flask),
``ratelimit.identity``/``headers``, ``request_ids.request_id``, ``http.none_match``,
``logging_setup.log_access``, ``versioning.effective``/``effective_etag``, ``errors.error_body``), and
``tests/api/test_fastpath.py`` sends the same requests through both paths and requires identical
status, headers and body. ``PROTOCOLS_READ_FAST_PATH=false`` turns it off.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, json

from api import auth, cors
from api.errors import (
    DATABASE_UNAVAILABLE,
    RETRY_AFTER_SECONDS,
    error_body,
    is_database_unavailable,
    is_lost_connection,
    unavailable_reason,
)
from api.errors import log as error_log
from api.extensions import DB_KEY
from api.http import CACHE_REVALIDATE, none_match
from api.logging_setup import log_access
from api.ratelimit import COUNTED_VERDICT, RATELIMITER_KEY, RateLimiter
from api.ratelimit import headers as rate_limit_headers
from api.ratelimit import identity as rate_limit_identity
from api.request_ids import request_id
from protocols import keys, versioning
from protocols.db import Database
from protocols.errors import DomainError

PREFIX = "/v1/protocols/"
ENDPOINT = "protocols.get_protocol"
RULE = "/v1/protocols/<string:protocol_id>"
#: Ids the fast path serves: the slug alphabet, so the path needs no decoding to be the id.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._~-]{1,200}")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Headers every response of the app carries (api/__init__.py ``_headers``), in the same order.
_FIXED = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))


class ReadFastPath:
    """WSGI middleware in front of the Flask app (see the module docstring)."""

    def __init__(self, app: Flask, wsgi_app: WsgiApp) -> None:
        self.wsgi_app = wsgi_app
        self.db: Database = app.extensions[DB_KEY]
        self.limiter: RateLimiter | None = app.extensions.get(RATELIMITER_KEY)
        self.anonymous_reads = bool(app.config.get("PROTOCOLS_ANONYMOUS_READS"))
        self.scope = auth.resolve_scope(app, ENDPOINT, "GET", RULE)
        # As api/cors.py adds to every response when browser origins are configured.
        self.fixed = [*_FIXED, *([("Vary", "Origin")] if cors.allowed_origins(app) else [])]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        path: str = environ.get("PATH_INFO", "")
        if ((method == "GET" or method == "HEAD") and path.startswith(PREFIX) and not environ.get("QUERY_STRING")
                and "HTTP_ORIGIN" not in environ and "HTTP_IF_MATCH" not in environ
                and _PLAIN_ID.fullmatch(path, len(PREFIX))
                and environ.get("CONTENT_LENGTH") in (None, "", "0") and "HTTP_TRANSFER_ENCODING" not in environ):
            try:
                served = self._serve(environ, path[len(PREFIX):], method == "HEAD")
            except Exception:
                served = None  # anything unexpected (a lost connection …) is for Flask to answer
            if served is not None:
                status, headers, body = served
                start_response(status, headers)
                return [body]
        return self.wsgi_app(environ, start_response)

    def _serve(self, environ: dict[str, Any], protocol_id: str,
               head: bool) -> tuple[str, list[tuple[str, str]], bytes] | None:
        started = time.perf_counter()
        actor: str | None = None
        key_id: str | None = None
        remote_addr = environ.get("REMOTE_ADDR")
        verdict = None
        try:
            if self.scope is not None:
                header = environ.get("HTTP_AUTHORIZATION")
                if header is None:
                    if not (self.scope == keys.READ and self.anonymous_reads):
                        return None
                else:
                    token = auth.bearer_token(header)
                    key = keys.authenticate(self.db, token) if token else None
                    if key is None or not key.has_scope(self.scope):
                        return None
                    actor, key_id = key.name, key.id
            if self.limiter is not None and self.scope is not None:
                verdict = self.limiter.hit(rate_limit_identity(key_id, remote_addr))
                environ[COUNTED_VERDICT] = verdict  # counted once, even if Flask answers after all
                if not verdict.allowed:
                    return None
            if_none_match = environ.get("HTTP_IF_NONE_MATCH")
            current = versioning.effective_etag(self.db, protocol_id) if if_none_match else None
            if current is not None and current[0] != "retired" and none_match(if_none_match, current[1]):
                # The client's copy is the version in effect: answered without reading the document.
                status, headers = "304 NOT MODIFIED", [("ETag", current[1]), ("Cache-Control", CACHE_REVALIDATE)]
                body: bytes | None = b""
            else:
                try:
                    stored = versioning.effective(self.db, protocol_id)
                except DomainError:
                    return None  # 404 / 410: Flask answers with the error shape or the retirement version
                body = stored.document.encode()
                if none_match(if_none_match, stored.etag):  # a version took effect between the two reads
                    status = "304 NOT MODIFIED"
                    headers = [("ETag", stored.etag), ("Cache-Control", CACHE_REVALIDATE)]
                    body = b""
                else:
                    status = "200 OK"
                    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                               ("ETag", stored.etag), ("Cache-Control", CACHE_REVALIDATE)]
        except Exception as exc:
            if not is_database_unavailable(exc) or is_lost_connection(exc):
                raise  # for Flask: a fresh connection may succeed, or it is not the database's doing
            # A lock or connect timeout, an exhausted pool: another attempt would wait as long again.
            error_log.warning("database unavailable: %s", unavailable_reason(exc))
            status, headers, body = "503 SERVICE UNAVAILABLE", [], None
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        if body is None:  # Flask's 503 for the same failure (api/errors.py), byte for byte
            body = json.dumps(error_body(503, DATABASE_UNAVAILABLE, request_id=rid)).encode()
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Retry-After", RETRY_AFTER_SECONDS), ("Cache-Control", "no-store")]
        headers.append(("X-Request-ID", rid))
        headers.extend(self.fixed)
        if verdict is not None:
            headers.extend(rate_limit_headers(verdict).items())
        environ.pop(COUNTED_VERDICT, None)
        log_access(environ, rid, "HEAD" if head else "GET", environ.get("PATH_INFO", ""), int(status[:3]), started,
                   actor, remote_addr)
        return status, headers, b"" if head else body


def init_app(app: Flask) -> None:
    if app.config.get("PROTOCOLS_READ_FAST_PATH", True):
        app.wsgi_app = ReadFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
