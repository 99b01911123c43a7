"""gunicorn.conf.py's worker start-up hook does what docs/performance.md (design choice 6) relies on:
the UCUM registries, marshmallow's URL patterns and the CDS Hooks FHIR models built before the first
request, the long-lived heap frozen out of the garbage collector's reach, and a fine GIL switch interval."""

from __future__ import annotations

import gc
import json
import os
import runpy
import sys
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restored() -> Iterator[None]:
    interval = sys.getswitchinterval()
    yield
    gc.unfreeze()
    sys.setswitchinterval(interval)


def test_post_worker_init_warms_up_freezes_the_heap_and_sets_the_switch_interval(restored, monkeypatch):
    monkeypatch.setenv("PROTOCOLS_GIL_SWITCH_INTERVAL", "0.0007")
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    from api import server_errors
    from protocols import dose_units, draft_orders, units
    from schemas import fields

    built: list[str] = []
    monkeypatch.setattr(units, "check_ucum_dose_unit", lambda unit: built.append(f"units:{unit}"))
    monkeypatch.setattr(dose_units, "parse_dose_unit", lambda unit: built.append(f"dose_units:{unit}"))
    monkeypatch.setattr(fields, "compile_url_patterns", lambda: built.append("url_patterns"))
    monkeypatch.setattr(draft_orders, "warm_up", lambda: built.append("cds_models"))
    monkeypatch.setattr(server_errors, "install", lambda: built.append("json_errors"))
    # The arbiter keeps its logger across a reload (SIGHUP), which runs this file again: the hook must know
    # the logger of an earlier run of it, whose class is another object (a review: it was skipped).
    logger_class = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["JsonAccessLogger"]
    assert logger_class is not config["JsonAccessLogger"]
    monkeypatch.setattr(logger_class, "write_request_lines", lambda self: built.append("request_lines"))
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    config["post_worker_init"](types.SimpleNamespace(log=object.__new__(logger_class)))
    # both UCUM registries, marshmallow's URL patterns and the CDS Hooks FHIR models, before any request;
    # the request lines are the access log's from the first request on
    assert built == ["units:mg/kg/h", "dose_units:mg/kg/h", "url_patterns", "cds_models", "json_errors",
                     "request_lines"]
    assert gc.get_freeze_count() > 0
    assert sys.getswitchinterval() == pytest.approx(0.0007)


def test_the_config_defaults_are_the_documented_production_ones(monkeypatch):
    for name in ("PROTOCOLS_GIL_SWITCH_INTERVAL", "PROTOCOLS_MAX_REQUESTS", "PROTOCOLS_WORKER_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["switch_interval_s"] == 0.0005
    assert config["max_requests"] == 10000 and config["max_requests_jitter"] == 500
    assert config["timeout"] == 30
    assert config["logger_class"] is config["JsonAccessLogger"] and config["accesslog"] == "-"
    assert "access_log_format" not in config  # the line is the app's request line, not a format of atoms


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PROTOCOLS_ANONYMOUS_READS", "perhaps", "Error: PROTOCOLS_ANONYMOUS_READS must be true or false"),
    ("PROTOCOLS_DB_POOL_SIZE", "0", "Error: PROTOCOLS_DB_POOL_SIZE must be a whole number from 1 to 1000"),
    ("PROTOCOLS_BIND", "127.0.0.1:99999", "Error: PROTOCOLS_BIND must be host:port (a port from 1 to 65535), unix:"),
    ("PROTOCOLS_BIND", "nonsense", "Error: PROTOCOLS_BIND must be host:port"),
])
def test_gunicorn_refuses_a_setting_that_cannot_work_with_one_line_before_any_worker_boots(
        tmp_path, name, value, message):
    """Found by an operations probe: under gunicorn (``make serve``) an app setting that cannot work was
    found by each worker's create_app() and reported as a 39-line traceback, "Worker failed to boot",
    and a port out of range as a 30-line one; the README promises one line naming the variable."""
    import os
    import subprocess

    env = {**os.environ, "PROTOCOLS_DATABASE_URL": f"sqlite:///{tmp_path / 'g.sqlite3'}", "PROTOCOLS_WORKERS": "1",
           "PROTOCOLS_BIND": "127.0.0.1:1", name: value}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "api:create_app()"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "[INFO]" not in line]
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr


def test_gunicorn_never_logs_an_api_key_it_quotes(tmp_path):
    """Found by a security probe: gunicorn's warning about a request it refuses quotes the header or
    request line at fault, and a header without its colon put the whole key in the error log."""
    from gunicorn.config import Config

    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    cfg = Config()
    cfg.set("errorlog", str(tmp_path / "error.log"))
    logger = config["JsonAccessLogger"](cfg)
    key = "tpk_A0JSVzUfIQon45zGKWa0KVnxghVaiMoZsdN68ZoLhn8"
    logger.warning("Invalid request from ip=%s: %s", "127.0.0.1", f"Invalid HTTP Header: 'Authorization Bearer {key}'")
    try:
        raise ValueError(f"GET /v1/protocols?key={key}  HTTP/1.1")
    except ValueError:
        logger.exception("Error handling request")
    for handler in logger.error_log.handlers:
        handler.flush()
    logger.warning("GET /v1/protocols?key=%s", key.replace("_", "%5F"))
    logger.warning("Invalid request line: 'GET /v1/protocols/%s\x01 HTTP/1.1'", "%74" + key[1:])  # a review
    logger.warning("a malformed call %s %s", "one argument")  # logging reports it, as without the filter
    for handler in logger.error_log.handlers:
        handler.flush()
    written = (tmp_path / "error.log").read_text()
    assert "key=tpk_[redacted]" in written.split("GET /v1/protocols?", 1)[1]
    assert "Invalid HTTP Header: 'Authorization Bearer tpk_[redacted]'" in written
    assert "key=tpk_[redacted]" in written and key not in written and key[4:20] not in written


@pytest.fixture
def access_log(tmp_path, monkeypatch) -> Iterator[tuple[Any, Path]]:
    """gunicorn's logger as gunicorn.conf.py configures it, writing its access log to a file, and set up
    as a worker sets it up; the app's logging module is put back afterwards."""
    from gunicorn.config import Config

    from api import logging_setup

    monkeypatch.setattr(logging_setup, "_server_writes_lines", False)  # restored at teardown
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    logger = config["JsonAccessLogger"](cfg)
    logger.write_request_lines()
    yield logger, tmp_path / "access.log"
    for handler in logger.access_log.handlers:
        handler.close()
    logger.access_log.handlers.clear()


def _served(logger: Any, path: str, *, status: str = "200 OK", headers: list[tuple[str, str]] | None = None,
            environ: dict[str, Any] | None = None, sent: int = 10) -> None:
    from gunicorn.http.wsgi import Response

    resp = Response(None, None, None)
    resp.status, resp.sent = status, sent
    if headers != []:  # handle_error's answer (no headers) never goes through start_response
        resp.status_code = int(status[:3])
    resp.headers = headers if headers is not None else [("X-Request-ID", "rid-1")]
    logger.access(resp, [("Authorization", "Bearer tpk_secret")], {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "key=tpk_query", "REMOTE_ADDR": "10.0.0.9",
        "HTTP_AUTHORIZATION": "Bearer tpk_secret", **(environ or {})}, timedelta(microseconds=1234))


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_access_log_writes_the_apps_request_line_and_the_app_leaves_it(access_log):
    """Each request was logged twice, by the app and by gunicorn's access log, with nearly the same facts.
    The access log now writes the app's line (with the key's name the app left in the environ, and the
    bytes sent), and the app writes none of its own."""
    from api import logging_setup

    logger, path = access_log
    environ: dict[str, Any] = {}
    logging_setup.log_access(environ, "rid-1", "GET", "/v1/protocols/x", 200, 0.0, "reader-bot", "10.0.0.9")
    assert environ == {logging_setup.ACTOR_ENVIRON_KEY: "reader-bot"}
    _served(logger, "/v1/protocols/x", environ=environ, sent=1583)
    (line,) = _lines(path)
    assert {k: line[k] for k in ("logger", "message", "level", "request_id", "method", "path", "status", "bytes",
                                 "actor", "remote_addr", "duration_ms")} == {
        "logger": "api.access", "message": "request", "level": "INFO", "request_id": "rid-1", "method": "GET",
        "path": "/v1/protocols/x", "status": 200, "bytes": 1583, "actor": "reader-bot", "remote_addr": "10.0.0.9",
        "duration_ms": 1.23}
    assert line["ts"].endswith("Z") and line["pid"] == os.getpid()


def test_the_access_log_never_holds_a_key_a_header_or_a_query(access_log):
    """Found by a security probe: a key sent where an id goes (a templated URL filled with the wrong
    variable) was written in full by gunicorn's access log, though its error log redacts one."""
    logger, path = access_log
    key = "tpk_A0JSVzUfIQon45zGKWa0KVnxghVaiMoZsdN68ZoLhn8"
    _served(logger, f"/v1/protocols/{key}", status="404 NOT FOUND")
    _served(logger, "/v1/protocols/tpk-notes")
    text = path.read_text()
    assert [line["path"] for line in _lines(path)] == ["/v1/protocols/tpk_[redacted]", "/v1/protocols/tpk-notes"]
    assert key not in text and key[4:] not in text
    assert "tpk_secret" not in text and "tpk_query" not in text and "Bearer" not in text


def test_a_refused_requests_line_carries_the_id_of_its_error_body(access_log, monkeypatch):
    """gunicorn logs a request it refuses (``handle_error``) before writing its error body, which has no
    X-Request-ID header to read: the line and the body share the id ``server_errors`` gives the refusal."""
    from api import server_errors

    logger, path = access_log
    monkeypatch.setattr(server_errors._answering, "request_id", "refusal-1", raising=False)
    _served(logger, "/v1/protocols", status="400 Bad Request", headers=[], sent=0)
    monkeypatch.setattr(server_errors._answering, "request_id", None)
    (line,) = _lines(path)
    assert (line["request_id"], line["status"], line["actor"]) == ("refusal-1", 400, None)


def test_with_text_logs_the_access_log_writes_text_lines(tmp_path, monkeypatch):
    """``PROTOCOLS_LOG_JSON=false`` is read for the request lines too: under gunicorn they are the access
    log's now, and they were JSON whatever the setting."""
    monkeypatch.setenv("PROTOCOLS_LOG_JSON", "false")
    from gunicorn.config import Config

    from api import logging_setup

    monkeypatch.setattr(logging_setup, "_server_writes_lines", False)
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    logger = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["JsonAccessLogger"](cfg)
    logger.write_request_lines()
    try:
        _served(logger, "/v1/protocols/x")
    finally:
        for handler in logger.access_log.handlers:
            handler.close()
        logger.access_log.handlers.clear()
    line = (tmp_path / "access.log").read_text()
    assert " INFO api.access request request_id=rid-1 method=GET path=/v1/protocols/x status=200" in line


def test_with_the_access_log_off_the_app_writes_its_own_line(monkeypatch):
    """``PROTOCOLS_ACCESS_LOG=`` turns gunicorn's access log off (gunicorn read "" as a file name and did not
    start; a review): the app keeps its request line."""
    from gunicorn.config import Config

    from api import logging_setup

    monkeypatch.setattr(logging_setup, "_server_writes_lines", False)
    monkeypatch.setenv("PROTOCOLS_ACCESS_LOG", "")
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["accesslog"] is None
    cfg = Config()
    cfg.set("accesslog", config["accesslog"])
    config["JsonAccessLogger"](cfg).write_request_lines()
    assert logging_setup._server_writes_lines is False


@pytest.mark.parametrize("bind", ["fd://3", "0.0.0.0", "[::1]", "[::1]:8000", "localhost", "unix:/run/tp.sock",
                                  "127.0.0.1:8105"])
def test_what_gunicorn_binds_to_is_read_as_gunicorn_reads_it(monkeypatch, bind):
    """A review: systemd's socket activation (``fd://3``) and an address without a port were refused."""
    monkeypatch.setenv("PROTOCOLS_BIND", bind)
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == bind


def test_the_settings_check_is_for_this_service_alone(monkeypatch):
    """The benchmark's bare baselines share gunicorn.conf.py and must not load the service (a review)."""
    import types

    from api import config as api_config

    checked: list[str] = []

    def from_env() -> dict[str, str]:
        checked.append("checked")
        return {}

    monkeypatch.setattr(api_config, "from_env", from_env)
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    config["on_starting"](types.SimpleNamespace(app=types.SimpleNamespace(app_uri="baselines:bare_flask")))
    assert checked == []
    config["on_starting"](types.SimpleNamespace(app=types.SimpleNamespace(app_uri="api:create_app()")))
    assert checked == ["checked"]
