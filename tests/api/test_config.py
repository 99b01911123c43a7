"""Settings that cannot work are refused at start-up in one line naming their variable (api/config.py,
gunicorn.conf.py); found by an operations probe: tracebacks naming no variable, a failure blamed on
another one, and values silently read as something else (a lock timeout of 0 waits for ever on
PostgreSQL and fails at once on SQLite; PROTOCOLS_LOG_JSON=on read as false)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from api import create_app
from api.config import ConfigError, from_env

ROOT = Path(__file__).resolve().parents[2]

REFUSED = [
    ("PROTOCOLS_DB_LOCK_TIMEOUT_MS", "abc"), ("PROTOCOLS_DB_LOCK_TIMEOUT_MS", "0"),
    ("PROTOCOLS_DB_LOCK_TIMEOUT_MS", "-1"), ("PROTOCOLS_DB_LOCK_TIMEOUT_MS", "99999999999"),
    ("PROTOCOLS_DB_POOL_SIZE", "0"), ("PROTOCOLS_DB_POOL_SIZE", "-1"), ("PROTOCOLS_DB_POOL_SIZE", "x"),
    ("PROTOCOLS_MAX_BODY_BYTES", "0"), ("PROTOCOLS_MAX_BODY_BYTES", "256k"),
    ("PROTOCOLS_ANONYMOUS_READS", "enabled"), ("PROTOCOLS_LOG_JSON", "2"), ("PROTOCOLS_READ_FAST_PATH", "y"),
    ("PROTOCOLS_RATE_LIMIT", "10/min"), ("PROTOCOLS_FORWARDED_ALLOW_IPS", "10.0.0.0/33"),
    ("PROTOCOLS_REDIS_URL", "notaurl"),
    ("PROTOCOLS_CORS_ORIGINS", "*"), ("PROTOCOLS_CORS_ORIGINS", "https://EHR.example.org"),
    ("PROTOCOLS_CORS_ORIGINS", "https://ehr.example.org/app"), ("PROTOCOLS_CORS_ORIGINS", "ehr.example.org"),
    ("PROTOCOLS_FHIR_BASE_URL", "fhir.example.org/R4"), ("PROTOCOLS_FHIR_BASE_URL", "https://fhir.example.org/R4?x=1"),
    ("PROTOCOLS_FHIR_BASE_URL", "https://fhir.example.org/R4 "),
    # an empty query or fragment, a port out of range or not a number, a user: found by an operations probe
    ("PROTOCOLS_FHIR_BASE_URL", "https://fhir.example.org/R4?"), ("PROTOCOLS_FHIR_BASE_URL", "https://fhir.example.org/R4#"),
    ("PROTOCOLS_FHIR_BASE_URL", "https://fhir.example.org:99999/R4"), ("PROTOCOLS_FHIR_BASE_URL", "https://h:x/R4"),
    ("PROTOCOLS_FHIR_BASE_URL", "https://user:pw@fhir.example.org/R4"), ("PROTOCOLS_FHIR_BASE_URL", "https://:443/R4"),
    ("PROTOCOLS_DATABASE_URL", "::"), ("PROTOCOLS_DATABASE_URL", "mysql://u@h/db"),
    ("PROTOCOLS_DATABASE_URL", "postgresql+asyncpg://u@h/db"), ("PROTOCOLS_DATABASE_URL", "sqlite+foo:///x.db"),
    ("PROTOCOLS_DATABASE_URL", "postgresql://u@host:5432,host2:5433/db"),  # a ValueError, not ArgumentError
]


@pytest.mark.parametrize(("name", "value"), REFUSED)
def test_a_setting_that_cannot_work_is_refused_naming_its_variable(monkeypatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        from_env()
    assert refused.value.message.startswith(name), refused.value.message
    assert "\n" not in refused.value.message


def test_explicit_overrides_are_checked_as_the_environment_is() -> None:
    with pytest.raises(ConfigError, match=r"^PROTOCOLS_DB_LOCK_TIMEOUT_MS"):
        create_app({"PROTOCOLS_DB_LOCK_TIMEOUT_MS": 0})
    with pytest.raises(ConfigError, match=r"^PROTOCOLS_MAX_BODY_BYTES"):
        create_app({"MAX_CONTENT_LENGTH": 10})


@pytest.mark.parametrize(("value", "expected"), [
    ("true", True), ("TRUE ", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("0", False), ("no", False), ("Off", False), ("", False)])
def test_flags_read_every_usual_spelling(monkeypatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("PROTOCOLS_ANONYMOUS_READS", value)
    assert from_env()["PROTOCOLS_ANONYMOUS_READS"] is expected


def test_settings_that_can_work_are_kept(monkeypatch) -> None:
    monkeypatch.setenv("PROTOCOLS_CORS_ORIGINS", "https://ehr.example.org/,http://localhost:3000,http://[::1]:3000")
    monkeypatch.setenv("PROTOCOLS_FHIR_BASE_URL", "https://fhir.example.org/R4")
    monkeypatch.setenv("PROTOCOLS_DB_POOL_SIZE", "12")
    monkeypatch.setenv("PROTOCOLS_DATABASE_URL", "postgresql://u@db.example.org/protocols")
    config = from_env()
    assert config["PROTOCOLS_DB_POOL_SIZE"] == 12
    assert config["PROTOCOLS_CORS_ORIGINS"] == ["https://ehr.example.org/", "http://localhost:3000", "http://[::1]:3000"]


def test_the_pool_size_reaches_postgresql_engines_only(tmp_path) -> None:
    from protocols.db import make_database

    pg = make_database("postgresql://u@127.0.0.1:1/none", pool_size=3)
    lite = make_database(f"sqlite:///{tmp_path / 'x.db'}", pool_size=3)
    assert pg.engine.pool.size() == 3  # type: ignore[attr-defined]
    assert lite.engine.pool.size() != 3  # type: ignore[attr-defined]
    pg.engine.dispose()
    lite.engine.dispose()


def test_the_cli_says_it_in_one_line(tmp_path) -> None:
    env = {**os.environ, "PROTOCOLS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "PROTOCOLS_DB_LOCK_TIMEOUT_MS": "abc"}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "api", "protocols", "migrate"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: PROTOCOLS_DB_LOCK_TIMEOUT_MS must be a whole number, got 'abc'"


@pytest.mark.parametrize(("name", "value"), [
    ("PROTOCOLS_WORKERS", "two"), ("PROTOCOLS_WORKERS", "0"), ("PROTOCOLS_WORKER_TIMEOUT", "30s"),
    ("PROTOCOLS_GRACEFUL_TIMEOUT", "1m"), ("PROTOCOLS_MAX_REQUESTS", "10k"),
    ("PROTOCOLS_GIL_SWITCH_INTERVAL", "fast"), ("PROTOCOLS_GIL_SWITCH_INTERVAL", "0")])
def test_the_gunicorn_settings_are_refused_in_one_line(monkeypatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as refused:
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert str(refused.value.code).startswith(f"Error: {name} must be")
