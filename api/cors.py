"""CORS with an explicit allow-list (``PROTOCOLS_CORS_ORIGINS``, comma-separated exact origins).

Why hand-written and strict: a browser page from an origin not on the list must not be able to read
clinical records with a user's key, so there is no ``*`` and no reflection of arbitrary origins.
For a listed origin the response names that origin (with ``Vary: Origin`` so shared caches keep
origins apart) and exposes the headers a client needs for safe writes and paging: ``ETag`` (for
``If-Match``), ``Link``, ``Location``, ``Retry-After``, ``X-Request-ID`` and the ``RateLimit-*`` headers
(a browser client cannot pace itself without them). Preflights are answered
here, before authentication (browsers send them without credentials); a preflight from an unlisted
origin, or asking for a method or header we do not allow, is a 403 in the usual error shape.
"""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import Forbidden

from api.errors import error_response, path_error_renderer
from api.http import add_vary

ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")
#: ``Prefer`` and ``Warning``: the FHIR face's ``Prefer: handling=lenient`` and the warning it answers
#: with (a browser could send neither; found by an adversarial probe).
ALLOWED_HEADERS = ("Authorization", "Content-Type", "If-Match", "If-None-Match", "X-Request-ID", "Accept", "Prefer")
EXPOSED_HEADERS = ("ETag", "Link", "Location", "Retry-After", "X-Request-ID",
                   "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Warning")
PREFLIGHT_MAX_AGE_S = "600"


def allowed_origins(app: Flask) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in app.config.get("PROTOCOLS_CORS_ORIGINS", []) if o.strip())


def _refusal(message: str, errors: dict[str, list[str]]) -> Response:
    """A refused preflight in the error shape of the path it asks about: an OperationOutcome under
    ``/fhir/R4`` (found by a probe: it was the REST body there), the usual error body elsewhere."""
    render = path_error_renderer()
    if render is not None:
        return render(Forbidden(f"{message} ({'; '.join(f'{k}: {v}' for k, vs in errors.items() for v in vs)})"))
    return error_response(403, message, errors=errors)


def init_app(app: Flask) -> None:
    origins = allowed_origins(app)

    @app.before_request
    def _preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin", "")
        method = request.headers.get("Access-Control-Request-Method", "").upper()
        asked = [h.strip().lower() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
                 if h.strip()]
        allowed = {h.lower() for h in ALLOWED_HEADERS}
        if origin not in origins:
            response = _refusal("CORS: this origin is not allowed", {"Origin": ["not in PROTOCOLS_CORS_ORIGINS"]})
        elif method not in ALLOWED_METHODS or not set(asked) <= allowed:
            response = _refusal("CORS: method or header not allowed",
                                {"Access-Control-Request-Headers": sorted(set(asked) - allowed)}
                                if set(asked) - allowed else {"Access-Control-Request-Method": [method]})
        else:
            response = Response(status=204)
            response.headers.pop("Content-Type", None)  # no body, no type (Flask's default is text/html)
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = ", ".join(ALLOWED_METHODS)
            response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_HEADERS)
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE_S
        add_vary(response, "Origin")
        return response

    @app.after_request
    def _cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is None:
            # With origins configured, every response varies on Origin, whether or not this request sent
            # one: a year-long cached version read without Origin (no Allow-Origin) was reusable for a
            # cross-origin fetch, which then failed (found by a contract probe).
            if origins:
                add_vary(response, "Origin")
            return response
        add_vary(response, "Origin")
        if origin in origins and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
        return response
