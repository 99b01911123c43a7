"""Configuration from environment variables (documented in the README)."""

from __future__ import annotations

import os
from typing import Any

from protocols.db import LOCK_TIMEOUT_MS, default_database_url

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
MAX_BODY_BYTES = 256 * 1024


def from_env(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the Flask config: environment first, then explicit overrides (tests, benchmarks)."""
    env = os.environ
    config: dict[str, Any] = {
        "PROTOCOLS_DATABASE_URL": env.get("PROTOCOLS_DATABASE_URL") or default_database_url(),
        # how long a statement waits for a lock held elsewhere before the request answers 503
        "PROTOCOLS_DB_LOCK_TIMEOUT_MS": int(env.get("PROTOCOLS_DB_LOCK_TIMEOUT_MS", LOCK_TIMEOUT_MS)),
        "PROTOCOLS_ANONYMOUS_READS": env.get("PROTOCOLS_ANONYMOUS_READS", "false").lower() in ("1", "true", "yes"),
        "PROTOCOLS_REDIS_URL": env.get("PROTOCOLS_REDIS_URL") or None,
        "PROTOCOLS_RATE_LIMIT": env.get("PROTOCOLS_RATE_LIMIT", "3000/minute"),  # per key; "off" disables
        # peers whose X-Forwarded-For names the client (api/proxy.py): none unless set, since a proxy
        # that passes the client's header through would let clients choose their address
        "PROTOCOLS_FORWARDED_ALLOW_IPS": env.get("PROTOCOLS_FORWARDED_ALLOW_IPS", ""),
        "PROTOCOLS_CORS_ORIGINS": [o for o in env.get("PROTOCOLS_CORS_ORIGINS", "").split(",") if o],
        "PROTOCOLS_LOG_JSON": env.get("PROTOCOLS_LOG_JSON", "true").lower() in ("1", "true", "yes"),
        # GET /v1/protocols/{id} served without Flask's request machinery (api/fastpath.py)
        "PROTOCOLS_READ_FAST_PATH": env.get("PROTOCOLS_READ_FAST_PATH", "true").lower() in ("1", "true", "yes"),
        "PROTOCOLS_FHIR_BASE_URL": env.get("PROTOCOLS_FHIR_BASE_URL") or None,
        "MAX_CONTENT_LENGTH": int(env.get("PROTOCOLS_MAX_BODY_BYTES", MAX_BODY_BYTES)),
        # flask-smorest / OpenAPI
        "API_TITLE": "Treatment Protocols API",
        "API_VERSION": "1.0.0",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "/docs",
        "OPENAPI_SWAGGER_UI_URL": "/docs-static/",
        "JSON_SORT_KEYS": False,
    }
    if overrides:
        config.update(overrides)
    return config
