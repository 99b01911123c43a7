"""schemas/fields.py: marshmallow's URL patterns are compiled at worker start-up, for every ``Url``
field the schemas declare (otherwise the first write and the first CDS Hooks call of each worker
compile them, 40-60 ms each)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from marshmallow import Schema, ValidationError, fields

import schemas
from schemas.fields import URL_VARIANTS, WebUrl

ROOT = Path(__file__).resolve().parents[2]


def url_fields() -> Iterator[tuple[str, fields.Url]]:
    """Every ``Url`` field of every schema defined in the schemas package (inside lists too)."""
    for info in pkgutil.iter_modules(schemas.__path__):
        module = importlib.import_module(f"schemas.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Schema) and obj.__module__ == module.__name__:
                for name, field in obj().fields.items():
                    while isinstance(field, fields.List):
                        field = field.inner
                    if isinstance(field, fields.Url):
                        yield f"{obj.__name__}.{name}", field


def test_every_url_field_is_a_variant_compiled_at_start_up():
    found = dict(url_fields())
    assert {"SourceSchema.url", "CdsRequestSchema.fhirServer"} <= set(found), found
    for name, field in found.items():
        assert (field.relative, field.absolute, field.require_tld) in URL_VARIANTS, name


_NO_COMPILE = """
import re, sys
from marshmallow import validate
from schemas.fields import URL_VARIANTS, compile_url_patterns
if sys.argv[1] == "warm":
    assert compile_url_patterns() == URL_VARIANTS
def refuse(*args, **kwargs):
    raise RuntimeError("compiled a pattern while validating")
re.compile = refuse
for relative, absolute, require_tld in URL_VARIANTS:
    validate.URL(relative=relative, absolute=absolute, require_tld=require_tld)("https://www.fda.gov/drugs")
"""


def run(mode: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter: marshmallow's pattern cache is per process and this one's is warm already."""
    return subprocess.run([sys.executable, "-c", _NO_COMPILE, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_after_compile_url_patterns_validating_a_url_compiles_nothing():
    warm = run("warm")
    assert warm.returncode == 0, warm.stderr
    cold = run("cold")  # the control: without the warm-up, the first validation compiles
    assert cold.returncode != 0 and "compiled a pattern while validating" in cold.stderr


def test_every_url_field_refuses_what_is_no_url():
    """marshmallow's pattern takes any non-blank path: a NUL, BEL, ESC, DEL, U+FFFE or zero-width space
    in a source URL was stored and served into FHIR output, and port 99999999 passed (adversarial
    probe). Every URL field is a WebUrl, which refuses them; ordinary URLs still pass."""
    found = dict(url_fields())
    assert found and all(isinstance(field, WebUrl) for field in found.values()), found
    field = found["SourceSchema.url"]
    for bad in ("https://example.org/a\x00b", "https://example.org/\x07", "https://example.org/\x1b[2J",
                "https://example.org/\x7f", "https://example.org/\ufffe", "https://example.org/a\u200bb",
                "https://example.org/a\u00a0b", "https://example.org:99999999/label.pdf"):
        try:
            field.deserialize(bad)
        except ValidationError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    for good in ("https://www.accessdata.fda.gov/drugsatfda_docs/label/2019/211243lbl.pdf",
                 "http://example.org:8080/x?y=1#z", "https://example.org/caf%C3%A9"):
        assert field.deserialize(good) == good


def test_the_printable_shortcut_skips_no_character_the_full_check_refuses():
    """WebUrl skips its per-character check for a printable URL without a space. Over every code
    point: a character that shortcut lets through is one the full check accepts too."""
    from schemas.fields import refused_in_url

    skipped_but_refused = [hex(cp) for cp in range(0x110000)
                           if (char := chr(cp)).isprintable() and char != " " and refused_in_url(char)]
    assert skipped_but_refused == []


def test_a_source_url_with_a_control_character_is_422_naming_it(client):
    from tests.factories import protocol_payload

    payload = protocol_payload()
    payload["sources"][0]["url"] = "https://example.org/label\x1b[2J.pdf"
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422, response.get_json()
    assert "sources.0.url" in response.get_json()["errors"], response.get_json()
