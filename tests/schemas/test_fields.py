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

from marshmallow import Schema, fields

import schemas
from schemas.fields import URL_VARIANTS

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
