"""Bearer-key authentication and scope checks for every endpoint, including other blueprints'.

Every request resolves the scope its endpoint needs *centrally*, so a blueprint written without
any knowledge of authentication is still protected:

1. an explicit ``@requires_scope("...")`` on the view (or ``ENDPOINT_SCOPES`` here, for views in
   files owned by other modules) wins;
2. then path rules: ``/v1/admin/*`` needs ``admin``; CDS Hooks services and dose checks are reads
   even though they are POSTs (they compute, they do not change anything);
3. otherwise the method decides: GET/HEAD read, everything else writes;
4. health, the OpenAPI document, Swagger UI and CORS preflights are public.

The key is looked up in the database on every request (no cache), so revocation and expiry take
effect at once in every worker. ``PROTOCOLS_ANONYMOUS_READS`` lets callers without any
``Authorization`` header read; a header that is present is always checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from flask_smorest import Api
from flask_smorest.spec.plugins import FlaskPlugin

from api import ratelimit
from api.errors import ApiError, documented_error
from api.extensions import get_db
from protocols import keys
from protocols.keys import ADMIN, READ, WRITE
from protocols.timeutil import utcnow

PUBLIC: str | None = None
REALM = "treatment-protocols"
SECURITY_SCHEME = "bearerAuth"

#: Blueprints whose every endpoint is public.
PUBLIC_BLUEPRINTS = frozenset({"health", "api-docs"})
#: Endpoints (outside blueprints) that are public.
PUBLIC_ENDPOINTS = frozenset({"static", "docs_static"})

#: Explicit scopes for views in files this module does not own (endpoint name -> scope). The path
#: rules below would give the same answer; naming them here keeps the intent visible in one place.
ENDPOINT_SCOPES: dict[str, str | None] = {
    "cds.discovery": READ,
    "cds.call_service": READ,  # CDS Hooks: POSTed, but computes advice from protocols without writing
    "dosing.dose_check": READ,  # POSTed patient data is checked against a protocol, nothing is stored
}

#: Path prefixes whose scope does not follow from the method (first match wins).
PATH_SCOPES: tuple[tuple[str, str], ...] = (
    ("/v1/admin/", ADMIN),
    ("/cds-services", READ),
    # The FHIR face is read-only: a write to it is a 405 for every caller who may read, not a scope
    # error (and a denied-write audit row) for an operation that does not exist.
    ("/fhir/", READ),
)
#: Path suffixes of computations that are POSTed but only read (dose checks).
READ_ONLY_POST_SUFFIXES: tuple[str, ...] = ("/dose-check", "/dose-checks", "/$dose-check")

SAFE_METHODS = frozenset({"GET", "HEAD"})

F = TypeVar("F", bound=Callable[..., Any])


def requires_scope(scope: str | None) -> Callable[[F], F]:
    """Declare the scope a view needs (``None``: public). Place it below ``@blp.route``."""
    if scope is not None and scope not in keys.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def decorate(view: F) -> F:
        view._required_scope = scope  # type: ignore[attr-defined]
        return view

    return decorate


_UNSET = object()


def _declared_scope(view: Any) -> Any:
    """The scope set by ``requires_scope`` on the view or anything it wraps (decorator order varies)."""
    seen = 0
    while view is not None and seen < 20:
        declared = getattr(view, "__dict__", {}).get("_required_scope", _UNSET)
        if declared is not _UNSET:
            return declared
        view = getattr(view, "__wrapped__", None)
        seen += 1
    return _UNSET


def resolve_scope(app: Flask, endpoint: str | None, method: str, rule: str) -> str | None:
    """The scope an endpoint needs for ``method`` (``None`` when it is public)."""
    if method == "OPTIONS" or endpoint is None:
        return PUBLIC
    if endpoint in PUBLIC_ENDPOINTS or endpoint.split(".", 1)[0] in PUBLIC_BLUEPRINTS:
        return PUBLIC
    declared = _declared_scope(app.view_functions.get(endpoint))
    if declared is not _UNSET:
        return declared
    if endpoint in ENDPOINT_SCOPES:
        return ENDPOINT_SCOPES[endpoint]
    path = rule if rule.endswith("/") else rule + "/"
    for prefix, scope in PATH_SCOPES:
        if path.startswith(prefix) or rule == prefix.rstrip("/"):
            return scope
    if rule.rstrip("/").endswith(READ_ONLY_POST_SUFFIXES):
        return READ
    return READ if method in SAFE_METHODS else WRITE


#: The headers a 429 carries (api/ratelimit.py); the contract named none (found by a contract probe).
RATE_LIMIT_HEADERS = {
    "Retry-After": "Seconds until the window resets",
    "RateLimit-Limit": "Requests allowed per window",
    "RateLimit-Remaining": "Requests left in this window (0)",
    "RateLimit-Reset": "Seconds until the window resets",
}


def _challenge(error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    parts = [f'realm="{REALM}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value; None when it is malformed."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _bearer_token() -> str | None:
    """The token of ``Authorization: Bearer <token>``; None when the header is absent."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    token = bearer_token(header)
    if token is None:
        raise ApiError(401, "The Authorization header must be 'Bearer <api key>'.",
                       errors={"Authorization": ["must be 'Bearer <api key>'"]},
                       headers={"WWW-Authenticate": _challenge("invalid_request", "expected a Bearer API key")},
                       reason="malformed_authorization")
    return token


def authenticate_request() -> None:
    """``before_request``: resolve the scope, check the key, set ``g.actor_name`` for the audit trail.

    A refusal (401/403, whatever its reason) counts against the caller's address or key first, so
    it is rate-limited like any request (429 past the limit): refusals went uncounted, and a caller
    without a key could add denied-attempt audit rows, which nothing may delete, without limit."""
    try:
        _authenticate()
    except ApiError as exc:
        if exc.status in (401, 403):
            ratelimit.count(g.get("api_key_id"))
        raise


def _authenticate() -> None:
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    scope = resolve_scope(current_app, request.endpoint, request.method, rule)
    g.required_scope = scope
    if scope is None:  # public
        return
    token = _bearer_token()
    if token is None:
        if scope == READ and current_app.config.get("PROTOCOLS_ANONYMOUS_READS"):
            g.actor_name = None
            return
        raise ApiError(401, "Authentication required: send 'Authorization: Bearer <api key>'.",
                       headers={"WWW-Authenticate": _challenge()}, reason="missing_credentials")
    key = keys.identify(get_db(), token)
    state = None if key is None else keys.state(key, utcnow())
    if key is None or state != "active":
        if key is not None:
            # The audit row of the refusal names the revoked or expired key and says which it is; the
            # client hears only "not valid". Rate limiting still counts the caller's address.
            g.actor_name = key.name
            g.refused_key = {"key_id": key.id, "key_state": state}
        raise ApiError(401, "The API key is not valid (unknown, revoked or expired).",
                       headers={"WWW-Authenticate": _challenge("invalid_token", "unknown, revoked or expired key")},
                       reason="invalid_key")
    g.api_key_id = key.id
    g.actor_name = key.name
    if not key.has_scope(scope):
        raise ApiError(403, f"This API key lacks the '{scope}' scope needed here.",
                       headers={"WWW-Authenticate": _challenge("insufficient_scope", scope=scope)},
                       required_scope=scope, reason="insufficient_scope")


def init_app(app: Flask) -> None:
    app.before_request(authenticate_request)


# ---------------------------------------------------------------------------------- OpenAPI


def document_security(app: Flask, api: Api) -> None:
    """Add the bearer scheme and, to every documented operation, its scope, 401/403/429 responses.

    Runs once every blueprint is registered (end of ``create_app``), so operations of blueprints that
    never mention authentication are documented too. OpenAPI 3.0 allows scope lists only for OAuth2
    schemes, so the scope is named in ``x-required-scope`` and in the operation description.
    """
    api.spec.components.security_scheme(SECURITY_SCHEME, {
        "type": "http", "scheme": "bearer", "bearerFormat": "API key (tpk_...)",
        "description": "API key sent as `Authorization: Bearer <key>`. Scopes: "
                       + ", ".join(f"`{s}`" for s in keys.SCOPES) + "."})
    paths: dict[str, dict[str, Any]] = api.spec._paths
    for rule in app.url_map.iter_rules():
        path_item = paths.get(FlaskPlugin.flaskpath2openapi(rule.rule))
        if not path_item:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = path_item.get(method.lower())
            if operation is None:
                continue
            scope = resolve_scope(app, rule.endpoint, method, rule.rule)
            if scope is PUBLIC:
                operation["security"] = []
                continue
            operation["security"] = [{SECURITY_SCHEME: []}]
            operation["x-required-scope"] = scope
            note = f"Requires an API key with scope `{scope}`."
            if scope == READ:
                note += " Anonymous callers may read only when the server enables PROTOCOLS_ANONYMOUS_READS."
            description = operation.get("description", "")
            if note not in description:
                operation["description"] = f"{description}\n\n{note}".strip()
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", documented_error("Missing, unknown, revoked or expired API key"))
            responses.setdefault("403", documented_error(f"The API key lacks the `{scope}` scope"))
            responses.setdefault("429", documented_error("Rate limit exceeded; see Retry-After", RATE_LIMIT_HEADERS))
