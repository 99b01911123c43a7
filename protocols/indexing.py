"""Derived search rows for a version, written in the same transaction as the version itself."""

from __future__ import annotations

import json
import unicodedata
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, text

from protocols.record import split_document
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
    """A drug or brand name as the ``drug`` filter compares it: compatibility forms folded and
    case-folded (NFKC casefold, Unicode's form for comparing identifiers), a dotless or dotted i as an i, white
    space runs as one space and none at either end. Both sides go through this.

    Why each step: stored names were only case-folded and queries also stripped, so "Spravato " could
    not be found at all, and "É" composed never matched "E" plus a combining accent (found by a probe;
    migration 0007). Fullwidth and mathematical letters and a dotless i (U+0131) are the same name to a
    reader and were another one to the filter (a review; migration 0009 re-derives what was stored
    before). Look-alikes of other scripts are refused where names are written
    (``schemas.fields.mixes_scripts``), not folded here."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    # A capital dotted İ case-folds to i plus a combining dot ("İbuprofen" never matched "ibuprofen").
    return " ".join(folded.replace("\u0131", "i").replace("i\u0307", "i").split())


def rederive_drug_terms(connection: Connection) -> None:
    """Replace the stored ``drug`` terms of every version whose terms differ from what
    :func:`search_terms` gives now (migrations 0007 and 0009, after :func:`drug_term` changed). On most
    databases none differ and nothing is written; the versions themselves are untouched (the terms are
    derived rows). ``connection`` is a SQLAlchemy connection inside the migration's transaction."""
    stored: dict[tuple[str, int], set[str]] = defaultdict(set)
    for protocol_id, version, value in connection.execute(
            text("SELECT protocol_id, version, value FROM search_terms WHERE kind = 'drug'")):
        stored[(protocol_id, int(version))].add(value)
    last = 0
    while True:  # in batches: a catalog's documents need not fit in memory at once
        rows = connection.execute(text("SELECT seq, protocol_id, version, status, document FROM protocol_versions "
                                       "WHERE seq > :last ORDER BY seq LIMIT 1000"), {"last": last}).all()
        if not rows:
            return
        last = int(rows[-1][0])
        for _, protocol_id, version, status, document in rows:
            _, content = split_document(json.loads(document))
            wanted = {value[:200] for kind, value in search_terms(content, status) if kind == "drug"}
            if wanted == stored.get((protocol_id, int(version)), set()):
                continue
            key = {"p": protocol_id, "v": int(version)}
            connection.execute(text("DELETE FROM search_terms WHERE protocol_id = :p AND version = :v "
                                    "AND kind = 'drug'"), key)
            for value in sorted(wanted):
                connection.execute(text("INSERT INTO search_terms (protocol_id, version, kind, value) "
                                        "VALUES (:p, :v, 'drug', :value)"), {**key, "value": value})


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
