"""Code systems and the codes this service accepts.

The wire contract uses FHIR-style coding system URIs. Route codes are SNOMED CT route concepts with
the FDA SPL (NCI Thesaurus) route code as an alternate; indication codes are ICD-10-CM or SNOMED CT.

Why bundled lists instead of "any well-formed code": an EHR trusts the codes in a record, and a
well-formed but non-existent or mistyped code (``F33.7``, a SNOMED id with a wrong display) would be
passed on as if it were real. Every accepted code is therefore listed in ``protocols/data/*.json``
with the URL of the source it was checked against; adding a code is a reviewed data change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
#: NCI Thesaurus (OID 2.16.840.1.113883.3.26.1.1): the FDA SPL route codes served as alternates, and the DEA
#: schedule codes of the FHIR face. HL7 Terminology's preferred URI since 2022 (CodeSystem v3-nciThesaurus,
#: UP-345); the pick list served the earlier "http://ncithesaurus-stage.nci.nih.gov" while the FHIR face
#: used this one, so one code system had two URIs (a clinical-data review).
NCI_THESAURUS = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"

INDICATION_SYSTEMS = (ICD10CM, SNOMED)
ROUTE_SYSTEMS = (SNOMED,)

#: ICD-10-CM: letter (not U), digit, digit-or-A/B; optional dot and 1-4 more characters.
ICD10CM_PATTERN = re.compile(r"\A[A-TV-Z][0-9][0-9AB](\.[0-9A-TV-Z]{1,4})?\Z")
#: SNOMED CT concept id: 6-18 digits, no leading zero (the check digit is verified separately).
SNOMED_PATTERN = re.compile(r"\A[1-9][0-9]{5,17}\Z")
RXNORM_PATTERN = re.compile(r"\A[1-9][0-9]{0,7}\Z")

DATA_DIR = Path(__file__).resolve().parent / "data"

_SEMANTIC_TAG = re.compile(r"\s*\([a-z /-]+\)\s*$")


def _load(name: str) -> dict[str, Any]:
    with (DATA_DIR / name).open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


@dataclass(frozen=True)
class RouteConcept:
    code: str
    display: str
    spl_code: str | None
    spl_display: str | None
    sources: tuple[str, ...]

    @property
    def source(self) -> str:
        return self.sources[0]


@dataclass(frozen=True)
class IndicationConcept:
    system: str
    code: str
    display: str
    source: str
    category: str | None = None
    billable: bool | None = None
    #: ICD-10-CM code prefixes an order's reason may carry and still be one this (unspecified) code's
    #: protocols treat: the codes whose titles name the same disorder (data/icd10cm.json, with its source).
    covers: tuple[str, ...] = ()
    covers_source: str | None = None


@dataclass(frozen=True)
class RxNormConcept:
    rxcui: str
    name: str
    tty: str
    source: str
    #: Catalog RxCUIs an order coded with this concept is checked against (a product-level code of a
    #: single-ingredient product, for a protocol coded by its ingredient).
    orders_match: tuple[str, ...] = ()


def _routes() -> dict[str, RouteConcept]:
    return {
        item["code"]: RouteConcept(item["code"], item["display"], item.get("spl_code"),
                                   item.get("spl_display"), tuple(item["sources"]))
        for item in _load("routes.json")["routes"]
    }


def _indications() -> dict[tuple[str, str], IndicationConcept]:
    concepts: dict[tuple[str, str], IndicationConcept] = {}
    for item in _load("icd10cm.json")["codes"]:
        concepts[(ICD10CM, item["code"])] = IndicationConcept(
            ICD10CM, item["code"], item["display"], item["source"], item.get("category"), item.get("billable"),
            tuple(item.get("covers", ())), item.get("covers_source"))
    for item in _load("snomed_indications.json")["concepts"]:
        concepts[(SNOMED, item["code"])] = IndicationConcept(SNOMED, item["code"], item["display"], item["source"])
    return concepts


def _rxnorm() -> dict[str, RxNormConcept]:
    return {item["rxcui"]: RxNormConcept(item["rxcui"], item["name"], item["tty"], item["source"],
                                         tuple(item.get("orders_match", ())))
            for item in _load("rxnorm.json")["concepts"]}


#: SNOMED CT route code -> concept (pick list served at /v1/terminology/routes).
ROUTES: dict[str, RouteConcept] = _routes()
#: (system, code) -> indication concept (pick list served at /v1/terminology/indications).
INDICATIONS: dict[tuple[str, str], IndicationConcept] = _indications()
#: RxCUI -> concept, for the RxNorm codes the curated catalog uses.
RXNORM_CONCEPTS: dict[str, RxNormConcept] = _rxnorm()
#: The URIs an order may code an FDA SPL (NCI Thesaurus) route code under: HL7's preferred one, the one the
#: pick list once served, and the OID's URN.
NCI_THESAURUS_SYSTEMS = (NCI_THESAURUS, "http://ncithesaurus-stage.nci.nih.gov", "urn:oid:2.16.840.1.113883.3.26.1.1")
#: FDA SPL route code -> the SNOMED CT route the pick list pairs it with (C38284 nasal -> 46713006): an order
#: coded only that way got no card at all (a clinical probe).
SPL_ROUTES: dict[str, str] = {concept.spl_code: code for code, concept in ROUTES.items() if concept.spl_code}


def order_rxnorm_codes(codes: Sequence[str]) -> list[str]:
    """The RxCUIs an order's medication codes stand for in the catalog: the codes themselves and what
    :data:`RXNORM_CONCEPTS` says they match. A Ketalar order coded 206967 (the product, as EHRs code
    orders) matched no protocol coded 6130 (the ingredient) and got no card at all (clinical QA probe)."""
    expanded = list(dict.fromkeys(codes))
    for code in codes:
        concept = RXNORM_CONCEPTS.get(code)
        if concept is not None:
            expanded += [match for match in concept.orders_match if match not in expanded]
    return expanded


# ---------------------------------------------------------------------------------- checks


def _normalize(text: str, *, snomed: bool = False) -> str:
    """Compare terms case-insensitively and ignoring spacing; for SNOMED CT also ignore a trailing
    semantic tag such as "(qualifier value)" or "(disorder)" (the fully specified name's suffix)."""
    if snomed:
        text = _SEMANTIC_TAG.sub("", text.strip())
    return " ".join(text.split()).casefold()


def snomed_check_digit_ok(code: str) -> bool:
    """SNOMED CT ids end in a Verhoeff check digit; a typo in any digit fails it."""
    return bool(SNOMED_PATTERN.match(code)) and _verhoeff_ok(code)


def _verhoeff_ok(number: str) -> bool:
    check = 0
    for index, digit in enumerate(reversed(number)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[index % 8][int(digit)]]
    return check == 0


_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5), (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7), (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3), (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4), (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7), (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def route_display_matches(code: str, display: str) -> bool:
    """Display text must name the concept: its preferred term, with or without "(qualifier value)"."""
    concept = ROUTES.get(code)
    if concept is None:
        return False
    return _normalize(display, snomed=True) == _normalize(concept.display, snomed=True)


def check_route(code: str, display: str | None) -> dict[str, list[str]]:
    """Errors by field name (``code``/``display``) for a route coding; empty when it is accepted."""
    concept = ROUTES.get(code)
    if concept is None:
        return {"code": [f"'{code}' is not a supported SNOMED CT route; see /v1/terminology/routes"]}
    if display is not None and not route_display_matches(code, display):
        return {"display": [f"display does not match SNOMED CT {code}: expected '{concept.display}'"]}
    return {}


def is_well_formed_indication(system: str, code: str) -> bool:
    if system == ICD10CM:
        return bool(ICD10CM_PATTERN.match(code))
    if system == SNOMED:
        return snomed_check_digit_ok(code)
    return False


def check_indication_coding(system: str, code: str, display: str | None = None) -> dict[str, list[str]]:
    """Errors by field name (``code``/``display``) for an indication coding; empty when accepted.

    Order of checks: shape (catches typos such as ``F3.32``), then the bundled list (catches
    well-formed codes nobody verified), then the display (catches a right code with a wrong name).
    """
    if system == ICD10CM and not ICD10CM_PATTERN.match(code):
        return {"code": [f"'{code}' is not a well-formed ICD-10-CM code (e.g. F33.9)"]}
    if system == SNOMED and not SNOMED_PATTERN.match(code):
        return {"code": [f"'{code}' is not a well-formed SNOMED CT concept id"]}
    if system == SNOMED and not _verhoeff_ok(code):
        return {"code": [f"'{code}' fails the SNOMED CT check digit (mistyped id?)"]}
    concept = INDICATIONS.get((system, code))
    if concept is None:
        name = "ICD-10-CM" if system == ICD10CM else "SNOMED CT"
        return {"code": [f"{name} code '{code}' is not in the service's indication list; "
                         "see /v1/terminology/indications"]}
    snomed = system == SNOMED
    if display is not None and _normalize(display, snomed=snomed) != _normalize(concept.display, snomed=snomed):
        return {"display": [f"display does not match {code}: expected '{concept.display}'"]}
    return {}


def covered_codes(system: str, code: str) -> tuple[str, ...]:
    """The code prefixes an indication ``(system, code)`` also stands for when an order states its
    reason (empty: the code matches itself only). Curated per code rather than read off the code's
    shape: an unspecified ICD-10-CM code is not its whole category (F32.9, major depressive disorder,
    does not cover F32.81, premenstrual dysphoric disorder, filed under the same F32)."""
    concept = INDICATIONS.get((system, code))
    return concept.covers if concept is not None else ()


@cache
def indication_list() -> tuple[IndicationConcept, ...]:
    """Every accepted indication, ICD-10-CM first, each system in code order."""
    order = {ICD10CM: 0, SNOMED: 1}
    return tuple(sorted(INDICATIONS.values(), key=lambda c: (order[c.system], c.code)))
