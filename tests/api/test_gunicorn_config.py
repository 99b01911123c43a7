"""gunicorn.conf.py's worker start-up hook does what docs/performance.md (design choice 6) relies on:
the UCUM registries, marshmallow's URL patterns and the CDS Hooks FHIR models built before the first
request, the long-lived heap frozen out of the garbage collector's reach, and a fine GIL switch interval."""

from __future__ import annotations

import gc
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

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
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    config["post_worker_init"](object())
    # both UCUM registries, marshmallow's URL patterns and the CDS Hooks FHIR models, before any request
    assert built == ["units:mg/kg/h", "dose_units:mg/kg/h", "url_patterns", "cds_models", "json_errors"]
    assert gc.get_freeze_count() > 0
    assert sys.getswitchinterval() == pytest.approx(0.0007)


def test_the_config_defaults_are_the_documented_production_ones(monkeypatch):
    for name in ("PROTOCOLS_GIL_SWITCH_INTERVAL", "PROTOCOLS_MAX_REQUESTS", "PROTOCOLS_WORKER_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["switch_interval_s"] == 0.0005
    assert config["max_requests"] == 10000 and config["max_requests_jitter"] == 500
    assert config["timeout"] == 30
    assert "authorization" not in config["access_log_format"].lower()  # no credentials in access logs


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


def test_gunicorn_access_log_redacts_a_key_sent_in_the_path():
    """Found by a security probe: a key sent where an id goes (a templated URL filled with the wrong
    variable) was written in full by gunicorn's access log (``%(U)s``), though its error log redacts one."""
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    key = "tpk_A0JSVzUfIQon45zGKWa0KVnxghVaiMoZsdN68ZoLhn8"
    atoms = config["JsonSafeAtoms"]({"U": f"/v1/protocols/{key}", "s": 404, "m": "GET"})
    assert atoms["U"] == "/v1/protocols/tpk_[redacted]" and atoms["s"] == 404 and atoms["m"] == "GET"
    assert config["JsonSafeAtoms"]({"U": "/v1/protocols/tpk-notes"})["U"] == "/v1/protocols/tpk-notes"


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
