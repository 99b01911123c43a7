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
    from protocols import cds, dose_units, units
    from schemas import fields

    built: list[str] = []
    monkeypatch.setattr(units, "check_ucum_dose_unit", lambda unit: built.append(f"units:{unit}"))
    monkeypatch.setattr(dose_units, "parse_dose_unit", lambda unit: built.append(f"dose_units:{unit}"))
    monkeypatch.setattr(fields, "compile_url_patterns", lambda: built.append("url_patterns"))
    monkeypatch.setattr(cds, "warm_up", lambda: built.append("cds_models"))
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
