"""Configuration from environment variables (documented in the README), checked at start-up.

Why checked here: a setting that cannot work used to surface as a traceback naming no variable
(``int('abc')``), as a failure elsewhere naming the wrong one (a lock timeout of -1 made PostgreSQL
refuse every connection, reported as "is PROTOCOLS_DATABASE_URL right?"), or not at all (a lock timeout
of 0 is "fail at once" on SQLite and "wait for ever" on PostgreSQL; ``PROTOCOLS_LOG_JSON=on`` read as
false). Each is now one line naming the variable, before the app serves or a command runs (found by an
operations probe). :class:`ConfigError` is a ``click`` error, so ``flask ...`` prints it as one line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from protocols.db import LOCK_TIMEOUT_MS, POOL_SIZE, default_database_url

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
MAX_BODY_BYTES = 256 * 1024


#: Requests per key (or per client address, for anonymous reads) unless PROTOCOLS_RATE_LIMIT says otherwise.
DEFAULT_RATE_LIMIT = "3000/minute"


def from_env(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the Flask config: environment first, then explicit overrides (tests, benchmarks)."""
    env = os.environ
    config: dict[str, Any] = {
        "PROTOCOLS_DATABASE_URL": env.get("PROTOCOLS_DATABASE_URL") or default_database_url(),
        # how long a statement waits for a lock held elsewhere before the request answers 503
        "PROTOCOLS_DB_LOCK_TIMEOUT_MS": _integer(env, "PROTOCOLS_DB_LOCK_TIMEOUT_MS", LOCK_TIMEOUT_MS),
        # PostgreSQL connections per worker process, plus 5 overflow
        "PROTOCOLS_DB_POOL_SIZE": _integer(env, "PROTOCOLS_DB_POOL_SIZE", POOL_SIZE),
        "PROTOCOLS_ANONYMOUS_READS": _flag(env, "PROTOCOLS_ANONYMOUS_READS", False),
        "PROTOCOLS_REDIS_URL": env.get("PROTOCOLS_REDIS_URL") or None,
        # per key; "off" disables. Blank is the default, as for every other setting here: it turned limiting
        # off (a compose file's "PROTOCOLS_RATE_LIMIT=" read as "no limit"; found by a probe)
        "PROTOCOLS_RATE_LIMIT": env.get("PROTOCOLS_RATE_LIMIT", "").strip() or DEFAULT_RATE_LIMIT,
        # peers whose X-Forwarded-For names the client (api/proxy.py): none unless set, since a proxy
        # that passes the client's header through would let clients choose their address
        "PROTOCOLS_FORWARDED_ALLOW_IPS": env.get("PROTOCOLS_FORWARDED_ALLOW_IPS", ""),
        "PROTOCOLS_CORS_ORIGINS": [o for o in env.get("PROTOCOLS_CORS_ORIGINS", "").split(",") if o],
        "PROTOCOLS_LOG_JSON": _flag(env, "PROTOCOLS_LOG_JSON", True),
        # GET /v1/protocols/{id} served without Flask's request machinery (api/fastpath.py)
        "PROTOCOLS_READ_FAST_PATH": _flag(env, "PROTOCOLS_READ_FAST_PATH", True),
        "PROTOCOLS_FHIR_BASE_URL": env.get("PROTOCOLS_FHIR_BASE_URL") or None,
        "MAX_CONTENT_LENGTH": _integer(env, "PROTOCOLS_MAX_BODY_BYTES", MAX_BODY_BYTES),
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
    check(config)
    return config


class ConfigError(click.ClickException):
    """A setting that cannot work, named by its environment variable."""


#: Inclusive bounds of the integer settings. A lock timeout of 0 means "no timeout" to PostgreSQL and
#: "fail at once" to SQLite, and above 2^31-1 ms PostgreSQL refuses the connection; a pool of 0 is
#: unlimited to SQLAlchemy; a body limit under 1 KiB refuses every write.
INTEGER_BOUNDS: Mapping[str, tuple[int, int]] = {
    "PROTOCOLS_DB_LOCK_TIMEOUT_MS": (1, 2_147_483_647),
    "PROTOCOLS_DB_POOL_SIZE": (1, 1000),
    "MAX_CONTENT_LENGTH": (1024, 1 << 30),
}
#: The environment variable behind a config key, where the two differ.
ENV_NAMES = {"MAX_CONTENT_LENGTH": "PROTOCOLS_MAX_BODY_BYTES"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_ORIGIN = re.compile(r"^https?://([a-z0-9.\-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$")  # host, or [IPv6]


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ConfigError(f"{name} must be true or false (or 1/0, yes/no, on/off), got {raw!r}")


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def check(config: Mapping[str, Any]) -> None:
    """Refuse settings that cannot work (from the environment or from explicit overrides alike)."""
    for key, (low, high) in INTEGER_BOUNDS.items():
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{ENV_NAMES.get(key, key)} must be a whole number from {low} to {high}, "
                              f"got {value!r}")
    _check_database_url(str(config["PROTOCOLS_DATABASE_URL"]))
    _check_rate_limit(str(config.get("PROTOCOLS_RATE_LIMIT", "")))
    _check_proxies(str(config.get("PROTOCOLS_FORWARDED_ALLOW_IPS") or ""))
    redis_url = config.get("PROTOCOLS_REDIS_URL")
    if redis_url and urlsplit(str(redis_url)).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("PROTOCOLS_REDIS_URL must be a redis://, rediss:// or unix:// URL")
    for origin in config.get("PROTOCOLS_CORS_ORIGINS") or []:
        # Browsers send an origin as scheme://host[:port], lower case, nothing after; an entry of any
        # other form (a path, '*', capitals, a bare host) could never match and failed silently.
        if not _ORIGIN.fullmatch(str(origin).strip().rstrip("/")):
            raise ConfigError(f"PROTOCOLS_CORS_ORIGINS: {origin!r} is not an origin: write each as "
                              "http(s)://host[:port] in lower case, with no path and no '*'")
    base = config.get("PROTOCOLS_FHIR_BASE_URL")
    if base and not _is_fhir_base(str(base)):
        raise ConfigError(f"PROTOCOLS_FHIR_BASE_URL must be an absolute http(s) URL with a host, a port from 1 to "
                          f"65535 if any, and no user, query, fragment or spaces (FHIR extension URLs are built "
                          f"from it), got {base!r}")


def _is_fhir_base(base: str) -> bool:
    """Whether ``base`` can stand in front of every FHIR link. An empty query or fragment (a trailing ``?``
    or ``#``, which ``urlsplit`` reads as none) broke every link, and a port out of range or a user name
    passed (found by an operations probe)."""
    parts = urlsplit(base)
    try:
        port_ok = parts.port is None or 1 <= parts.port <= 65535
    except ValueError:  # not a number, or out of range
        port_ok = False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok and "?" not in base
            and "#" not in base and "@" not in parts.netloc and not any(c.isspace() for c in base))


def _check_database_url(url: str) -> None:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number (host:5432,host2:5433)
        raise ConfigError("PROTOCOLS_DATABASE_URL is not a database URL (sqlite:///path or "
                          "postgresql://user@host/db)") from None
    driver = parsed.drivername
    if driver not in ("sqlite", "sqlite+pysqlite", "postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(f"PROTOCOLS_DATABASE_URL: the driver {driver!r} is not supported (use sqlite:/// "
                          "or postgresql://, which runs on psycopg 3)")


def _check_rate_limit(text: str) -> None:
    from api.ratelimit import parse_limit

    try:
        parse_limit(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_proxies(text: str) -> None:
    from api.proxy import TrustedProxies

    try:
        TrustedProxies(text)
    except ValueError as exc:
        raise ConfigError(f"PROTOCOLS_FORWARDED_ALLOW_IPS: {exc}") from None
