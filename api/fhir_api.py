"""``/fhir/R4``: a read-only FHIR R4 face over the registry, for EHR integrations.

Serves ``MedicationKnowledge`` (read, vread, history, search), the ``CapabilityStatement`` that
describes exactly that, the StructureDefinitions/CodeSystems of the extensions and codes it emits,
and a synchronous ``$export``-style NDJSON stream. The mapping itself is pure domain code in
``protocols/fhir.py``; reads live in ``protocols/fhir_query.py``; this module only speaks HTTP.

Every error under ``/fhir/R4`` is an ``OperationOutcome`` (handlers scoped to this blueprint, plus a
catch-all route so unknown paths and methods are answered in FHIR too). Parameters the server does
not implement follow ``Prefer: handling=``: ``strict`` (the default, as everywhere in this API) is a
400 naming each one; ``lenient`` ignores them and says so - in an ``OperationOutcome`` entry of a
Bundle, or in a ``Warning`` header elsewhere. Malformed values of supported parameters are always 400.

These endpoints are deliberately left out of the OpenAPI document: their contract is FHIR's, stated
by ``GET /fhir/R4/metadata``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, NoReturn
from urllib.parse import urlencode

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from api.auth import requires_scope
from api.errors import PATH_ERROR_RENDERERS, ApiError, is_database_unavailable, unavailable_reason
from api.extensions import get_db
from api.http import CACHE_IMMUTABLE, CACHE_REVALIDATE, add_vary, not_modified, request_root_url
from api.parsing import Blueprint
from protocols import errors as domain
from protocols import fhir, fhir_query, versioning
from protocols.fhir import Issue
from protocols.fhir_query import InvalidSearch, Unsupported
from protocols.paging import encode_cursor
from protocols.timeutil import format_rfc3339, utcnow

log = logging.getLogger("api.fhir")

FHIR_JSON = "application/fhir+json"
#: DSTU2's name for FHIR JSON. ``_format`` takes it (JSON_FORMATS), so ``Accept`` does too, as the R4 type:
#: it was a 406 in the header and a 200 in the parameter (found by an adversarial probe).
LEGACY_FHIR_JSON = "application/json+fhir"
#: ``g`` key: the JSON media type negotiated for this request's answer (FHIR_JSON unless refused).
_ANSWER_TYPE = "fhir_answer_type"
#: Where this request's ``_pretty`` is kept (:func:`_read_pretty`).
_PRETTY = "fhir_pretty"
FHIR_NDJSON = "application/fhir+ndjson"
JSON_FORMATS = ("json", "application/json", FHIR_JSON, LEGACY_FHIR_JSON)
NDJSON_FORMATS = (FHIR_NDJSON, "application/ndjson", "ndjson")
RETRY_AFTER_SECONDS = "2"
EXPORT_PAGE_SIZE = 100
#: When the CapabilityStatement last changed: bump it with any change to what this face supports.
CAPABILITY_DATE = "2026-11-30"

#: A version id as this server assigns them: 1, 2, … (ASCII digits, no leading zero).
_VERSION_ID = re.compile(r"[1-9][0-9]{0,8}")

blp = Blueprint("fhir", __name__, url_prefix="/fhir/R4",
                description="FHIR R4 (read-only): MedicationKnowledge read, vread, history, search; "
                            "CapabilityStatement at /fhir/R4/metadata.")


def init_app(app: Flask) -> None:
    """Register the FHIR face. Plain Flask registration keeps it out of the OpenAPI document."""
    app.register_blueprint(blp)
    app.extensions.setdefault(PATH_ERROR_RENDERERS, {})[str(blp.url_prefix)] = _http_error


#: What every path of this read-only FHIR server allows (the 405 of a write names the same).
ALLOWED_METHODS = "GET, HEAD, OPTIONS"


@blp.before_request
def _options() -> Response | None:
    """OPTIONS names what the server does, not what the catch-all route accepts in order to answer
    writes with a FHIR 405 (Flask's automatic answer listed PUT, POST, PATCH and DELETE too). CORS
    preflights never get here: the app's CORS hook answers them first."""
    if request.method != "OPTIONS":
        return None
    response = Response(status=200)
    response.headers["Allow"] = ALLOWED_METHODS
    return response


@blp.after_request
def _vary_on_accept(response: Response) -> Response:
    """Every answer here is in the JSON type ``Accept`` chose (``application/fhir+json`` or
    ``application/json``, errors included) under one ETag, and a version read is cached for a year:
    without ``Vary: Accept`` a cache could hand either client the other's type (adversarial probe)."""
    add_vary(response, "Accept")
    return response


# ----------------------------------------------------------------------------- helpers


class UnsupportedParameters(Exception):
    """Parameters this server does not implement, under ``Prefer: handling=strict``."""

    def __init__(self, items: Sequence[Unsupported]) -> None:
        super().__init__("unsupported parameters")
        self.items = list(items)


def base_url() -> str:
    """The FHIR base of this service: configured (``PROTOCOLS_FHIR_BASE_URL``) or from the request."""
    configured = current_app.config.get("PROTOCOLS_FHIR_BASE_URL")
    return str(configured).rstrip("/") if configured else request_root_url().rstrip("/") + "/fhir/R4"


#: FHIR R4 (http.html): "requests and responses SHALL explicitly set the character encoding to UTF-8 using
#: the charset parameter": HTTP's default for a type without one is ISO-8859-1, and Werkzeug adds it to
#: ``text/*`` types only (a conformance probe).
CHARSET = "; charset=utf-8"


def fhir_response(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None,
                  ) -> Response:
    text = (json.dumps(body, ensure_ascii=False, indent=2) if g.get(_PRETTY)
            else json.dumps(body, ensure_ascii=False, separators=(",", ":")))
    response = Response(text, status=status, content_type=g.get(_ANSWER_TYPE, FHIR_JSON) + CHARSET)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def bundle_response(body: Mapping[str, Any]) -> Response:
    """A search or history Bundle with a validator that changes only when its content does.

    ``meta.lastUpdated`` of a Bundle is the moment it was assembled, so an ETag of the bytes (what
    other GETs get) differed on every request and ``If-None-Match`` never matched. The ETag is of the
    Bundle without that timestamp; a match is a 304, as for every other GET."""
    stable = {**body, "meta": {k: v for k, v in body.get("meta", {}).items() if k != "lastUpdated"}}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    etag = f'W/"{digest}"'
    headers = {"Cache-Control": CACHE_REVALIDATE, "ETag": etag}
    if not_modified(etag):
        response = Response(status=304)
        response.headers.update(headers)
        return response
    return fhir_response(body, headers=headers)


def outcome_response(status: int, issues: Sequence[Issue], headers: Mapping[str, str] | None = None) -> Response:
    return fhir_response(fhir.operation_outcome(issues), status, {"Cache-Control": "no-store", **(headers or {})})


def handling() -> str:
    """``Prefer: handling=strict|lenient``; strict unless the client asks for leniency."""
    for part in request.headers.get("Prefer", "").replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling" and value.strip().strip('"').lower() == "lenient":
            return "lenient"
    return "strict"


def check_unsupported(items: Sequence[Unsupported]) -> list[Issue]:
    """Raise under strict handling; under lenient return the warnings to report."""
    if items and handling() == "strict":
        raise UnsupportedParameters(items)
    return [Issue("warning", "not-supported", f"{item.reason}; ignored (Prefer: handling=lenient)",
                  (item.param,)) for item in items]


def simple_params(allowed: Sequence[str] = fhir_query.HTTP_PARAMS) -> list[Issue]:
    """For endpoints without search parameters: only ``allowed`` names are understood."""
    unsupported = [Unsupported(name, f"parameter '{name}' is not supported here")
                   for name in request.args if name not in allowed]
    return check_unsupported(unsupported)


def warning_headers(warnings: Sequence[Issue]) -> dict[str, str]:
    if not warnings:
        return {}
    text = "; ".join(w.diagnostics for w in warnings)
    # Parameter names come from the client: keep the header printable ASCII (no CR/LF, no quotes).
    text = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "?" for ch in text)
    return {"Warning": f'299 - "{text}"'}


def negotiate(formats: Sequence[str] = JSON_FORMATS, media_types: Sequence[str] = (FHIR_JSON, "application/json"),
              ) -> str:
    """JSON must be acceptable (this server has no XML); else 406. ``_format``, when given, decides
    alone: FHIR R4 (http.html#mime-type) has it override ``Accept`` for clients that cannot set the
    header (a browser link), so ``_format=json`` with ``Accept: text/html`` is answered in JSON.

    Returns the media type to answer in: of ``media_types``, the one the client rates highest (the first
    on a tie). An
    Accept entry with ``q=0`` refuses that type (``application/fhir+json;q=0, */*;q=0.1`` was answered
    in fhir+json; it now gets ``application/json``), and ``_format`` checks ``fhirVersion`` as Accept
    does (``_format=application/fhir+json;fhirVersion=5.0`` was a 200; found by an adversarial probe)."""
    _read_pretty()
    requested = request.args.get("_format")
    if requested is not None:
        media, *parameters = (part.strip().lower() for part in requested.split(";"))
        if media not in formats or not _r4(parameters):
            hint = " (a '+' sent unencoded reads as a space: send it as %2B)" if " " in media else ""
            raise _NotAcceptable(f"_format '{requested}' is not supported{hint}; use one of {', '.join(formats)}",
                                 "_format")
        return _answer(media_types[0])
    entries = list(request.accept_mimetypes)
    if not entries:
        return _answer(media_types[0])
    qualities = {media: _quality(media, entries) for media in media_types}
    if not any(quality > 0 for quality in qualities.values()):
        raise _NotAcceptable(f"cannot answer with any of the Accept types; this server sends {media_types[0]}",
                             "Accept")
    # The type the client rates highest, the server's order breaking ties: the first type the client
    # did not refuse answered application/fhir+json;q=0.5 to a client preferring application/json;q=0.9
    # (adversarial probe).
    return _answer(max(media_types, key=qualities.__getitem__))


def _quality(offer: str, entries: Sequence[tuple[str, float]]) -> float:
    """The quality the client gives ``offer``: that of the most specific Accept entry covering it (RFC
    9110 12.5.1: a type, then its ``type/*``, then ``*/*``), among entries naming R4 or no version, so
    ``application/*;q=0`` refuses fhir+json unless fhir+json itself is named with q > 0, and a q=0 for
    ``fhirVersion=5.0`` refuses R5 only. ``application/json+fhir`` names fhir+json, after fhir+json itself."""
    kind = offer.split("/", 1)[0]
    best: tuple[int, float] | None = None
    for value, quality in entries:
        media, *parameters = (part.strip().lower() for part in value.split(";"))
        if not _r4(parameters):
            continue
        specificity = {offer: 3, **({LEGACY_FHIR_JSON: 2} if offer == FHIR_JSON else {}), f"{kind}/*": 1,
                       "*/*": 0}.get(media)
        if specificity is not None and (best is None or specificity > best[0]):
            best = (specificity, quality)
    return 0.0 if best is None else best[1]


def _read_pretty() -> None:
    """``_pretty`` (FHIR R4 http.html#general, for every interaction): ``true`` indents the JSON answer. It
    was a 400 under strict handling on every call, ``/metadata`` included (found by a probe). Not on the
    NDJSON export, whose lines are one resource each."""
    value = request.args.get("_pretty")
    if value is None:
        return
    if value not in ("true", "false"):
        raise InvalidSearch(f"_pretty must be true or false, not '{value[:40]}'", param="_pretty")
    g.setdefault(_PRETTY, value == "true")


def _answer(media_type: str) -> str:
    """Remember the JSON type a response (and an OperationOutcome after it) is sent in."""
    if media_type in (FHIR_JSON, "application/json"):
        g.setdefault(_ANSWER_TYPE, media_type)
    return media_type


def _r4(parameters: Sequence[str]) -> bool:
    """``fhirVersion`` (FHIR R4, http.html#version-parameter), when given, names R4 (4.0 or 4.0.x)."""
    named = dict(part.partition("=")[::2] for part in parameters)
    version = named.get("fhirversion", "4.0").strip().strip('"')
    return version == "4.0" or version.startswith("4.0.")


class _NotAcceptable(Exception):
    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


def link_url(path: str, params: Sequence[tuple[str, str]]) -> str:
    query = urlencode(list(params))
    return f"{base_url()}/{path}" + (f"?{query}" if query else "")


def _http_date(value: datetime) -> str:
    return format_datetime(value.replace(tzinfo=UTC), usegmt=True)


def _resource_headers(stored: versioning.StoredVersion, cache: str) -> dict[str, str]:
    return {
        "ETag": fhir.weak_etag(stored.version),
        "Last-Modified": _http_date(max(stored.recorded_at, stored.effective_from)),  # fhir.published_at
        "Content-Location": f"{base_url()}/MedicationKnowledge/{stored.protocol_id}/_history/{stored.version}",
        "Cache-Control": cache,
    }


def _serve_version(stored: versioning.StoredVersion, *, cache: str, warnings: Sequence[Issue]) -> Response:
    headers = {**_resource_headers(stored, cache), **warning_headers(warnings)}
    if not_modified(fhir.weak_etag(stored.version)):
        response = Response(status=304)
        for name, value in headers.items():
            response.headers[name] = value
        return response
    resource = fhir.to_medication_knowledge(stored.as_dict(), base_url=base_url())
    return fhir_response(resource, headers=headers)


def _check_id(resource_id: str) -> None:
    if not fhir_query.is_resource_id(resource_id):
        raise domain.ProtocolNotFound(f"'{resource_id[:80]}' is not a FHIR id, so no MedicationKnowledge has it")


# ------------------------------------------------------------------------------- errors


def _issue_for(exc: domain.DomainError) -> tuple[int, Issue]:
    if isinstance(exc, domain.ProtocolNotFound):
        return 404, Issue("error", "not-found", exc.message, ("MedicationKnowledge.id",))
    if isinstance(exc, domain.VersionNotFound):
        return 404, Issue("error", "not-found", exc.message, ("MedicationKnowledge.meta.versionId",))
    if isinstance(exc, domain.NotInEffect):
        return 404, Issue("error", "not-found", exc.message, ("MedicationKnowledge.id",))
    if isinstance(exc, domain.ProtocolRetired):
        version = exc.details.get("version")
        at = f" at {format_rfc3339(version.effective_from)}" if version is not None else ""
        return 410, Issue("error", "deleted", f"{exc.message}{at}; earlier versions remain readable "
                          "through _history", ("MedicationKnowledge.status",))
    if isinstance(exc, InvalidSearch):
        return 400, Issue("error", "invalid", exc.message, (str(exc.details.get("param")),))
    if isinstance(exc, domain.StorageUnavailable):
        return 503, Issue("error", "transient", exc.message)
    return 400, Issue("error", "processing", exc.message)


@blp.errorhandler(domain.DomainError)
def _domain_error(exc: domain.DomainError) -> Response:
    status, issue = _issue_for(exc)
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else {}
    # A search's other malformed parameters, one issue each (fhir_query.InvalidSearch)
    others = [_issue_for(other)[1] for other in exc.details.get("also", ())] if isinstance(exc, InvalidSearch) else []
    return outcome_response(status, [issue, *others], headers)


@blp.errorhandler(UnsupportedParameters)
def _unsupported_error(exc: UnsupportedParameters) -> Response:
    issues = [Issue("error", "not-supported", f"{item.reason} (send Prefer: handling=lenient to ignore it)",
                    (item.param,)) for item in exc.items]
    return outcome_response(400, issues)


@blp.errorhandler(_NotAcceptable)
def _not_acceptable(exc: _NotAcceptable) -> Response:
    return outcome_response(406, [Issue("error", "not-supported", exc.message, (exc.where,))])


@blp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    code = "conflict" if exc.status == 412 else "invalid" if exc.status < 500 else "exception"
    issues = [Issue("error", code, f"{path}: {'; '.join(messages)}", (path,)) for path, messages in exc.errors.items()]
    return outcome_response(exc.status, issues or [Issue("error", _code_for(exc.status), exc.message)],
                            exc.headers)


@blp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {"Allow": ALLOWED_METHODS} if status == 405 else {}
    return outcome_response(status, [Issue("error", _code_for(status), exc.description or exc.name)], headers)


@blp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    if is_database_unavailable(exc):
        log.warning("database unavailable: %s", unavailable_reason(exc))
        return outcome_response(503, [Issue("error", "transient", "The database is unavailable or busy; "
                                                                   "retry shortly.")],
                                {"Retry-After": RETRY_AFTER_SECONDS})
    log.exception("unhandled error in the FHIR API")
    return outcome_response(500, [Issue("fatal", "exception",
                                        "Internal server error; the X-Request-ID identifies it in the logs.")])


def _code_for(status: int) -> str:
    return {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 406: "not-supported",
            410: "deleted", 412: "conflict", 413: "too-long", 429: "throttled", 503: "transient"}.get(
        status, "invalid" if status < 500 else "exception")


# -------------------------------------------------------------------------------- views


@blp.route("/metadata", methods=["GET"])
@requires_scope(None)  # definitions and capabilities are public, as FHIR clients expect
def capability_statement() -> Response:
    """The CapabilityStatement: exactly the interactions and parameters implemented here."""
    negotiate()
    warnings = simple_params((*fhir_query.HTTP_PARAMS, "mode"))
    if request.args.get("mode", "full") != "full":
        raise InvalidSearch("only mode=full is supported", param="mode")
    return fhir_response(build_capability_statement(base_url()), headers={
        "Cache-Control": CACHE_REVALIDATE, **warning_headers(warnings)})


def build_capability_statement(base: str) -> dict[str, Any]:
    search_params = [{"name": name, "definition": definition, "type": kind, "documentation": doc}
                     for name, (kind, definition, doc) in fhir_query.SEARCH_PARAMS.items()]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "publisher": "treatment-protocols",
        "kind": "instance",
        "software": {"name": "treatment-protocols", "version": current_app.config.get("API_VERSION", "1.0.0")},
        "implementation": {"description": "Treatment-protocol registry, FHIR R4 read-only face",
                           "url": base},
        "fhirVersion": fhir.FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "rest": [{
            "mode": "server",
            "documentation": (
                "Read-only. Errors are OperationOutcome. Unsupported parameters: Prefer: handling=strict "
                "(default) answers 400; handling=lenient ignores them with an OperationOutcome warning "
                "(Bundle entry with search.mode=outcome, or a Warning header). Searches page with "
                f"_count (default {fhir_query.DEFAULT_COUNT}, at most {fhir_query.MAX_COUNT}; 0 gives "
                "the total only) and next/previous links; so does an instance's _history. _pretty=true "
                "indents any JSON answer; _summary and _elements are not supported. A retired "
                "protocol is deleted (410); drafts are not published, nor versions scheduled to take "
                "effect later (until they do: meta.lastUpdated is then that moment)."),
            # How a client authenticates: it was not said at all, while reads need a key by default (a
            # conformance probe).
            "security": {
                "cors": bool(current_app.config.get("PROTOCOLS_CORS_ORIGINS")),
                "description": (
                    "Reads need an API key with the `protocols:read` scope, sent as `Authorization: Bearer "
                    "<key>`" + ("; this server also answers anonymous reads" if current_app.config.get(
                        "PROTOCOLS_ANONYMOUS_READS") else "") + ". No SMART on FHIR or OAuth 2.0."),
            },
            "resource": [
                {
                    "type": "MedicationKnowledge",
                    "documentation": "One resource per protocol; its current version is the protocol "
                                     "version in effect. meta.versionId is the protocol version. _history "
                                     "lists versions in recording order (versionId): after a back-dated "
                                     "correction (in effect for a past period, see the effective-from "
                                     "extension), or once a version scheduled before a later-recorded "
                                     "one takes effect, the newest entry is not the current version; read "
                                     "returns that.",
                    "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "history-instance"},
                                    {"code": "search-type"}],
                    "versioning": "versioned",
                    "readHistory": True,
                    "updateCreate": False,
                    "conditionalCreate": False,
                    "conditionalRead": "not-match",
                    "conditionalUpdate": False,
                    "conditionalDelete": "not-supported",
                    "searchParam": search_params,
                },
                {"type": "StructureDefinition", "interaction": [{"code": "read"}],
                 "documentation": "Definitions of the extensions this server emits: "
                                  + ", ".join(fhir.EXTENSIONS)},
                {"type": "CodeSystem", "interaction": [{"code": "read"}],
                 "documentation": "Code systems of this server: " + ", ".join(fhir.CODE_SYSTEMS)},
            ],
            "operation": [{
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                "documentation": "Synchronous: GET [base]/$export streams every current "
                                 "MedicationKnowledge as application/fhir+ndjson (one resource per "
                                 "line); _type=MedicationKnowledge is the only type.",
            }],
        }],
    }


@blp.route("/MedicationKnowledge", methods=["GET"])
def search_medication_knowledge() -> Response:
    negotiate()
    spec = fhir_query.parse_search(list(request.args.items(multi=True)))
    warnings = check_unsupported(spec.unsupported)
    at = utcnow()
    page, total = fhir_query.search_with_total(get_db(), spec, at=at)  # one state: the total counts the page
    base = base_url()
    entries: list[dict[str, Any]] = []
    if warnings:
        entries.append({"resource": fhir.operation_outcome(warnings), "search": {"mode": "outcome"}})
    for row in page.items:
        entries.append({
            "fullUrl": f"{base}/MedicationKnowledge/{row.version.protocol_id}",
            "resource": fhir.to_medication_knowledge(row.version.as_dict(), base_url=base),
            "search": {"mode": "match"},
        })
    applied = spec.applied
    after, before = (None, None)
    if spec.cursor is not None:
        after, before = (spec.cursor[0], None) if spec.cursor[1] == "n" else (None, spec.cursor[0])
    self_params = [*applied, *([("_cursor", request.args["_cursor"])] if spec.cursor else [])]
    links = [("self", link_url("MedicationKnowledge", self_params)),
             ("first", link_url("MedicationKnowledge", applied))]
    keys = [row.protocol_seq for row in page.items]
    if keys:
        more_after = page.has_more if before is None else True
        more_before = (after is not None) if before is None else page.has_more
        if more_after:
            links.append(("next", link_url("MedicationKnowledge", [
                *applied, ("_cursor", encode_cursor(fhir_query.SEARCH_CURSOR, keys[-1], "n"))])))
        if more_before:
            links.append(("previous", link_url("MedicationKnowledge", [
                *applied, ("_cursor", encode_cursor(fhir_query.SEARCH_CURSOR, keys[0], "p"))])))
    body = fhir.bundle("searchset", entries=entries, links=links, total=total, timestamp=format_rfc3339(at))
    return bundle_response(body)


@blp.route("/MedicationKnowledge/<string:resource_id>", methods=["GET"])
def read_medication_knowledge(resource_id: str) -> Response:
    """The version in effect now; retired -> 410, nothing in effect -> 404."""
    negotiate()
    warnings = simple_params()
    _check_id(resource_id)
    stored = versioning.effective(get_db(), resource_id)
    return _serve_version(stored, cache=CACHE_REVALIDATE, warnings=warnings)


@blp.route("/MedicationKnowledge/<string:resource_id>/_history", methods=["GET"])
def history_medication_knowledge(resource_id: str) -> Response:
    """Published versions (taking effect by now), newest first; a retirement is a DELETE entry."""
    negotiate()
    _check_id(resource_id)
    spec = fhir_query.parse_history(list(request.args.items(multi=True)), resource_id)
    warnings = check_unsupported(spec.unsupported)
    # One instant for the entries and the Bundle's timestamp: stamped by a later clock read, a version
    # taking effect in between was in neither this Bundle nor a poll `_since` its timestamp (probe).
    at = utcnow()
    page = fhir_query.history(get_db(), resource_id, at=at, limit=spec.count,
                              before_version=spec.before_version, after_version=spec.after_version,
                              since=spec.since)
    base = base_url()
    entries: list[dict[str, Any]] = []
    if warnings:
        entries.append({"resource": fhir.operation_outcome(warnings),
                        "request": {"method": "GET", "url": f"MedicationKnowledge/{resource_id}/_history"},
                        "response": {"status": "200 OK"}})
    entries += [fhir.history_entry(v.as_dict(), base_url=base, first_published=page.first_published)
                for v in page.items]
    path = f"MedicationKnowledge/{resource_id}/_history"
    kind = fhir_query.history_cursor(resource_id)
    cursor = spec.before_version is not None or spec.after_version is not None
    self_params = [*spec.applied, *([("_cursor", request.args["_cursor"])] if cursor else [])]
    links = [("self", link_url(path, self_params)), ("first", link_url(path, spec.applied))]
    if page.items:
        # Read backwards (a previous link), the page came from a newer one, so older versions lie beyond
        # it; read forwards, newer versions lie before it only when it was reached by a cursor.
        backwards = spec.after_version is not None
        older = page.has_more or backwards
        newer = page.has_more if backwards else spec.before_version is not None
        if older:
            links.append(("next", link_url(path, [
                *spec.applied, ("_cursor", encode_cursor(kind, page.items[-1].version, "n"))])))
        if newer:
            links.append(("previous", link_url(path, [
                *spec.applied, ("_cursor", encode_cursor(kind, page.items[0].version, "p"))])))
    body = fhir.bundle("history", entries=entries, links=links, total=page.total, timestamp=format_rfc3339(at))
    return bundle_response(body)


@blp.route("/MedicationKnowledge/<string:resource_id>/_history/<string:version_id>", methods=["GET"])
def vread_medication_knowledge(resource_id: str, version_id: str) -> Response:
    """One published version; it never changes. A retirement version is a deletion: 410."""
    negotiate()
    warnings = simple_params()
    _check_id(resource_id)
    if not _VERSION_ID.fullmatch(version_id):  # not str.isdigit(): "01" and U+0661 (an Arabic-Indic 1) are not ids
        raise domain.VersionNotFound(f"MedicationKnowledge/{resource_id} has no version '{version_id}'")
    stored = fhir_query.published_version(get_db(), resource_id, int(version_id), at=utcnow())
    if stored.status == "retired":
        raise domain.ProtocolRetired(f"MedicationKnowledge/{resource_id} was retired (deleted) in version "
                                     f"{stored.version}", version=stored)
    return _serve_version(stored, cache=CACHE_IMMUTABLE, warnings=warnings)


@blp.route("/StructureDefinition/<string:name>", methods=["GET"])
@requires_scope(None)  # definitions and capabilities are public, as FHIR clients expect
def read_structure_definition(name: str) -> Response:
    return _definition("StructureDefinition", name, fhir.EXTENSIONS, fhir.structure_definition)


@blp.route("/CodeSystem/<string:name>", methods=["GET"])
@requires_scope(None)  # definitions and capabilities are public, as FHIR clients expect
def read_code_system(name: str) -> Response:
    return _definition("CodeSystem", name, fhir.CODE_SYSTEMS, fhir.code_system)


def _definition(resource_type: str, name: str, defined: Mapping[str, Any],
                build: Callable[[str, str], dict[str, Any]]) -> Response:
    """One of this server's own conformance resources (an extension's StructureDefinition, a
    CodeSystem of its local codes), or an OperationOutcome 404 naming the ones it defines."""
    negotiate()
    warnings = simple_params()
    if name not in defined:
        return outcome_response(404, [Issue("error", "not-found", f"no {resource_type} '{name}'; this server "
                                            f"defines {', '.join(defined)}", (f"{resource_type}.id",))])
    return fhir_response(build(name, base_url()),
                         headers={"Cache-Control": CACHE_REVALIDATE, **warning_headers(warnings)})


@blp.route("/$export", methods=["GET"])
def export() -> Response:
    """Every current MedicationKnowledge as NDJSON, streamed page by page (bounded memory)."""
    negotiate(formats=NDJSON_FORMATS, media_types=(FHIR_NDJSON, "application/ndjson", FHIR_JSON,
                                                   "application/json"))
    problems = []
    if request.args.get("_outputFormat", NDJSON_FORMATS[0]) not in NDJSON_FORMATS:
        problems.append(InvalidSearch(f"_outputFormat must be one of {', '.join(NDJSON_FORMATS)}",
                                      param="_outputFormat"))
    if request.args.get("_type", "MedicationKnowledge") != "MedicationKnowledge":
        problems.append(InvalidSearch("_type: this server exports MedicationKnowledge only", param="_type"))
    fhir_query.raise_all(problems)
    warnings = simple_params(("_format", "_type", "_outputFormat"))
    db = get_db()
    base = base_url()
    page_size = int(current_app.config.get("PROTOCOLS_FHIR_EXPORT_PAGE_SIZE", EXPORT_PAGE_SIZE))
    at = utcnow()

    def lines() -> Iterator[str]:
        for stored in fhir_query.iter_current(db, at=at, page_size=page_size):
            resource = fhir.to_medication_knowledge(stored.as_dict(), base_url=base)
            yield json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n"

    response = Response(lines(), content_type=FHIR_NDJSON + CHARSET)
    response.headers["Cache-Control"] = "no-store"
    for name, value in warning_headers(warnings).items():
        response.headers[name] = value
    return response


@blp.route("", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], defaults={"unknown": ""})
@blp.route("/<path:unknown>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown_path(unknown: str) -> NoReturn:
    """Anything else under /fhir/R4: a FHIR 404 (or 405 for writes) instead of the REST error shape."""
    if request.method not in ("GET", "HEAD"):  # HEAD of an unknown path is its GET's 404, not a 405
        raise _MethodNotAllowed()
    raise _NotFound(f"'{unknown}' is not supported by this server; see {base_url()}/metadata")


class _MethodNotAllowed(HTTPException):
    code = 405
    description = "This FHIR server is read-only: only GET is supported."


class _NotFound(HTTPException):
    code = 404
