"""Dose units: parse UCUM dose units and derive *exact* conversion factors between them.

Why a module of its own: a dose check compares an ordered dose with a protocol range, and at the
range edges any rounding decides the verdict (56 mg is inside 56-84 mg, 84.0000001 mg is above).
So parsing and dimension checks go through a real UCUM parser (``ucumvert``, pint underneath),
but every factor is taken from pint with ``Decimal`` magnitudes — metric prefixes and time units
are exact there (``ug`` → ``0.001`` mg, ``h`` → ``3600`` s) — and then held as
:class:`fractions.Fraction`, so conversions through ``/h`` and ``/min`` (which divide by 60) stay
exact too. Nothing here ever touches a float.

A dose unit has the shape ``amount[/kg][/time]``:

* ``amount`` is a mass (``g``, ``mg``, ``ug``; ``mcg`` is accepted as the clinical spelling of
  ``ug``) or a volume (``mL``, ``L``). Mass and volume convert only through a known concentration.
* ``/kg`` means *per kilogram of body weight* (``mg/kg``): the patient's weight turns it into an
  absolute amount.
* ``/time`` (``/h``, ``/min``, ``/d``) makes the unit a rate (an infusion). Years and months are
  refused, as in :mod:`protocols.durations`, because their length varies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any

#: Clinical spellings that are not UCUM codes, and UCUM's lower-case litre (``l``, ``ml``: the same unit
#: as ``L``, ``mL``, and what many EHRs send), mapped to the code this service reads and writes. Refusing
#: ``ml/h`` turned a critical card for 10 ml/h of 10 mg/mL into "dose not checked" (a review).
ALIASES = {"mcg": "ug", "ml": "mL", "l": "L"}

MASS_BASE = "mg"
VOLUME_BASE = "mL"
TIME_BASE = "s"
WEIGHT_UNIT = "kg"

#: Time units with a variable length (UCUM month and year): refused in rates.
VARIABLE_TIME_UNITS = frozenset({"mo", "a", "mo_j", "mo_g", "mo_s", "a_j", "a_g", "a_t"})

#: The masses and volumes a dose is written in, by kind. UCUM also has Mg (megagram: 10^9 mg, one
#: mis-cased key from mg), kg, cg, dg, pounds, grains and drops, and products with dimensionless
#: factors (``mg.[iU]``, ``mg%``, ``[pi].mg``) that are still a mass to a parser; each was accepted as a
#: dose amount somewhere (a range of "1-2 Mg" stored; ``84 mg{tbl}`` and ``84 mg.[iU]`` ordered and
#: judged as 84 mg, ``mg%`` as a hundredth of a mg; adversarial probes). Only these are read.
DOSE_AMOUNTS: dict[str, tuple[str, ...]] = {"mass": ("g", "mg", "ug", "ng"), "volume": ("mL", "L")}
#: The times a rate is written per: the pick list's rules name these. ``mg/kg/ms`` is one slip from
#: ``mg/kg/min`` (a factor of 60,000) and was stored and ordered; seconds, kiloseconds and the like are
#: no clinical rate (adversarial probe).
RATE_TIMES: tuple[str, ...] = ("min", "h", "d", "wk")
RATE_TIMES_TEXT = "min, h, d or wk"


class UnitError(ValueError):
    """A unit that cannot be used for a dose; the message says why, for a 422 body."""


_ANNOTATION = re.compile(r"\{[^}]*\}")
#: A term that starts with a digit: a numeric factor (``2.mg``, ``mg/12.h``) or a power of ten
#: (``10*3.mg``, ``10^6.ug``).
_NUMERIC_TERM = re.compile(r"(?:^|[./(])[0-9]")
#: An exponent of more than one digit (``mg12``); dose units need none beyond ``cm3``.
_LONG_EXPONENT = re.compile(r"[A-Za-z\]_][+-]?[0-9]{2,}")


def numeric_factor_problem(code: str) -> str | None:
    """Why ``code`` cannot be a unit of this service because of the numbers in it, or None.

    Why: UCUM allows numeric factors and powers of ten of any size, and pint computes them exactly:
    ``10*999999.mg`` took ~40 s of CPU per conversion and then overflowed (a 500), and ``10*400.g``
    turned a dose of 1 into a 400-digit number past every bound on values. A dose's size belongs in
    its value; its unit names a mass, a volume, body weight and time. Checked before any parsing."""
    bare = _ANNOTATION.sub("", code)
    if _NUMERIC_TERM.search(bare):
        return (f"'{code}' carries a numeric factor or a power of ten; write the amount in the value "
                "and use a plain unit such as mg, ug or mL")
    if _LONG_EXPONENT.search(bare):
        return f"'{code}' carries an exponent no dose unit has"
    return None


@dataclass(frozen=True)
class DoseUnit:
    """A parsed dose unit with exact factors to the base units (mg or mL, seconds)."""

    code: str
    amount: str
    kind: str  # "mass" | "volume"
    amount_factor: Fraction  # base amount (mg or mL) in one ``amount``
    per_kg: bool
    time: str | None
    time_seconds: Fraction | None

    @property
    def is_rate(self) -> bool:
        return self.time is not None

    @property
    def absolute_code(self) -> str:
        """The unit without ``/kg``: what a weight-based amount becomes for one patient."""
        return self.amount + (f"/{self.time}" if self.time else "")

    @property
    def per_administration_code(self) -> str:
        """The unit without the time part: the amount given in one administration."""
        return self.amount + ("/kg" if self.per_kg else "")


@dataclass(frozen=True)
class Concentration:
    """Mass per volume of the product given (``10 mg/mL``), as an exact mg per mL factor."""

    value: Decimal | Fraction
    unit: str
    mg_per_ml: Fraction


@lru_cache(maxsize=1)
def _registry() -> Any:
    """The UCUM-aware pint registry with Decimal magnitudes (built once: it takes ~0.4 s)."""
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry(non_int_type=Decimal)


@lru_cache(maxsize=256)
def _quantity(code: str) -> Any:
    problem = numeric_factor_problem(code)
    if problem is not None:
        raise UnitError(problem)
    try:
        quantity = _registry().from_ucum(code)
    except Exception as exc:  # ucumvert raises its own error types (and lark's) for bad input
        raise UnitError(f"'{code}' is not a valid UCUM unit") from exc
    if not hasattr(quantity, "dimensionality"):  # an annotation alone ({spray}) parses to a bare token
        raise UnitError(f"'{code}' names no unit (an annotation such as {{spray}} alone is not a unit)")
    return quantity


def _dimension(code: str) -> str:
    return str(_quantity(code).dimensionality)


@lru_cache(maxsize=256)
def _factor(code: str, base: str) -> Fraction:
    """Exact number of ``base`` in one ``code`` (both of the same dimension)."""
    registry = _registry()
    source, target = _quantity(code), _quantity(base)
    magnitude = registry.Quantity(Decimal(1), source.units).to(target.units).magnitude
    factor = Fraction(Decimal(magnitude)) * Fraction(Decimal(source.magnitude))
    if factor <= 0:
        raise UnitError(f"'{code}' has no usable conversion to {base}")
    return factor


def normalize(code: str) -> str:
    """Replace clinical aliases (``mcg``) with their UCUM codes, part by part."""
    return "/".join(ALIASES.get(part, part) for part in code.strip().split("/"))


def _amount(code: str) -> tuple[str, Fraction]:
    dimension = _dimension(code)
    if dimension == "[mass]":
        return "mass", _factor(code, MASS_BASE)
    if dimension == "[length] ** 3":
        return "volume", _factor(code, VOLUME_BASE)
    raise UnitError(f"'{code}' is not an amount of drug: use a mass (g, mg, ug) or a volume (mL)")


def _time(code: str) -> Fraction:
    if code in VARIABLE_TIME_UNITS:
        raise UnitError(f"'{code}' has a variable length; use h, min, d or wk")
    if _dimension(code) != "[time]":
        raise UnitError(f"'{code}' is not a unit of time")
    return _factor(code, TIME_BASE)


@lru_cache(maxsize=256)
def parse_dose_unit(code: str) -> DoseUnit:
    """Parse ``amount[/kg][/time]``; raise :class:`UnitError` saying what is wrong."""
    if not isinstance(code, str) or not code.strip() or len(code) > 40:
        raise UnitError("a dose unit is a UCUM code such as mg, mg/kg or mg/kg/h")
    normalized = normalize(code)
    parts = normalized.split("/")
    if any(not part for part in parts) or len(parts) > 3:
        raise UnitError(f"'{code}' is not a dose unit of the form amount[/kg][/time], e.g. mg/kg/h")
    _quantity(normalized)  # the whole code must be valid UCUM, not only its parts
    kind, amount_factor = _amount(parts[0])
    rest = parts[1:]
    per_kg = bool(rest) and rest[0] == WEIGHT_UNIT
    if per_kg:
        rest = rest[1:]
    if len(rest) > 1:
        raise UnitError(f"'{code}' is not a dose unit of the form amount[/kg][/time], e.g. mg/kg/h")
    time = rest[0] if rest else None
    time_seconds = _time(time) if time else None
    return DoseUnit(normalized, parts[0], kind, amount_factor, per_kg, time, time_seconds)


def _plain_amount(code: str, amount: str, kinds: tuple[str, ...]) -> None:
    """Raise :class:`UnitError` unless ``amount`` is one of :data:`DOSE_AMOUNTS` of ``kinds``."""
    allowed = [unit for kind in kinds for unit in DOSE_AMOUNTS[kind]]
    if amount in allowed:
        return
    if "{" in amount:
        raise UnitError(f"'{code}': annotations in braces are not part of a dose unit (the check would read "
                        f"'{_ANNOTATION.sub('', amount) or amount}' and ignore them); write the unit without them")
    spelled = ", ".join(allowed[:-1]).replace("ug", "ug (mcg)") + f" or {allowed[-1]}"
    raise UnitError(f"'{code}': '{amount}' is not a {' or '.join(kinds)} doses are written in; use {spelled}")


@lru_cache(maxsize=256)
def parse_ordered_unit(code: str) -> DoseUnit:
    """An ordered dose's unit: :func:`parse_dose_unit`, held to the units doses are written in.

    Why stricter than :func:`parse_dose_unit` (which also reads stored ranges, and the service's own
    conversion targets such as ``mg/s``): any UCUM mass or time parses, so ``mg{tbl}``, ``mg.[iU]``,
    ``Mg`` and ``mg/kg/ms`` were read as something no prescriber meant (:data:`DOSE_AMOUNTS`,
    :data:`RATE_TIMES`). A volume stays a volume (mL/h, mL/kg: a pump rate or a per-kg volume of a
    product whose concentration is sent)."""
    unit = parse_dose_unit(code)
    _plain_amount(code, unit.amount, (unit.kind,))
    if unit.time is not None and unit.time not in RATE_TIMES:
        if "{" in unit.time:
            raise UnitError(f"'{code}': annotations in braces are not part of a dose unit; write the unit "
                            "without them")
        raise UnitError(f"'{code}': '/{unit.time}' is not a time doses are given per; use {RATE_TIMES_TEXT}")
    return unit


def parse_concentration(value: Decimal | Fraction, code: str) -> Concentration:
    """A mass-per-volume concentration such as ``10 mg/mL`` → exact mg per mL; both parts are units
    doses are written in (:data:`DOSE_AMOUNTS`: ``mg.[pi]/mL`` was read as π times the strength)."""
    normalized = normalize(code)
    parts = normalized.split("/")
    if len(parts) != 2 or not all(parts):
        raise UnitError(f"'{code}' is not a concentration; use mass/volume such as mg/mL")
    mass_kind, mass_factor = _amount(parts[0])
    volume_kind, volume_factor = _amount(parts[1])
    if (mass_kind, volume_kind) != ("mass", "volume"):
        raise UnitError(f"'{code}' is not a concentration; use mass/volume such as mg/mL")
    _plain_amount(code, parts[0], ("mass",))
    _plain_amount(code, parts[1], ("volume",))
    return Concentration(value, normalized, Fraction(value) * mass_factor / volume_factor)


def to_kilograms(value: Decimal, code: str) -> Fraction:
    """Body weight in kg from any UCUM mass unit (``kg``, ``g``, ``[lb_av]``)."""
    normalized = normalize(code)
    if _dimension(normalized) != "[mass]":
        raise UnitError(f"'{code}' is not a unit of mass")
    return Fraction(value) * _factor(normalized, WEIGHT_UNIT)


def seconds(duration: Any) -> Fraction:
    """Whole seconds of a ``timedelta`` (ISO durations here have no fractional seconds)."""
    return Fraction(int(duration.total_seconds()))
