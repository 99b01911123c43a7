"""Request parsing for flask-smorest: strict JSON bodies, unknown parameters rejected.

* a body that is not JSON by content type → 415; malformed, NaN, duplicate keys, bad UTF-8 → 400;
* unknown fields and unknown query parameters → 422 (schemas keep marshmallow's ``RAISE``), and so is
  a single-valued query parameter given twice;
* a body over ``MAX_CONTENT_LENGTH`` → 413, before it is read when it has a ``Content-Length``,
  and as soon as the limit is passed when it is chunked (api.errors maps werkzeug's error).

:func:`document_body_errors` adds the 400, 413 and 415 to every operation that takes a JSON body in
OpenAPI, so the contract names every status a client can get for the body it sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, Request, request
from flask_smorest import Api
from flask_smorest import Blueprint as SmorestBlueprint
from marshmallow import Schema
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import IntegerConverter

from api.config import MAX_BODY_BYTES
from api.errors import INVALID_REQUEST, ApiError, cursor_errors, documented_error, flatten_errors
from protocols.strict_json import InvalidJSON, strict_loads

JSON_MIMETYPES = ("application/json",)


#: JSON documents whose media type gives them other semantics than "the resource as JSON": a JSON
#: Patch or Merge Patch sent to PUT was applied as a whole record (found by a contract probe).
PATCH_MIMETYPES = ("application/json-patch+json", "application/merge-patch+json")


def is_json_mimetype(mimetype: str) -> bool:
    if mimetype in PATCH_MIMETYPES:
        return False
    return mimetype in JSON_MIMETYPES or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def load_json_body(req: Request) -> Any:
    data = req.get_data(cache=True)
    if _longer_than_read(req, data):
        raise RequestEntityTooLarge()
    codings = [c.strip().lower() for c in req.headers.get("Content-Encoding", "").split(",") if c.strip()]
    if any(coding != "identity" for coding in codings):
        # A compressed body is not read (and a plain one labelled gzip was read as plain and stored, or
        # a real gzip body was "not UTF-8"): 415 names the header, as RFC 9110 (15.5.16) asks.
        raise ApiError(415, "Request bodies are not accepted with a content coding; send them uncompressed",
                       errors={"Content-Encoding": [f"got '{', '.join(codings)}': send identity (no coding)"]},
                       headers={"Accept-Encoding": "identity"})
    if not is_json_mimetype(req.mimetype):
        raise ApiError(415, "Content-Type must be application/json",
                       errors={"Content-Type": [f"got '{req.mimetype or 'none'}'"]})
    charset = req.mimetype_params.get("charset")
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        # JSON is UTF-8 (RFC 8259); a body declared latin-1 was decoded as UTF-8 all the same.
        raise ApiError(415, "JSON bodies are UTF-8",
                       errors={"Content-Type": [f"charset '{charset}': send UTF-8 (or no charset)"]})
    if not data:
        raise ApiError(400, "The request body must be a JSON object", errors={"body": ["empty"]})
    try:
        return strict_loads(data)
    except InvalidJSON as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}", errors={"body": [str(exc)]}) from exc


def _longer_than_read(req: Request, data: bytes) -> bool:
    """A body without ``Content-Length`` (``Transfer-Encoding: chunked``) is read up to
    ``MAX_CONTENT_LENGTH`` and no further: werkzeug stops at the limit without looking past it, so a
    longer body would arrive cut at the limit, and a valid JSON document followed by more bytes would
    be stored. One more byte from the server's input tells whether the body really ended there."""
    limit = req.max_content_length
    if req.content_length is not None or limit is None or len(data) < limit:
        return False
    return bool(req.environ["wsgi.input"].read(1))


REPEATED_PARAMETER = "A query parameter that takes one value was given more than once."


class StrictParser(FlaskParser):
    # Empty mapping: never override the schema's own ``unknown`` (RAISE), for any location.
    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {}

    def _raw_load_json(self, req: Request) -> Any:
        return load_json_body(req)

    def load_querystring(self, req: Request, schema: Schema) -> Any:
        """Query parameters; one that takes a single value must be given once. webargs reads the first
        of repeated values while links built from the request carry the last (``?drug=a&drug=b`` filtered
        page 1 by ``a`` and the ``next`` page by ``b``), so a repeat is refused, naming the parameter."""
        proxy = self._makeproxy(req.args, schema)
        repeated = sorted(name for name in req.args if name not in proxy.multiple_keys
                          and len(req.args.getlist(name)) > 1)
        if repeated:
            # The request's other bad parameters are named too, as the schema (and the cursor's reader)
            # would name them: they were hidden behind the repeat (found by a probe).
            errors: dict[str, list[str]] = {name: ["Give this parameter once."] for name in repeated}
            for name, messages in {**flatten_errors(schema.validate(proxy)), **cursor_errors()}.items():
                errors.setdefault(name, messages)
            message = REPEATED_PARAMETER if len(errors) == len(repeated) else INVALID_REQUEST
            raise ApiError(422, message, errors=errors)
        return proxy

    def load_json(self, req: Request, schema: Schema) -> Any:
        return self._raw_load_json(req)


class Blueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = StrictParser()


#: Blueprints whose operations refuse query parameters they do not declare. Not FHIR (its search
#: rules are FHIR's own), not the docs, and not health: a load balancer's probe URL is not a client's
#: request, and liveness must not depend on it.
STRICT_QUERY_BLUEPRINTS = frozenset({"protocols", "dosing", "cds", "changes", "terminology", "admin"})
UNDECLARED_QUERY = "This operation takes no query parameters."


class AsciiIntegerConverter(IntegerConverter):
    """``<int:...>`` in ASCII digits only. Werkzeug's matches ``\\d+``, Unicode digits included:
    ``/versions/\\u0661`` (an Arabic-Indic 1) served version 1 under a second URL (with immutable caching)."""

    regex = r"0|[1-9][0-9]*"  # and no leading zeros: /versions/01 was a second URL for version 1


def declares_body(view: Any) -> bool:
    """Whether a flask-smorest view reads a request body (``@blp.arguments(...)`` in json/form)."""
    parameters = getattr(view, "_apidoc", {}).get("arguments", {}).get("parameters", [])
    return any(isinstance(p, Mapping) and p.get("in") in ("json", "form", "files") for p in parameters)


def refuse_undeclared_bodies(app: Flask) -> None:
    """A body sent to an operation that reads none is a 400, not ignored.

    Why: ``DELETE /v1/protocols/{id}`` with ``{"effective_from": "2040-..."}`` retired the protocol
    *now* (the date belongs in the query string, and the body was never read). Runs once the
    blueprints are registered, like :func:`refuse_undeclared_query_parameters`."""
    takes_body = {endpoint for endpoint, view in app.view_functions.items() if declares_body(view)}

    @app.before_request
    def _undeclared_body() -> None:
        if request.blueprint not in STRICT_QUERY_BLUEPRINTS or request.endpoint in takes_body:
            return
        if request.content_length or request.headers.get("Transfer-Encoding"):
            raise ApiError(400, UNDECLARED_BODY, errors={"body": ["This operation takes no request body."]})


def declares_query(view: Any) -> bool:
    """Whether a flask-smorest view reads query parameters (``@blp.arguments(..., location="query")``);
    its schema then refuses the unknown ones itself."""
    parameters = getattr(view, "_apidoc", {}).get("arguments", {}).get("parameters", [])
    return any(isinstance(p, Mapping) and p.get("in") == "query" for p in parameters)


UNDECLARED_BODY = ("This operation takes no request body; parameters it takes (a retirement's effective_from "
                   "and change_note, say) go in the query string.")


def refuse_undeclared_query_parameters(app: Flask) -> None:
    """A query parameter sent to an operation that takes none is a 422 naming it, not ignored.

    Why: ``PUT /v1/protocols/{id}?effective_from=2030-...`` answered 201 and put the version in effect
    at once; ``POST .../dose-check?as_of=...`` judged against the current version. A schema rejects
    unknown parameters only where a view declares some, so operations without any got none of that
    check. Runs after the blueprints are registered (it reads their views) and after authentication.
    """
    takes_query = {endpoint for endpoint, view in app.view_functions.items() if declares_query(view)}

    @app.before_request
    def _undeclared_query_parameters() -> None:
        if (not request.args or request.method == "OPTIONS" or request.blueprint not in STRICT_QUERY_BLUEPRINTS
                or request.endpoint in takes_query):
            return
        raise ApiError(422, UNDECLARED_QUERY, errors={name: ["Unknown field."] for name in request.args})


def undecodable_query_parameters(query_string: bytes) -> list[str]:
    """Names of query parameters whose name or value is not valid UTF-8 once percent-decoded.

    Why: Werkzeug decodes them with replacement characters, so ``q=%FF%FE`` searched for "\ufffd\ufffd"
    and answered 200 with no items, as if the catalog held nothing for what the client asked."""
    bad = []
    for piece in query_string.split(b"&"):
        name, _, value = piece.partition(b"=")
        raw_name, raw_value = unquote_to_bytes(name.replace(b"+", b" ")), unquote_to_bytes(value.replace(b"+", b" "))
        try:
            raw_name.decode("utf-8")
            raw_value.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(raw_name.decode("utf-8", "replace"))
    return bad


def refuse_undecodable_query_parameters(app: Flask) -> None:
    """A query parameter that is not UTF-8 is a 422 naming it (see :func:`undecodable_query_parameters`)."""

    @app.before_request
    def _undecodable_query() -> None:
        if request.blueprint not in STRICT_QUERY_BLUEPRINTS or not request.query_string:
            return
        bad = undecodable_query_parameters(request.query_string)
        if bad:
            raise ApiError(422, "Query parameters must be UTF-8 text.",
                           errors={name: ["Not valid UTF-8 (percent-encode UTF-8 bytes)."] for name in bad})


def refuse_nul_in_path_parameters(app: Flask) -> None:
    """A NUL in a path parameter is a 404 (FHIR answers its own). No id contains NUL, and PostgreSQL
    refuses NUL in any string parameter: ``/v1/protocols/x%00`` (found by the hostile-input suite) and
    ``/v1/admin/keys/x%00`` (by an adversarial probe) were a 500 on PostgreSQL."""

    @app.before_request
    def _refuse_nul_in_path() -> None:
        if request.blueprint in STRICT_QUERY_BLUEPRINTS and any(
                isinstance(value, str) and "\x00" in value for value in (request.view_args or {}).values()):
            raise ApiError(404, "Not found: the path contains a NUL character")


#: What every operation that takes a JSON body can answer before its schema sees the body.
BODY_ERRORS = {
    "400": "The body is not valid JSON (malformed, NaN or Infinity, a duplicate key, invalid UTF-8) or is empty",
    "413": f"The body is larger than the server accepts (PROTOCOLS_MAX_BODY_BYTES, default {MAX_BODY_BYTES} bytes)",
    "415": "Content-Type is not application/json (other application/*+json types are read as JSON, except "
           "JSON Patch and Merge Patch), names a charset other than UTF-8, or the body has a Content-Encoding",
}


def document_body_errors(api: Api) -> None:
    """Add 400/413/415 (:data:`BODY_ERRORS`) to every documented operation with a JSON request body.

    Runs once every blueprint is registered (end of ``create_app``); flask-smorest documents only the
    422 of schema validation, and a client (or a contract fuzzer) sending a huge, non-JSON or malformed
    body gets one of these instead."""
    for path_item in api.spec._paths.values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            if not any(is_json_mimetype(mimetype) for mimetype in content):
                continue
            responses = operation.setdefault("responses", {})
            for status, description in BODY_ERRORS.items():
                responses.setdefault(status, documented_error(description))


def document_patterns_as_ecma(api: Api) -> None:
    """Write every ``pattern`` of the OpenAPI document in the regex dialect OpenAPI 3.0 names (ECMA-262).

    Validation here uses Python's ``\\A...\\Z`` (``$`` also matches before a trailing newline, which
    let ``"6130\\n"`` through); ECMA-262 has no ``\\A``/``\\Z``, and its ``^``/``$`` (without the
    ``m`` flag) mean exactly what they do: start and end of input. Generated clients and validators
    compiled the patterns as written and failed (an OpenAPI validator refused the document)."""
    def convert(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "pattern" and isinstance(value, str):
                    node[key] = _ecma_pattern(value)
                else:
                    convert(value)
        elif isinstance(node, list):
            for item in node:
                convert(item)

    convert(api.spec._paths)
    convert(api.spec.components.schemas)


def _ecma_pattern(pattern: str) -> str:
    if pattern.startswith("\\A"):
        pattern = "^" + pattern[2:]
    if pattern.endswith("\\Z"):
        pattern = pattern[:-2] + "$"
    if "\\A" in pattern or "\\Z" in pattern:
        raise ValueError(f"pattern {pattern!r}: \\A and \\Z only at its ends (OpenAPI uses ECMA-262)")
    return pattern
