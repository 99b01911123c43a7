"""Valid protocol payloads for tests: start from one and override what the test is about."""

from __future__ import annotations

import copy
import uuid
from typing import Any

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"

_BASE: dict[str, Any] = {
    "title": "Esketamine nasal spray for treatment-resistant depression",
    "summary": "Adjunct to an oral antidepressant in adults with treatment-resistant depression.",
    "status": "active",
    "change_note": "test fixture",
    "drug": {"name": "esketamine", "rxnorm_cui": "2201625", "brand_names": ["Spravato"],
             "dea_schedule": "CIII"},
    "indications": [{"system": ICD10CM, "code": "F33.2",
                     "display": "Major depressive disorder, recurrent severe without psychotic features"}],
    "routes": [{"system": SNOMED, "code": "46713006", "display": "Nasal route"}],
    "dosing_ranges": [
        {"route": "46713006", "phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg",
         "frequency": {"count": 2, "period": "P1W", "text": "twice weekly"}, "duration": None,
         "max_per_period": {"value": 84, "unit": "mg", "period": "P1D"}, "instructions": None},
    ],
    "fda_approval": {"status": "approved", "application_number": "NDA211243", "approval_date": "2019-03-05",
                     "approved_indication": "Treatment-resistant depression in adults, with an oral antidepressant",
                     "rems_required": True,
                     "boxed_warning": "Sedation; dissociation; abuse and misuse; suicidal thoughts and behaviors"},
    "sources": [{"title": "Spravato prescribing information", "supports": ["fda_approval"],
                 "url": "https://www.accessdata.fda.gov/drugsatfda_docs/label/2019/211243s000lbl.pdf"}],
    "verification_notes": [],
}


def unique_id(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def protocol_payload(protocol_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid create payload; keyword overrides replace top-level fields."""
    payload = copy.deepcopy(_BASE)
    payload["id"] = protocol_id or unique_id()
    payload.update(copy.deepcopy(overrides))
    return payload
