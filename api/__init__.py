"""The Flask application factory (``flask --app api ...`` finds ``create_app``)."""

from __future__ import annotations

import copy
from typing import Any

import swagger_ui_bundle
from flask import Flask, Response, current_app, g, request, send_from_directory
from flask_smorest import Api

from api import (
    cds_api,
    changes_api,
    cli,
    cors,
    dosing_api,
    errors,
    fastpath,
    fhir_api,
    parsing,
    protocols_api,
    proxy,
    terminology_api,
)
from api.config import from_env
from api.extensions import API_KEY, DB_KEY
from api.http import ENTITY_TAG_LIST_PATTERN, not_modified, read_precondition_failure
from api.request_ids import new_request_id, request_id
from protocols.db import make_database


class _Api(Api):
    ERROR_SCHEMA = errors.ErrorSchema  # documents the real error body (request_id, current_etag …)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(from_env(config))
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False  # '//' must be a JSON 404, not an HTML redirect
    app.url_map.converters["int"] = parsing.AsciiIntegerConverter

    app.extensions[DB_KEY] = make_database(app.config["PROTOCOLS_DATABASE_URL"],
                                           lock_timeout_ms=app.config["PROTOCOLS_DB_LOCK_TIMEOUT_MS"],
                                           pool_size=app.config["PROTOCOLS_DB_POOL_SIZE"])

    api = _Api(app)
    app.extensions[API_KEY] = api
    for blueprint in (protocols_api.blp, terminology_api.blp, dosing_api.blp, cds_api.blp, changes_api.blp):
        api.register_blueprint(blueprint)
    fhir_api.init_app(app)  # FHIR speaks its own media type and errors; kept out of the OpenAPI document
    errors.init_app(app)
    cli.init_app(app)
    _init_request_hooks(app)
    cors.init_app(app)  # after the request id, before auth: preflights carry no key
    _init_docs_assets(app)
    _init_operations(app, api)  # protects and documents every blueprint registered above
    fastpath.init_app(app)  # after the hooks it mirrors exist (rate limiter, logging)
    # Registered last, so it runs first of the after_request hooks (Flask runs them in reverse): the
    # access log sees the 304 the client gets (it logged a list's 304 as 200; found by a probe).
    app.after_request(_conditional_get)
    # Outermost: the fast path and the app both see the client's address behind a trusted proxy.
    app.wsgi_app = proxy.TrustedProxy(  # type: ignore[method-assign]
        app.wsgi_app, proxy.TrustedProxies(str(app.config.get("PROTOCOLS_FORWARDED_ALLOW_IPS") or "")))
    return app


def _init_operations(app: Flask, api: Api) -> None:
    """Health, admin API, JSON logs, authentication, rate limits and the audit trail for every endpoint."""
    from api import admin_api, audit_log, auth, health_api, keys_cli, logging_setup, parsing, ratelimit

    api.register_blueprint(health_api.blp)
    api.register_blueprint(admin_api.blp)
    logging_setup.init_app(app)
    auth.init_app(app)
    ratelimit.init_app(app)
    audit_log.init_app(app, app.extensions[DB_KEY].engine)
    keys_cli.init_app(app)
    parsing.refuse_nul_in_path_parameters(app)
    parsing.refuse_undeclared_query_parameters(app)
    parsing.refuse_undecodable_query_parameters(app)
    parsing.refuse_undeclared_bodies(app)
    auth.document_security(app, api)
    parsing.document_body_errors(api)
    protocols_api.document_protocol_operations(api)
    _document_common_responses(api)
    parsing.document_patterns_as_ecma(api)


def _init_request_hooks(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        g.request_id = request_id(request.headers.get("X-Request-ID"))

    @app.after_request
    def _headers(response: Response) -> Response:
        if _automatic_options(response):
            # Flask answers OPTIONS with an empty 200 typed text/html; the body is empty, so say so, as the
            # CORS preflight does (api/cors.py), and keep the Allow header that lists the methods.
            response.status_code = 204
            response.set_data(b"")
            for name in ("Content-Type", "Content-Length"):
                response.headers.pop(name, None)
        response.headers["X-Request-ID"] = g.get("request_id") or new_request_id()
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def _automatic_options(response: Response) -> bool:
    """Whether ``response`` is Flask's own answer to ``OPTIONS`` on a route (not a view's, not an error)."""
    rule = request.url_rule
    return (request.method == "OPTIONS" and response.status_code == 200 and rule is not None
            and bool(getattr(rule, "provide_automatic_options", False)) and "Allow" in response.headers)


def _conditional_get(response: Response) -> Response:
    """A successful GET's preconditions, in RFC 9110's order (13.2.2): ``If-Match`` first (a 412 when it
    names no current entity-tag: :func:`api.http.read_precondition_failure`), then ``If-None-Match``
    (a 304). Responses that carry no ETag of their own (lists, pick lists, bundles) get a weak one
    computed from their bytes; version reads set their strong ETag (and 304) themselves; static files
    come with werkzeug's; streamed responses get none. A read that fails for another reason (404, 410,
    422 …) ignores both, as the RFC has it (13.2.1).

    The headers are read as the version reads read them (``api.http``), not by werkzeug's
    ``make_conditional``, which answered a GET's ``If-Match`` with 412 and the page as its body, and read
    lists the version reads ignore as malformed. Answered here, after the view, because only then is
    the ETag known; a read is safe, so having run it changes nothing."""
    if request.method not in ("GET", "HEAD") or response.status_code not in (200, 304):
        return response
    computed = (response.status_code == 200 and not response.is_streamed and not response.direct_passthrough
                and "ETag" not in response.headers)
    if computed:
        response.add_etag(weak=True)
    refusal = read_precondition_failure(response.headers.get("ETag"), weak=request.blueprint == fhir_api.blp.name)
    if refusal is not None:  # the view's or blueprint's error shape (FHIR answers an OperationOutcome)
        response.close()  # what it holds (a static file's handle, say) is released now, not never
        refused = current_app.make_response(current_app.handle_user_exception(refusal))
        if "Vary" in response.headers:  # what the answer depends on, as the response it replaces said
            refused.headers["Vary"] = response.headers["Vary"]  # (FHIR's Accept: found in review)
        return refused
    # Views that set their own ETag answer If-None-Match themselves; asking again of their 200 finds no
    # match, and a view that does not (a static file) gets its 304 here.
    if response.status_code == 200 and "ETag" in response.headers and not_modified(response.headers["ETag"]):
        response.close()  # a static file's handle
        response.status_code = 304
        response.set_data(b"")
        for name in ("Content-Type", "Content-Length"):
            response.headers.pop(name, None)
    return response


#: How every GET documents If-Match (``_conditional_get``, ``api.http.read_precondition_failure``).
_READ_IF_MATCH_PARAMETER = {
    "in": "header", "name": "If-Match", "required": False,
    "schema": {"type": "string", "pattern": ENTITY_TAG_LIST_PATTERN},
    "description": "Serve the read only if the resource's current ETag is one of these entity-tags (strong "
                   "comparison: a weak ETag, such as a list's, is matched only by *; under /fhir/R4, whose "
                   "ETags are all weak, the comparison is weak); otherwise 412. On a version read: \"only "
                   "if it is still this version\"."}
#: How every GET documents If-None-Match (``api.http.not_modified``): honoured by every read, never refused.
_READ_IF_NONE_MATCH_PARAMETER = {
    "in": "header", "name": "If-None-Match", "required": False, "schema": {"type": "string"},
    "description": "304 when one of these entity-tags matches the current ETag (weak comparison), or *. A "
                   "malformed value matches nothing: the read is served as if it were absent."}
_READ_IF_MATCH_FAILED = ("If-Match named no current entity-tag of the resource; current_etag is the one it has "
                         "(absent when it has none)")
_READ_IF_MATCH_MALFORMED = "A malformed If-Match header is a 400 too, naming If-Match in errors."

#: Operations that never read the database (liveness).
_NO_DATABASE = {("get", "/v1/health")}


def _document_common_responses(api: Api) -> None:
    """Name in OpenAPI the statuses every operation of a kind can answer, which no view declares:
    304 for every GET (``_conditional_get``), 404 wherever a path names a protocol, and 503 wherever
    the database is read (an outage, or a lock held elsewhere past PROTOCOLS_DB_LOCK_TIMEOUT_MS).
    Until they were listed, a client generated from the contract had only ``default`` for them."""
    retry_after = {"Retry-After": {"description": "Seconds to wait before retrying",
                                   "schema": {"type": "integer"}}}
    for path, path_item in api.spec._paths.items():
        for method, operation in path_item.items():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            if method == "get":
                responses.setdefault("304", {"description": "Not modified: If-None-Match matched the ETag"})
                responses.setdefault("412", errors.documented_error(_READ_IF_MATCH_FAILED))
                # A copy each: a shared dict became YAML anchors and aliases in openapi.yaml.
                parameters = operation.setdefault("parameters", [])
                parameters.append(copy.deepcopy(_READ_IF_MATCH_PARAMETER))
                if not any(p.get("in") == "header" and p.get("name") == "If-None-Match" for p in parameters
                           if isinstance(p, dict)):  # found by an adversarial probe: honoured, not documented
                    parameters.append(copy.deepcopy(_READ_IF_NONE_MATCH_PARAMETER))
                if path.startswith("/v1/health"):
                    responses.setdefault("400", errors.documented_error(_READ_IF_MATCH_MALFORMED))
            if "{protocol_id}" in path:
                responses.setdefault("404", errors.documented_error("No such protocol (or no such version)"))
            if not path.startswith("/v1/health") and not any(
                    p.get("in") == "query" for p in operation.get("parameters", []) if isinstance(p, dict)):
                responses.setdefault("422", errors.documented_error(
                    f"{parsing.UNDECLARED_QUERY} Each one sent is named in errors"))
            if not path.startswith("/v1/health") and "requestBody" not in operation:
                responses.setdefault("400", errors.documented_error(
                    parsing.UNDECLARED_BODY + (f" {_READ_IF_MATCH_MALFORMED}" if method == "get" else "")))
            if (method, path) not in _NO_DATABASE:
                unavailable = errors.documented_error("The database is unavailable or busy; see Retry-After")
                responses.setdefault("503", {**unavailable, "headers": copy.deepcopy(retry_after)})


def _init_docs_assets(app: Flask) -> None:
    """Serve Swagger UI's files from the installed package: /docs works offline."""

    @app.route("/docs-static/<path:filename>")
    def docs_static(filename: str) -> Response:
        """werkzeug's own conditional handling (``conditional=True``) answered a failed If-Match with a
        412 carrying the whole file and a day's public cache, ``If-Match: *`` or a malformed list with
        412, and a Range beside a failed If-Match with 206 (found by a probe). Served unconditionally,
        with werkzeug's strong ETag: ``_conditional_get`` evaluates If-Match and then If-None-Match, as
        for every GET. Range and If-Modified-Since are not evaluated here (the files are small and
        Swagger UI sends neither)."""
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, max_age=86400, conditional=False)
