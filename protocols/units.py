"""UCUM dose units the registry accepts in dosing ranges and per-period maxima.

A dose unit has the shape ``amount[/kg][/time]``:

* ``amount`` is a mass (``g``, ``mg``, ``ug``) — or, for a plain volume dose, a volume (``mL``);
* ``/kg`` means *per kilogram of body weight*: multiply by the patient's weight for an absolute amount;
* ``/time`` (``/h``, ``/min``, ``/d``) makes the unit a rate (an infusion).

Why so narrow: every stored dose must be comparable and convertible by the dose checker, so a unit
that is valid UCUM but is not a dose (``mg/g`` is a concentration, ``m`` a length, ``%`` a ratio)
is refused with the reason. Parsing goes through a real UCUM grammar (``ucumvert``) so ``mcg`` or
``mg/kg/banana`` fail with the parser's own explanation. The pint registry behind it takes about
half a second to build, so it is built once, on first use, and only for units outside the pick list.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

from protocols import dose_units
from protocols.dose_units import numeric_factor_problem

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

WEIGHT_UNIT = "kg"
#: UCUM month and year units: their length varies, so a rate per month/year cannot be checked.
VARIABLE_TIME_UNITS = dose_units.VARIABLE_TIME_UNITS
#: Common non-UCUM spellings and the UCUM code to use instead (named in the error message).
NON_UCUM_HINTS = {"mcg": "ug", "hr": "h", "hrs": "h", "day": "d", "cc": "mL", "gm": "g"}

_KNOWN_AMOUNTS = {"g": "mass", "mg": "mass", "ug": "mass", "mL": "volume"}
#: The masses and volumes a dose is written in (:data:`protocols.dose_units.DOSE_AMOUNTS`, which
#: ordered doses are held to as well), by UCUM dimension. A range of "1-2 Mg" (megagram) was stored
#: and judged 1.5 mg "below_min" (found by an adversarial probe). A record that needs another amount
#: is refused, naming these.
DOSE_AMOUNTS = {"[mass]": dose_units.DOSE_AMOUNTS["mass"], "[length] ** 3": dose_units.DOSE_AMOUNTS["volume"]}

ALLOWED = ("a mass (mg), a mass per kg body weight (mg/kg), either as a rate (mg/h, mg/kg/h), "
           "or a volume (mL)")


@cache
def registry() -> Any:
    """The UCUM-aware pint registry, built once on first use (construction takes ~0.5 s)."""
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@lru_cache(maxsize=512)
def _dimension(code: str) -> str:
    """Dimensionality of a UCUM code, e.g. ``[mass]``; raises ``ValueError`` for invalid UCUM."""
    try:
        quantity = registry().from_ucum(code)
        return str(quantity.dimensionality)
    except Exception as exc:  # ucumvert raises lark/pint/own errors, and AttributeError on some tokens
        text = str(exc).strip()
        if isinstance(exc, AttributeError) or not text:
            raise ValueError("it names no unit (an annotation such as {tbl} alone is not a dose unit)") from exc
        detail = text.splitlines()[0]
        raise ValueError(detail.split("is not a valid UCUM unit:", 1)[-1].strip()) from exc


def _ucum_error(unit: str, part: str) -> str | None:
    """A message when ``unit`` (or its ``part``) is not valid UCUM, else ``None``."""
    for candidate in (part, unit):
        try:
            _dimension(candidate)
        except ValueError as exc:
            hint = NON_UCUM_HINTS.get(candidate.strip()) or NON_UCUM_HINTS.get(part.strip())
            suffix = f" (did you mean '{hint}'?)" if hint else ""
            return f"'{unit}' is not a valid UCUM unit{suffix}: {exc}"
    return None


def check_dose_unit(unit: str) -> str | None:
    """Return an error message for an unsupported unit, ``None`` when it is accepted.

    Pick-list units are accepted without building the UCUM registry (tests prove each of them
    passes the full check); any other unit goes through :func:`check_ucum_dose_unit`.
    """
    if unit in DOSE_UNITS:
        return None
    return check_ucum_dose_unit(unit)


@lru_cache(maxsize=512)
def check_ucum_dose_unit(unit: str) -> str | None:
    """The full check: valid UCUM (parsed by ucumvert) and of the form amount[/kg][/time]."""
    parts = unit.split("/")
    if not unit.strip() or any(not part.strip() for part in parts):
        return f"'{unit}' is not a valid UCUM unit; a dose unit looks like mg, mg/kg or mg/kg/h"
    problem = numeric_factor_problem(unit)
    if problem is not None:
        return problem
    for part in parts:
        message = _ucum_error(unit, part)
        if message:
            return message
    if len(parts) > 3:
        return f"'{unit}' is not a dose unit of the form amount[/kg][/time]; dose units are {ALLOWED}"
    if "{" in unit:
        # UCUM annotations carry no meaning: "mg{tbl}" is milligrams to the dose check and may read as
        # tablets to a person (it was stored, though the pick list's rules say annotations are refused).
        return (f"'{unit}': annotations in braces are not part of a dose unit (the check would read "
                f"'{unit.split('{')[0] or unit}' and ignore them); write the unit without them")
    amount, rest = parts[0], parts[1:]
    dimension = _dimension(amount)
    if dimension in DOSE_AMOUNTS and amount not in DOSE_AMOUNTS[dimension]:
        kind = "mass" if dimension == "[mass]" else "volume"
        return (f"'{unit}': '{amount}' is not a {kind} doses are written in; use "
                f"{', '.join(DOSE_AMOUNTS[dimension])}")
    if dimension == "[length] ** 3":
        if rest:
            return (f"'{unit}': a volume dose is a plain volume (mL); per-kg doses and rates must use "
                    f"mass units so they can be checked against body weight and infusion time")
        return None
    if dimension != "[mass]":
        return f"'{unit}' is not a dose: '{amount}' is {dimension}, but dose units are {ALLOWED}"
    if rest and _dimension(rest[0]) == "[mass]":
        if rest[0] != WEIGHT_UNIT:
            return (f"'{unit}': a weight-based dose is per kilogram of body weight; use '/kg', "
                    f"not '/{rest[0]}' (mass per mass is a concentration)")
        rest = rest[1:]
    if len(rest) > 1:
        return f"'{unit}' is not a dose unit of the form amount[/kg][/time]; dose units are {ALLOWED}"
    if rest:
        time = rest[0]
        if "." in time:
            return f"'{unit}': write a product in the denominator as successive '/' parts, e.g. mg/kg/h"
        if _dimension(time) != "[time]":
            return (f"'{unit}' is not a dose: '/{time}' is neither per kg body weight nor per unit of "
                    f"time; dose units are {ALLOWED}")
        if time in VARIABLE_TIME_UNITS:
            return (f"'{unit}': '{time}' has a variable or non-clinical length; use "
                    f"{dose_units.RATE_TIMES_TEXT}")
        if time not in dose_units.RATE_TIMES:
            # mg/kg/ms is one slip from mg/kg/min (a factor of 60,000), and was stored (adversarial probe).
            return (f"'{unit}': '/{time}' is not a time doses are given per; use "
                    f"{dose_units.RATE_TIMES_TEXT}")
    return None


def is_weight_based(unit: str) -> bool:
    """Whether the unit is per kg of body weight (``mg/kg``, ``mg/kg/h``)."""
    parts = unit.split("/")
    return len(parts) >= 2 and parts[1] == WEIGHT_UNIT


def describe(unit: str) -> dict[str, Any]:
    """How the service reads an accepted unit (for pick lists): kind, weight-based, rate."""
    parts = unit.split("/")
    weight_based = is_weight_based(unit)
    rate_parts = parts[2:] if weight_based else parts[1:]
    amount = parts[0]
    kind = _KNOWN_AMOUNTS.get(amount) or ("volume" if _dimension(amount) == "[length] ** 3" else "mass")
    return {
        "kind": kind,
        "weight_based": weight_based,
        "rate": bool(rate_parts),
        "per": rate_parts[0] if rate_parts else None,
    }
