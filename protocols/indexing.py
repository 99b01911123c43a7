"""Derived search rows for a version, written in the same transaction as the version itself."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

from protocols.terminology import ICD10CM


def search_terms(content: Mapping[str, Any], status: str) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, value)`` pairs a version can be found by. Values are normalized for equality."""
    yield "status", status
    drug = content.get("drug") or {}
    if drug.get("name"):
        yield "drug", drug_term(str(drug["name"]))
    for brand in drug.get("brand_names") or []:
        yield "drug", drug_term(str(brand))
    if drug.get("rxnorm_cui"):
        yield "rxnorm_cui", str(drug["rxnorm_cui"])
    if drug.get("dea_schedule"):
        yield "dea_schedule", str(drug["dea_schedule"])
    for route in content.get("routes") or []:
        yield "route", str(route["code"])
    for indication in content.get("indications") or []:
        yield "indication", str(indication["code"]).upper()
        yield "indication_system", str(indication["system"])
        for key in indication_keys(str(indication["system"]), str(indication["code"])):
            yield "indication_key", key
    approval = content.get("fda_approval") or {}
    if approval.get("status"):
        yield "fda_status", str(approval["status"])
    if approval.get("rems_required") is not None:
        yield "rems_required", "true" if approval["rems_required"] else "false"


def drug_term(name: str) -> str:
    """A drug or brand name as the ``drug`` filter compares it: case-folded, in Unicode NFC, white space
    runs as one space and none at either end. Stored names were only case-folded and queries were also
    stripped, so "Spravato " could not be found at all, and "É" composed never matched "E" plus a
    combining accent (found by a probe); both sides go through this now (migration 0007 re-derives
    what was stored before)."""
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
    return " ".join(folded.split())


def indication_keys(system: str, code: str) -> list[str]:
    """``system|code`` tokens (FHIR token-search style) an indication is found by, exact-match only.

    An ICD-10-CM code is also found by each of its ancestors: ``F33.21`` yields ``F33``, ``F33.2`` and
    ``F33.21``, so ``indication=F33`` is an indexed equality lookup (no LIKE, no collation games)
    that still matches every subcode.
    """
    code = code.upper()
    if system != ICD10CM:
        return [f"{system}|{code}"]
    category, _, rest = code.partition(".")
    keys = [f"{system}|{category}"]
    keys += [f"{system}|{category}.{rest[:length]}" for length in range(1, len(rest) + 1)]
    return keys
