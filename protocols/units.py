"""UCUM dose units the registry accepts in dosing ranges and per-period maxima.

A unit with ``/kg`` is weight-based: multiply by the patient's body weight for an absolute amount.
"""

from __future__ import annotations

#: unit code -> human description (pick list served at /v1/terminology/units)
DOSE_UNITS: dict[str, str] = {
    "g": "gram",
    "mg": "milligram",
    "ug": "microgram",
    "mg/kg": "milligram per kilogram body weight",
    "ug/kg": "microgram per kilogram body weight",
    "mg/h": "milligram per hour",
    "mg/min": "milligram per minute",
    "mg/kg/h": "milligram per kilogram body weight per hour",
    "mg/kg/min": "milligram per kilogram body weight per minute",
    "ug/kg/h": "microgram per kilogram body weight per hour",
    "ug/kg/min": "microgram per kilogram body weight per minute",
    "mL": "millilitre",
}


def is_weight_based(unit: str) -> bool:
    return "/kg" in unit


def check_dose_unit(unit: str) -> str | None:
    """Return an error message for an unsupported unit, ``None`` when it is accepted."""
    if unit in DOSE_UNITS:
        return None
    return f"'{unit}' is not a supported UCUM dose unit; use one of: {', '.join(DOSE_UNITS)}"
