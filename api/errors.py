"""One JSON error shape everywhere: ``{code, status, message, errors?, request_id}``.

``errors`` maps dotted field paths (``dosing_ranges.0.dose_max``) to lists of messages. Domain
errors map to status codes here; database outages become 503 with ``Retry-After``; anything
unexpected is logged and answered with a bare 500 body that carries no trace and no SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, g, json, request
from marshmallow import INCLUDE, Schema, fields
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from protocols import errors as domain

log = logging.getLogger("api.errors")

RETRY_AFTER_SECONDS = "2"
DATABASE_UNAVAILABLE = "The database is unavailable or busy; retry shortly."


class ErrorSchema(Schema):
    """The one error body, as documented in OpenAPI (flask-smorest's default lacks ``request_id`` and
    the precondition fields, so a contract fuzzer rightly flagged every error as off-schema). Extra keys
    are allowed: an error may carry context such as ``current_etag`` or ``retry_after``."""

    class Meta:
        unknown = INCLUDE

    code = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = fields.String(required=True, metadata={"description": "HTTP reason phrase"})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a human"})
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                         metadata={"description": "Messages by dotted field path (dosing_ranges.0.unit)"})
    request_id = fields.String(allow_none=True, metadata={"description": "Echo of X-Request-ID"})
    current_version = fields.Integer(allow_none=True, metadata={"description": "On 412/428: newest version"})
    current_etag = fields.String(allow_none=True, metadata={"description": "On 412/428: its ETag"})
    scheduled_version = fields.Integer(allow_none=True, metadata={
        "description": "On 409 from a retirement: the active version that would undo it"})
    scheduled_effective_from = fields.String(allow_none=True, metadata={
        "description": "On 409 from a retirement: when that version takes effect"})
    reason = fields.String(allow_none=True, metadata={
        "description": "Why, for a machine: on 401/403 from authentication; on 404 whether the protocol or "
                       "version does not exist, or the protocol exists with no version in effect at the time "
                       "asked (drafts or scheduled versions only, or before its first); on 503 when this "
                       "server's clock is behind the newest version's recording time",
        "enum": ["missing_credentials", "malformed_authorization", "invalid_key", "insufficient_scope",
                 "protocol_not_found", "version_not_found", "not_in_effect", "clock_behind"]})
    required_scope = fields.String(allow_none=True, metadata={
        "description": "On 403 insufficient_scope: the scope the operation needs"})
    protocol_version = fields.Integer(allow_none=True, metadata={
        "description": "On 410 from a dose check: the version that retired the protocol"})
    first = fields.String(allow_none=True, metadata={
        "description": "On 409 from a cursor that cannot continue (a ranked search whose results changed, a "
                       "changes-feed position this feed never issued): the URL to start again from"})


def documented_error(description: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An OpenAPI response object for an error answered in the one error shape (:class:`ErrorSchema`),
    for responses added to operations after the fact (authentication, body parsing); ``headers`` maps
    each header it carries to its description."""
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        response["headers"] = {name: {"description": text, "schema": {"type": "integer"}}
                               for name, text in headers.items()}
    return response


class ApiError(Exception):
    """An error the API answers on purpose, with status, message, field errors and extras."""

    def __init__(self, status: int, message: str, *, errors: Mapping[str, list[str]] | None = None,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors or {})
        self.headers = dict(headers or {})
        self.extra = extra


#: The message of a 400/422 whose ``errors`` name several fields.
INVALID_REQUEST = "The request is not valid; see errors for each offending field."

#: The attribute :func:`api.http.reads_cursor` sets on a listing view: the function that reads its cursor.
CURSOR_READER = "cursor_reader"


def cursor_errors() -> dict[str, list[str]]:
    """The errors the current request's cursor gets from its view's reader (none without one).

    A view reads its cursor after flask-smorest has validated its other query parameters, so a 422 for
    them did not name a bad cursor too, and a client fixing one error met the next (found by a probe).
    The reader needs only the raw parameters and the path's, and raises :class:`ApiError` naming the
    parameter."""
    view = current_app.view_functions.get(request.endpoint or "")
    reader = getattr(view, CURSOR_READER, None)
    if reader is None:
        return {}
    try:
        reader(request.args, **(request.view_args or {}))
    except ApiError as exc:
        return exc.errors
    return {}


def flatten_errors(messages: Any, prefix: str | None = None) -> dict[str, list[str]]:
    """Turn marshmallow's nested error dict into ``{"a.0.b": [messages]}``; errors of the whole object
    are under ``_schema``. ``prefix`` is None at the top: an empty name (``?=1``, a body key ``""``) is a
    name the client sent, and it was reported under ``_schema`` (found by probes)."""
    flat: dict[str, list[str]] = {}
    here = "_schema" if prefix is None else prefix
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            path = str(key) if prefix is None else f"{prefix}.{key}"
            if key == "_schema":
                path = here
            for sub_path, sub_messages in flatten_errors(value, path).items():
                flat.setdefault(sub_path, []).extend(sub_messages)
    elif isinstance(messages, list | tuple):
        if all(isinstance(m, str) for m in messages):
            flat[here] = [str(m) for m in messages]
        else:
            for item in messages:
                for sub_path, sub_messages in flatten_errors(item, prefix).items():
                    flat.setdefault(sub_path, []).extend(sub_messages)
    else:
        flat[here] = [str(messages)]
    return flat


def error_body(status: int, message: str, errors: Mapping[str, list[str]] | None = None, *,
               request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """The error shape; ``request_id`` defaults to the current request's (the read fast path, which
    runs outside Flask's request context, passes its own)."""
    body: dict[str, Any] = {"code": status, "status": HTTPStatus(status).phrase, "message": message}
    if errors:
        body["errors"] = dict(errors)
    body.update({k: v for k, v in extra.items() if v is not None})
    body["request_id"] = request_id if request_id is not None else getattr(g, "request_id", None)
    return body


def error_response(status: int, message: str, errors: Mapping[str, list[str]] | None = None,
                   headers: Mapping[str, str] | None = None, **extra: Any) -> Response:
    response = Response(json.dumps(error_body(status, message, errors, **extra)), status=status,
                        mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


_NOT_FOUND_REASONS: dict[type[domain.DomainError], str] = {
    domain.ProtocolNotFound: "protocol_not_found", domain.VersionNotFound: "version_not_found",
    domain.NotInEffect: "not_in_effect"}


def _domain_response(exc: domain.DomainError) -> Response:
    if isinstance(exc, domain.ProtocolExists):
        return error_response(409, exc.message)
    if isinstance(exc, domain.KeyNameTaken):
        return error_response(409, exc.message, errors={"name": [exc.message.removeprefix("key name: ")]})
    if isinstance(exc, domain.LastAdminKey):
        return error_response(409, exc.message)
    if isinstance(exc, domain.RetirementUndone):
        return error_response(409, exc.message, scheduled_version=exc.details.get("scheduled_version"),
                              scheduled_effective_from=exc.details.get("scheduled_effective_from"))
    if isinstance(exc, domain.NothingPublished):
        return error_response(409, exc.message)
    if isinstance(exc, domain.PreconditionRequired):
        return error_response(428, exc.message, current_version=exc.details.get("current_version"),
                              current_etag=exc.details.get("current_etag"), errors=exc.details.get("errors"))
    if isinstance(exc, domain.PreconditionFailed):
        # The header at fault, as the 428s and the reads' 412s name it: only the English message told a stale
        # If-Match from a matching If-None-Match (a probe).
        return error_response(412, exc.message, current_version=exc.details.get("current_version"),
                              current_etag=exc.details.get("current_etag"),
                              errors={exc.details.get("header", "If-Match"): [exc.message]})
    not_found = next((reason for kind, reason in _NOT_FOUND_REASONS.items() if isinstance(exc, kind)), None)
    if not_found is not None:  # told apart for a machine: only the English message did (a probe)
        return error_response(404, exc.message, reason=not_found)
    if isinstance(exc, domain.InvalidRecord):
        return error_response(422, exc.message, errors=exc.details.get("errors"))
    if isinstance(exc, domain.MalformedOrder):
        return error_response(400, exc.message, errors=exc.details.get("errors"))
    if isinstance(exc, domain.StorageUnavailable):
        return error_response(503, exc.message, headers={"Retry-After": RETRY_AFTER_SECONDS})
    if isinstance(exc, domain.ClockBehind):
        return error_response(503, exc.message, headers={"Retry-After": str(exc.details["retry_after"])},
                              reason="clock_behind")
    return error_response(400, exc.message)


#: SQLSTATEs of a schema that is not there: a database not migrated yet, as while a rollout's servers start
#: before ``flask protocols migrate`` has run. PostgreSQL's ``undefined_table`` was a 500 with a traceback
#: for every data request, where SQLite's "no such table" (an OperationalError) was the 503 below (found
#: by an operations probe); the readiness probe says why.
SCHEMA_MISSING = frozenset({"42P01", "3F000"})


def is_database_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, OperationalError):
        return True
    if _schema_missing(exc):
        return True
    return is_lost_connection(exc)


def _schema_missing(exc: BaseException) -> bool:
    return getattr(exc.orig if isinstance(exc, DBAPIError) else exc, "sqlstate", None) in SCHEMA_MISSING


def unavailable_reason(exc: BaseException) -> str:
    """How the log names why the database answered no: the error's type and the database's first line
    (which table is missing, which lock timed out): a table a bug names wrongly is a 503 too, and
    "ProgrammingError" alone did not say which (a review)."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    first = (str(orig).strip().splitlines() or [""])[0][:300]
    hint = " (schema not migrated?)" if _schema_missing(exc) or "no such table" in first else ""
    return f"{type(exc).__name__}{hint}: {first}" if first else type(exc).__name__


def is_lost_connection(exc: BaseException) -> bool:
    """The error came from a connection that turned out to be dead: a fresh one may well succeed."""
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


#: ``app.extensions`` key: path prefix -> how HTTP errors under it are answered when no blueprint is
#: known yet (routing errors); a blueprint with its own error shape (FHIR's OperationOutcome) adds itself.
PATH_ERROR_RENDERERS = "protocols_path_error_renderers"


def path_error_renderer() -> Callable[[HTTPException], Response] | None:
    """The error shape of the blueprint the request's path falls under (see ``PATH_ERROR_RENDERERS``),
    or None for the usual error body."""
    for prefix, render in current_app.extensions.get(PATH_ERROR_RENDERERS, {}).items():
        if request.path == prefix or request.path.startswith(prefix + "/"):
            return render
    return None


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.errors, exc.headers, **exc.extra)

    @app.errorhandler(domain.DomainError)
    def _domain_error(exc: domain.DomainError) -> Response:
        return _domain_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        # A routing error (a method no rule takes) is raised before any blueprint is known, so a
        # blueprint's own error shape is looked up by path (TRACE /fhir/R4/metadata got this REST body).
        render = path_error_renderer()
        if render is not None:
            return render(exc)
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        errors = None
        if "messages" in data:  # webargs/flask-smorest validation errors
            errors = flatten_errors(_strip_locations(data["messages"]))
            for name, messages in cursor_errors().items():
                errors.setdefault(name, messages)
        elif status == 413:  # the body as a whole is at fault (README: errors names what the client sent)
            errors = {"body": [exc.description or "too large"]}
        message = data.get("message") or exc.description or HTTPStatus(status).phrase
        if status in (400, 422) and errors and not data.get("message"):
            message = INVALID_REQUEST
        headers = dict(exc.get_headers()) if status in (405, 401) else {}
        headers.pop("Content-Type", None)
        return error_response(status, message, errors, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if is_database_unavailable(exc):
            log.warning("database unavailable: %s", unavailable_reason(exc))
            return error_response(503, DATABASE_UNAVAILABLE, headers={"Retry-After": RETRY_AFTER_SECONDS})
        log.exception("unhandled error")
        return error_response(500, "Internal server error; the request id identifies it in the logs.")


def _strip_locations(messages: Any) -> Any:
    """webargs nests errors under their location (``json``, ``query``): drop that level."""
    if isinstance(messages, Mapping) and messages and set(messages) <= {"json", "query", "headers",
                                                                         "path", "view_args", "form"}:
        merged: dict[str, Any] = {}
        for location, value in messages.items():
            if isinstance(value, Mapping):
                # A schema-level error of the body ("Invalid input type." for a JSON array) names the
                # body, as the JSON decoding errors do, not marshmallow's "_schema".
                merged.update({("body" if key == "_schema" and location == "json" else key): item
                               for key, item in value.items()})
            else:
                merged.setdefault("_schema", []).extend(value if isinstance(value, list) else [value])
        return merged
    return messages
