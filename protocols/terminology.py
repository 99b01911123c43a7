"""Code systems and the codes this service accepts.

The wire contract uses FHIR-style coding system URIs. Route codes are SNOMED CT route concepts with
the FDA SPL (NCI Thesaurus) route code as an alternate; indication codes are ICD-10-CM (shape-checked
and checked against a bundled list) or SNOMED CT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
NCI_THESAURUS = "http://ncithesaurus-stage.nci.nih.gov"  # FDA SPL route codes (OID 2.16.840.1.113883.3.26.1.1)

INDICATION_SYSTEMS = (ICD10CM, SNOMED)
ROUTE_SYSTEMS = (SNOMED,)

ICD10CM_PATTERN = re.compile(r"^[A-TV-Z][0-9][0-9AB](\.[0-9A-TV-Z]{1,4})?$")
SNOMED_PATTERN = re.compile(r"^[1-9][0-9]{5,17}$")
RXNORM_PATTERN = re.compile(r"^[1-9][0-9]{0,7}$")


@dataclass(frozen=True)
class RouteConcept:
    code: str
    display: str
    spl_code: str | None
    spl_display: str | None
    source: str


ROUTE_SOURCE = "https://hl7.org/fhir/R4/valueset-route-codes.html"

ROUTES: dict[str, RouteConcept] = {
    concept.code: concept
    for concept in (
        RouteConcept("47625008", "Intravenous route", "C38276", "INTRAVENOUS", ROUTE_SOURCE),
        RouteConcept("78421000", "Intramuscular route", "C28161", "INTRAMUSCULAR", ROUTE_SOURCE),
        RouteConcept("46713006", "Nasal route", "C38284", "NASAL", ROUTE_SOURCE),
        RouteConcept("26643006", "Oral route", "C38288", "ORAL", ROUTE_SOURCE),
        RouteConcept("34206005", "Subcutaneous route", "C38299", "SUBCUTANEOUS", ROUTE_SOURCE),
        RouteConcept("37839007", "Sublingual route", "C38300", "SUBLINGUAL", ROUTE_SOURCE),
        RouteConcept("45890007", "Transdermal route", "C38305", "TRANSDERMAL", ROUTE_SOURCE),
    )
}


def route_display_matches(code: str, display: str) -> bool:
    """Display text must name the concept: its preferred term, with or without "(qualifier value)"."""
    concept = ROUTES.get(code)
    if concept is None:
        return False
    wanted = concept.display.casefold()
    given = display.strip().casefold().removesuffix("(qualifier value)").strip()
    return given == wanted


def is_well_formed_indication(system: str, code: str) -> bool:
    if system == ICD10CM:
        return bool(ICD10CM_PATTERN.match(code))
    if system == SNOMED:
        return bool(SNOMED_PATTERN.match(code))
    return False


def check_indication(system: str, code: str, display: str | None = None) -> str | None:
    """Return an error message for an unacceptable indication code, ``None`` when it is accepted."""
    if system == ICD10CM and not ICD10CM_PATTERN.match(code):
        return f"'{code}' is not a well-formed ICD-10-CM code (e.g. F33.9)"
    if system == SNOMED and not SNOMED_PATTERN.match(code):
        return f"'{code}' is not a well-formed SNOMED CT concept id"
    return None
