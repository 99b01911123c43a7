"""Dose checking: is an ordered dose inside a protocol version's dosing range?

Pure domain code (no Flask, no database): it receives a version's clinical content and an order,
and returns a verdict with the arithmetic shown, so a clinician can see *why* (``0.5-1 mg/kg x
70 kg = 35-70 mg``). Every comparison is exact — values are Decimals on the wire, Fractions here
(see :mod:`protocols.dose_units`) — so a dose exactly at an edge is inside and one a hair beyond it
is outside. Numbers shown to people are rounded only for display (12 significant digits), only when
the exact value needs more digits (1 mg/kg/h in ug/kg/min; 1.00000000001 mL of 4.49999999996 mg/mL),
and then always with ``≈``.

Choosing the range. A protocol may hold several ranges for a route, one per phase (induction,
maintenance…). With a ``phase`` the ranges of that phase are used. Without one, ranges that all
share one phase are used as is; ranges of several phases are an error naming ``phase``
(:class:`PhaseRequired`) rather than a guess, because the right answer differs by phase. Several
ranges *within* one phase are alternatives a prescriber chooses between (Spravato maintenance:
weekly in weeks 5-8, every two weeks from week 9; TRD and MDSI induction): the dose is judged
against each and the most favourable verdict is the answer, with every evaluation returned.
Callers that cannot know the phase (the CDS Hooks service: an order carries none) evaluate every
range for the route with :func:`evaluate` and apply the same "most favourable" rule.

Per-period maxima. With a frequency of ``count`` per ``P`` and a limit per window ``W``, evenly
spaced doses put at most ``ceil(count x W / P)`` doses in any window: 2 per week never puts two
doses in one day, 4 per day puts four. That many doses times the per-administration amount is the
projected amount compared with the limit. Without a frequency one dose is checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext
from enum import StrEnum
from fractions import Fraction
from typing import Any

from protocols import terminology
from protocols.dose_units import Concentration, DoseUnit, UnitError, parse_dose_unit, parse_ordered_unit, seconds
from protocols.durations import parse_duration

MIN_WEIGHT_KG = Decimal("0.3")
MAX_WEIGHT_KG = Decimal("500")
DISPLAY_DIGITS = 12
#: Ordered numbers (doses, rates, weights as sent by a client or an EHR): |value| within 1e-12 … 1e12
#: and at most 12 significant digits. Any real dose fits, and exact arithmetic on them stays bounded:
#: a Fraction of 1e999999 is a million-digit integer.
MAX_SIGNIFICANT_DIGITS = 12
MAX_EXPONENT = 12

WEIGHT_FIELD = "patient.weight_kg"
DASH = "\u2013"  # en dash, as in "35\u201370 mg"
TIMES = "\u00d7"  # multiplication sign


class Verdict(StrEnum):
    WITHIN_RANGE = "within_range"
    BELOW_MIN = "below_min"
    ABOVE_MAX = "above_max"
    EXCEEDS_MAX_PER_PERIOD = "exceeds_max_per_period"
    #: Each dose is in range but ordered more often than the protocol's frequency (and no per-period
    #: maximum was exceeded, or none is given): 0.5 mg/kg five times a day against "2-3 times weekly"
    #: read "within_range", with the frequency only in a message (found by an adversarial probe).
    MORE_FREQUENT_THAN_PROTOCOL = "more_frequent_than_protocol"
    ROUTE_NOT_IN_PROTOCOL = "route_not_in_protocol"
    PHASE_NOT_IN_PROTOCOL = "phase_not_in_protocol"


#: Most favourable first: among alternative ranges the order is judged by the one it fits best.
FAVOURABLE_ORDER = (Verdict.WITHIN_RANGE, Verdict.BELOW_MIN, Verdict.MORE_FREQUENT_THAN_PROTOCOL,
                    Verdict.EXCEEDS_MAX_PER_PERIOD, Verdict.ABOVE_MAX)


# ----------------------------------------------------------------------------------- errors


class DosingError(Exception):
    """The check cannot be answered from what was sent; ``field`` names what to fix (a 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class WeightRequired(DosingError):
    def __init__(self, message: str, field: str = WEIGHT_FIELD) -> None:
        super().__init__(field, message)


class InvalidWeight(DosingError):
    def __init__(self, message: str, field: str = WEIGHT_FIELD) -> None:
        super().__init__(field, message)


class PhaseRequired(DosingError):
    def __init__(self, message: str) -> None:
        super().__init__("phase", message)


class ConcentrationRequired(DosingError):
    def __init__(self, message: str) -> None:
        super().__init__("concentration", message)


class UnitsIncompatible(DosingError):
    def __init__(self, message: str, field: str = "dose.unit") -> None:
        super().__init__(field, message)


# ----------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Quantity:
    value: Decimal
    unit: str


_DAY_SECONDS = Fraction(86400)


@dataclass(frozen=True)
class Frequency:
    """``count`` administrations per ``period`` (ISO 8601 duration), evenly spread; or, with
    ``named_days`` (weekday numbers, Monday 0), on those days of each week, shared out among them.

    Why named days: doses on MON only, morning and evening, are two a week but two on Monday. Spread
    over the week they read as one a day, and 168 mg on one day passed a maximum of 84 mg a day (found
    by a probe of the CDS Hooks timing fix). Within a day, doses are read as evenly spread, as a daily
    order's are; across days, a window holds the named days it can reach (MON and THU: never both in
    two days)."""

    count: int
    period: str
    named_days: tuple[int, ...] | None = None
    #: At most this many administrations in all (FHIR ``timing.repeat.count``): 84 mg daily, 2 times in all,
    #: was projected as 7 doses a week, a false critical card (an adversarial probe).
    limit: int | None = None

    @property
    def period_seconds(self) -> Fraction:
        return seconds(parse_duration(self.period))

    @property
    def per_named_day(self) -> int | None:
        return None if not self.named_days else math.ceil(Fraction(self.count, len(self.named_days)))

    def doses_in(self, window_seconds: Fraction) -> int:
        """Administrations that fall in a window of that length (at least one: a dose is a dose), and no
        more than :attr:`limit` in all."""
        doses = self._doses_in(window_seconds)
        return min(doses, self.limit) if self.limit else doses

    def _doses_in(self, window_seconds: Fraction) -> int:
        evenly = max(1, math.ceil(Fraction(self.count) * window_seconds / self.period_seconds))
        per_day = self.per_named_day
        if per_day is None or not self.named_days:
            return evenly
        if window_seconds <= _DAY_SECONDS:
            return max(1, math.ceil(per_day * window_seconds / _DAY_SECONDS))
        weeks, rest = divmod(math.ceil(window_seconds / _DAY_SECONDS), 7)
        reached = max(sum(1 for day in self.named_days if (day - start) % 7 < rest) for start in range(7))
        days = len(self.named_days) * weeks + reached
        return max(1, min(per_day * days, self.count * math.ceil(window_seconds / self.period_seconds)))

    def more_often_than(self, other: Frequency) -> bool:
        """Whether this gives doses more often than ``other``: on average; or, on named days, more in a
        day or in ``other``'s own period than it gives (two on Monday against once a day or twice a
        week; MON and TUE against once every two days; found by probes)."""
        if Fraction(self.count) / self.period_seconds > Fraction(other.count) / other.period_seconds:
            return True
        per_day = self.per_named_day
        if per_day is None:
            return False
        return per_day > other.doses_in(_DAY_SECONDS) or self.doses_in(other.period_seconds) > other.count

    def starts(self) -> list[Fraction]:
        """Named days: when each administration of a period starts, in seconds from its start (a day's
        doses spread evenly over the day, as a daily order's are)."""
        assert self.named_days and self.per_named_day
        per_day = self.per_named_day
        return sorted(day * _DAY_SECONDS + k * _DAY_SECONDS / per_day
                      for day in self.named_days for k in range(per_day))

    def most_running(self, duration: Fraction, window: Fraction) -> tuple[Fraction, int]:
        """Named days: the most administration time any window holds, and how many administrations it
        meets, for administrations of ``duration`` starting at :meth:`starts` in every period. Exact:
        the time held is piecewise linear in where the window starts, so the most is where the window's
        start or end meets an administration's start or end. The spacing of a week's average read
        overlapping infusions on Monday and Tuesday as apart, and every day's for a window of a day read
        one a week as daily (found by a probe)."""
        period = self.period_seconds
        copies = math.ceil((duration + window) / period) + 1
        offsets = self.starts()
        if len(offsets) * (2 * copies + 1) > 120:  # too many to compare one by one (~0.1 s at this bound):
            assert self.per_named_day  # read as if every day were named, an upper bound
            return most_running_in_window(duration, _DAY_SECONDS / self.per_named_day, window)
        starts = [offset + n * period for n in range(-copies, copies + 1) for offset in offsets]
        best: tuple[Fraction, int] = (Fraction(0), 0)
        for edge in {t for s in starts for t in (s, s - window, s + duration - window, s + duration)}:
            held = [min(s + duration, edge + window) - max(s, edge) for s in starts]
            best = max(best, (sum((h for h in held if h > 0), Fraction(0)), sum(1 for h in held if h > 0)))
        return best


@dataclass(frozen=True)
class DoseOrder:
    route: str
    dose: Quantity
    phase: str | None = None
    frequency: Frequency | None = None
    weight_kg: Decimal | Fraction | None = None
    concentration: Concentration | None = None
    #: How long one administration of the order runs, in seconds, and how to name it in messages. A
    #: rate and an amount are converted through it; without it, through the range's ``duration``. An
    #: infusion ordered for 24 h was judged as if it ran the protocol's 4 h (found by a clinical QA
    #: probe: 504 mg a day read as 84 mg).
    duration_s: Fraction | None = None
    duration_text: str | None = None
    #: The shortest administration the order allows when it gives a range (FHIR ``duration`` below
    #: ``durationMax``), for :func:`_faster_than_protocol`; None: ``duration_s``.
    shortest_s: Fraction | None = None
    #: Why the order has no frequency, when it is not that none was sent (a timing the caller could not
    #: read): one dose is counted, and the per-period calculation says why.
    no_frequency: str | None = None
    #: The order gives a rate beside this amount (98 mg at 24.5 mg/h) and the time it takes could be worked
    #: out: how fast it runs is known, so judging the amount over the range's duration assumes nothing
    #: (:data:`DURATION_ASSUMED`).
    paced: bool = False
    #: The indication (a code of the record's) the order is for: only the ranges for it are judged (those
    #: listing it in ``indications`` and those without the field); None: every range of the route.
    indication: str | None = None
    #: Judge a dose per kg against a range per kg without a body weight (CDS Hooks: 50 mg/kg against
    #: 0.5 mg/kg read "dose not checked" for want of a weight; a conformance probe). The REST check asks
    #: for the weight instead (a 422), since its answer's ``absolute_range`` promises absolute amounts.
    per_kg_without_weight: bool = False
    #: The longest the order says an administration may take (``durationMax`` alone), when it gives no
    #: duration: what :data:`DURATION_ASSUMED` says instead of "no duration".
    bound_text: str | None = None


# ---------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Amount:
    value: Fraction
    unit: str

    def text(self, against: Fraction | None = None) -> str:
        return f"{fmt(self.value, against)} {self.unit}"


@dataclass(frozen=True)
class Span:
    low: Fraction
    high: Fraction
    unit: str

    def text(self, dose: Fraction | None = None) -> str:
        """``35-70 mg``; a rounded bound that ``dose`` (in this unit) broke is rounded away from it."""
        low = fmt(self.low, dose if dose is not None and dose < self.low else None)
        high = fmt(self.high, dose if dose is not None and dose > self.high else None)
        if self.low == self.high:
            return f"{high if dose is not None and dose > self.high else low} {self.unit}"
        return f"{low}{DASH}{high} {self.unit}"


@dataclass(frozen=True)
class AbsoluteRange:
    """The range as absolute amounts for one patient (the range itself when not weight-based)."""

    span: Span
    weight_kg: Fraction | None
    calculation: str


@dataclass(frozen=True)
class PerPeriod:
    """The projected amount in one period, and the protocol's maximum for it when it has one."""

    period: str
    doses_per_period: int
    projected: Amount
    maximum: Amount | None
    exceeded: bool
    calculation: str


@dataclass
class Evaluation:
    """One order judged against one dosing range of one protocol version."""

    verdict: Verdict
    range_index: int
    range: Mapping[str, Any]
    dose: Quantity
    dose_in_range_unit: Amount
    range_in_ordered_unit: Span
    absolute_range: AbsoluteRange
    per_period: PerPeriod | None
    #: What the order gives in the period of the range's own regimen, against the most that regimen
    #: gives (see :func:`_regimen`); None when the order or the range has no frequency, or for a rate.
    regimen: PerPeriod | None
    messages: list[str] = field(default_factory=list)
    #: Why the order gives its dose faster than the range allows (:func:`_faster_than_protocol`), or None.
    faster: str | None = None
    #: Why the order's infusion runs longer than the range's (:func:`_longer_than_protocol`), or None.
    longer: str | None = None
    #: What of the order this range gives nothing to check against, or could not check (:data:`REPEAT_UNCHECKED`,
    #: :data:`MAXIMUM_UNCHECKED`): a verdict of ``within_range`` with entries here is not a full pass.
    unchecked: list[str] = field(default_factory=list)

    @property
    def dose_against(self) -> Fraction | None:
        """The range bound the dose broke, if it broke one (its display rounds away from it)."""
        return judged_against(self.dose_in_range_unit.value, exact(self.range["dose_min"]),
                              exact(self.range["dose_max"]))

    @property
    def maximum_per_period_unapplied(self) -> bool:
        """The range has a maximum per period this evaluation could not apply (no duration to turn a
        rate into an amount, a stored maximum that is itself a rate): the order passed only in part."""
        return bool(self.range.get("max_per_period")) and (self.per_period is None or self.per_period.maximum is None)


@dataclass
class DoseCheck:
    """A verdict; ``evaluation`` (the range the verdict comes from) is absent when the route or phase
    is not in the protocol; ``evaluations`` holds every alternative judged."""

    verdict: Verdict
    evaluation: Evaluation | None
    messages: list[str]
    evaluations: list[Evaluation] = field(default_factory=list)


@dataclass
class PatientRange:
    """The range for one patient without a dose to judge (``GET …/dose``)."""

    range_index: int
    range: Mapping[str, Any]
    absolute_range: AbsoluteRange
    max_per_period: Amount | None
    max_per_period_period: str | None
    messages: list[str]


# ---------------------------------------------------------------------------------- numbers


def exact(value: Any) -> Fraction:
    """A stored JSON number (int, Decimal, or a float whose repr is its decimal) as a Fraction."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, float):
        return Fraction(Decimal(repr(value)))
    if isinstance(value, int | Decimal | Fraction):
        return Fraction(value)
    raise TypeError(f"not a number: {value!r}")


def to_decimal(value: Fraction, against: Fraction | None = None) -> Decimal:
    """Exact when the decimal expansion terminates within 12 significant digits, else rounded: to
    the nearest, or, given the bound the value was judged ``against``, away from it, so the number
    shown stays on the side of the bound the verdict rests on (3.00000000001 mg/h at 3 kg, above a
    1 mg/kg/h maximum, was shown as 1 next to a maximum of 1; found by an adversarial probe)."""
    rounding = ROUND_HALF_EVEN
    if against is not None and value != against:
        rounding = ROUND_CEILING if value > against else ROUND_FLOOR
    with localcontext() as ctx:
        ctx.prec = 60
        result = Decimal(value.numerator) / Decimal(value.denominator)
        ctx.prec = DISPLAY_DIGITS
        ctx.rounding = rounding
        rounded = +result
    return rounded.normalize() if rounded != rounded.to_integral_value() else rounded.to_integral_value()


def fmt(value: Fraction, against: Fraction | None = None) -> str:
    """A number for people: plain notation, ``≈`` when it had to be rounded (a quotient that does not
    terminate, or a product with more than 12 significant digits: shown without ``≈``, 4.5 would read
    as equal to a 4.5 limit it exceeds), rounded away from ``against`` as :func:`to_decimal` does."""
    shown = to_decimal(value, against)
    text = format(shown, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if Fraction(shown) == value else f"≈{text}"


def significant_digits(value: Decimal) -> int:
    """Significant digits of a finite Decimal, counted exactly: ``normalize()`` would first round to
    the context's 28 digits, so 70.0000000000000000000000000000001 would count as 2."""
    digits = value.as_tuple().digits
    kept = len(digits)
    while kept > 1 and digits[kept - 1] == 0:
        kept -= 1
    start = 0
    while start < kept - 1 and digits[start] == 0:
        start += 1
    return kept - start


def number_problem(value: Decimal) -> str | None:
    """Why ``value`` cannot be an ordered dose, rate or weight, or None when it can."""
    if not value.is_finite():
        return "Must be a finite number."
    if value <= 0:
        return "Must be greater than 0."
    if not -MAX_EXPONENT <= value.adjusted() < MAX_EXPONENT:
        return f"Must be at least 1e-{MAX_EXPONENT} and less than 1e{MAX_EXPONENT}."
    if significant_digits(value) > MAX_SIGNIFICANT_DIGITS:
        return f"At most {MAX_SIGNIFICANT_DIGITS} significant digits."
    return None


# ------------------------------------------------------------------------------ conversions


def check_weight(weight_kg: Decimal | Fraction | None, field: str = WEIGHT_FIELD) -> Fraction | None:
    """Plausible body weights only: a weight outside 0.3-500 kg is a data-entry error."""
    if weight_kg is None:
        return None
    weight = Fraction(weight_kg)
    if not Fraction(MIN_WEIGHT_KG) <= weight <= Fraction(MAX_WEIGHT_KG):
        raise InvalidWeight(f"body weight must be between {MIN_WEIGHT_KG} and {MAX_WEIGHT_KG} kg; "
                            f"got {fmt(weight)} kg", field)
    return weight


def convert(value: Fraction, source: DoseUnit, target: DoseUnit, *, weight_kg: Fraction | None,
            concentration: Concentration | None, duration_s: Fraction | None,
            weight_field: str = WEIGHT_FIELD) -> Fraction:
    """Convert exactly between dose units, using weight, concentration and the administration's
    duration only where the dimensions require them (and naming what is missing otherwise)."""
    base = value * source.amount_factor  # mg or mL
    if source.is_rate:
        assert source.time_seconds is not None
        base /= source.time_seconds  # … per second
    if source.kind != target.kind:
        if concentration is None:
            raise ConcentrationRequired(
                f"{source.code} and {target.code} convert only through the product's concentration "
                f"(e.g. 10 mg/mL); send concentration")
        base = base * concentration.mg_per_ml if source.kind == "volume" else base / concentration.mg_per_ml
    if source.per_kg != target.per_kg:
        if weight_kg is None:
            raise WeightRequired(f"converting between {source.code} and {target.code} needs the "
                                 f"patient's body weight", weight_field)
        base = base * weight_kg if source.per_kg else base / weight_kg
    if source.is_rate != target.is_rate:
        if duration_s is None:
            # Named by "duration", the field that fixes it (it named dose.unit; an adversarial probe).
            raise UnitsIncompatible(
                f"{source.code} is {'a rate' if source.is_rate else 'an amount'} and {target.code} is "
                f"{'a rate' if target.is_rate else 'an amount'}; they compare only when the order or the protocol "
                f"range states the administration's duration, and neither does", "duration")
        base = base * duration_s if source.is_rate else base / duration_s
    if target.is_rate:
        assert target.time_seconds is not None
        base *= target.time_seconds
    return base / target.amount_factor


# -------------------------------------------------------------------------------- selection


def _route_label(code: str) -> str:
    concept = terminology.ROUTES.get(code)
    return f"{code} ({concept.display})" if concept else code


@dataclass(frozen=True)
class Selection:
    """Ranges that apply to a route (and phase), or the verdict saying none does."""

    candidates: list[tuple[int, Mapping[str, Any]]]
    verdict: Verdict | None
    message: str | None


def is_for(dose_range: Mapping[str, Any], indication: str | None) -> bool:
    """Whether a range is for ``indication`` (a code of the record's): it lists it in ``indications``, or has
    no such field (a range without it is for every indication). Any range is, with no indication given."""
    codes = dose_range.get("indications")
    return indication is None or codes is None or indication in [str(c) for c in codes]


def check_indication(content: Mapping[str, Any], indication: str | None) -> None:
    """An indication sent with an order must be one of the record's: another would be judged against
    every range that names none, which says nothing about that indication."""
    if indication is None:
        return
    codes = [str(i.get("code")) for i in content.get("indications") or []]
    if indication not in codes:
        raise DosingError("indication", f"'{indication}' is not an indication of this protocol; its indications: "
                                 f"{', '.join(codes)}")


def candidates(content: Mapping[str, Any], route: str, phase: str | None = None,
               indication: str | None = None) -> Selection:
    """Every dosing range for ``route`` (and ``phase`` when given, and ``indication``: see :func:`is_for`),
    with their indexes. A route or phase with ranges for other indications only reads as not in the
    protocol for this one (Spravato's MDSI regimen has no maintenance phase)."""
    routes = [str(r["code"]) for r in content.get("routes") or []]
    ranges = [(i, r) for i, r in enumerate(content.get("dosing_ranges") or []) if is_for(r, indication)]
    for_route = [(i, r) for i, r in ranges if str(r["route"]) == route]
    scope = "this protocol" if indication is None else f"this protocol for indication {indication}"
    if route not in routes or not for_route:
        known = sorted({str(r["route"]) for _, r in ranges})
        doses_by = ", ".join(_route_label(c) for c in known) or (
            "no route for it (its dosing ranges are for its other indications)" if indication else "no route")
        return Selection([], Verdict.ROUTE_NOT_IN_PROTOCOL,
                         f"Route {_route_label(route)} has no dosing range in {scope}; it doses by {doses_by}.")
    if phase is None:
        return Selection(for_route, None, None)
    for_phase = [(i, r) for i, r in for_route if r.get("phase") == phase]
    if not for_phase:
        phases = sorted({str(r.get("phase")) for _, r in for_route})
        return Selection([], Verdict.PHASE_NOT_IN_PROTOCOL,
                         f"Phase '{phase}' has no dosing range for route {_route_label(route)} in "
                         f"{scope}; its phases for that route: {', '.join(phases)}.")
    return Selection(for_phase, None, None)


def select_ranges(content: Mapping[str, Any], route: str, phase: str | None = None,
                  indication: str | None = None) -> list[tuple[int, Mapping[str, Any]]] | Selection:
    """The ranges to judge against (all of one phase, for ``indication`` when given), or the
    :class:`Selection` carrying a negative verdict. Raises :class:`PhaseRequired` when they span several
    phases and none was sent."""
    selection = candidates(content, route, phase, indication)
    if selection.verdict is not None:
        return selection
    phases = sorted({str(r.get("phase")) for _, r in selection.candidates})
    if len(phases) > 1:
        raise PhaseRequired(f"this protocol has dosing ranges for several phases on route "
                            f"{_route_label(route)}; send phase, one of: {', '.join(phases)}")
    return selection.candidates


def judged_against(value: Fraction, low: Fraction, high: Fraction) -> Fraction | None:
    """The bound a value outside ``low``-``high`` broke (None inside): what its display rounds away from."""
    return high if value > high else low if value < low else None


def _at_least(verdict: Verdict, floor: Verdict) -> Verdict:
    """``verdict``, or ``floor`` when that is the less favourable of the two."""
    return floor if FAVOURABLE_ORDER.index(verdict) < FAVOURABLE_ORDER.index(floor) else verdict


def most_favourable(evaluations: Sequence[Evaluation], frequency: Frequency | None = None) -> Evaluation:
    """The alternative that fits the order best: the most favourable verdict, and on a tie the range whose
    own frequency is the order's (then the first). Spravato 84 mg every 2 weeks in maintenance is within
    both the weeks 5-8 range (once weekly) and the week-9 one (every 2 weeks or weekly); the answer quoted
    the weeks 5-8 instructions, "once weekly", for an every-other-week order (a clinical probe)."""
    return min(evaluations, key=lambda e: (FAVOURABLE_ORDER.index(e.verdict), not _frequency_fits(frequency, e.range)))


def _frequency_fits(frequency: Frequency | None, dose_range: Mapping[str, Any]) -> bool:
    """Whether the order's frequency is one the range gives: as often as its ``period`` or as seldom as
    its ``period_max``, or anything between (on average)."""
    protocol = dose_range.get("frequency")
    if frequency is None or not protocol:
        return False
    rate = Fraction(frequency.count) / frequency.period_seconds
    count = Fraction(int(protocol["count"]))
    most = count / seconds(parse_duration(str(protocol["period"])))
    least = count / seconds(parse_duration(str(protocol.get("period_max") or protocol["period"])))
    return least <= rate <= most


# ------------------------------------------------------------------------------- evaluation


def _unit(code: str, field: str, ordered: bool = False) -> DoseUnit:
    """A stored range's unit, or with ``ordered`` an order's, held to the units doses are written in
    (:func:`protocols.dose_units.parse_ordered_unit`); a stored unit is read as it was accepted."""
    try:
        return parse_ordered_unit(code) if ordered else parse_dose_unit(code)
    except UnitError as exc:
        raise UnitsIncompatible(str(exc), field) from exc


def _duration_seconds(dose_range: Mapping[str, Any], field: str = "duration") -> Fraction | None:
    """A range's ``duration`` (or ``duration_min``) in seconds; None without it."""
    text = dose_range.get(field)
    return seconds(parse_duration(str(text))) if text else None


def absolute_range(dose_range: Mapping[str, Any], weight_kg: Fraction | None,
                   weight_field: str = WEIGHT_FIELD, dose: Fraction | None = None,
                   per_kg_order: bool = False) -> AbsoluteRange:
    """``0.5-1 mg/kg x 70 kg = 35-70 mg``; a range that is not weight-based is its own answer. With the
    ``dose`` judged (in the range's unit), a rounded bound it broke is shown on the far side of it.

    ``per_kg_order``: the order is per kg too and may be judged so (``DoseOrder.per_kg_without_weight``),
    so without a weight the range is compared as it is (50 mg/kg against 0.5 mg/kg needs no weight to be
    above it; it read "dose not checked", a warning, where a weight would have made it critical: found by
    a conformance probe)."""
    unit = _unit(str(dose_range["unit"]), "unit")
    span = Span(exact(dose_range["dose_min"]), exact(dose_range["dose_max"]), unit.code)
    if not unit.per_kg:
        return AbsoluteRange(span, weight_kg, f"{span.text()} (not weight-based)")
    if weight_kg is None and per_kg_order:
        return AbsoluteRange(span, None, f"{span.text(dose)} (compared per kg: no body weight used)")
    if weight_kg is None:
        raise WeightRequired(f"the protocol range {span.text()} is weight-based; send the patient's "
                             f"body weight in kg", weight_field)
    absolute = Span(span.low * weight_kg, span.high * weight_kg, unit.absolute_code)
    judged = None if dose is None else dose * weight_kg
    calculation = f"{span.text()} {TIMES} {fmt(weight_kg)} kg = {absolute.text(judged)}"
    ceiling = absolute_max(dose_range, unit)
    if ceiling is not None and absolute.high > ceiling.value:
        # The range's cap for heavy patients (0.35 mg/kg/h, not exceeding 25 mg/h): a 90 kg patient's
        # 31.5 mg/h read "within range" against the trial's 25 mg/h (a docs probe).
        absolute = Span(min(absolute.low, ceiling.value), ceiling.value, unit.absolute_code)
        calculation += f", at most {ceiling.text()} whatever the weight: {absolute.text(judged)}"
    return AbsoluteRange(absolute, weight_kg, calculation)


def absolute_max(dose_range: Mapping[str, Any], unit: DoseUnit | None = None) -> Amount | None:
    """A weight-based range's absolute maximum (``absolute_max``) in the range's unit without /kg, or None."""
    ceiling = dose_range.get("absolute_max")
    if not ceiling:
        return None
    unit = unit or _unit(str(dose_range["unit"]), "unit")
    target = _unit(unit.absolute_code, "absolute_max.unit")
    value = convert(exact(ceiling["value"]), _unit(str(ceiling["unit"]), "absolute_max.unit"), target,
                    weight_kg=None, concentration=None, duration_s=None)
    return Amount(value, target.code)


def _max_per_period(dose_range: Mapping[str, Any], notes: list[str]) -> tuple[Amount, str, DoseUnit] | None:
    limit = dose_range.get("max_per_period")
    if not limit:
        return None
    unit = _unit(str(limit["unit"]), "max_per_period.unit")
    if unit.is_rate:
        # Refused at write time (schemas.clinical.MaxPerPeriodSchema); a version stored before that
        # rule may hold one. Adding up rates per dose means nothing, so it is not applied (and said so).
        notes.append(f"Per-period maximum not checked: the protocol's maximum per period "
                     f"({fmt(exact(limit['value']))} {unit.code} per {limit['period']}) is a rate, not an "
                     f"amount, and was not applied.")
        return None
    return Amount(exact(limit["value"]), unit.code), str(limit["period"]), unit


def own_maximum_against_range(dose_range: Mapping[str, Any], amount: Quantity, period_s: Fraction, period_text: str,
                              *, weight_kg: Decimal | Fraction | None, concentration: Concentration | None
                              ) -> tuple[bool, str] | None:
    """An as-needed order's own maximum per period (FHIR ``maxDosePerPeriod``: ``amount`` per ``period_s``)
    against the range's maximum per period: whether the most it allows in the range's period exceeds
    it, and the calculation; None when the range has no maximum per period to compare it with. Raises
    :class:`DosingError` when the two cannot be compared (units, a weight or a strength missing).

    Why "the most it allows": an order given as needed with no timing repeats at will within its own
    maximum, which is then all that bounds it. A window of the range's period holds as many of the
    order's own periods as it spans, rounded up (one when the window is the shorter): 84 mg per 12 h
    allows 168 mg in a day. Spravato "as needed, at most 840 mg a day" read "per-period maximum
    respected" for one dose (a clinical probe)."""
    limit = _max_per_period(dose_range, [])
    if limit is None:
        return None
    maximum, period, target = limit
    unit = _unit(amount.unit, "maxDosePerPeriod.numerator.unit", ordered=True)
    if unit.is_rate:
        raise UnitsIncompatible(f"the order's own maximum per period is a rate ({unit.code}), not an amount",
                                "maxDosePerPeriod.numerator.unit")
    per_own_period = convert(Fraction(amount.value), unit, target, weight_kg=check_weight(weight_kg),
                             concentration=concentration, duration_s=None)
    periods = max(1, math.ceil(seconds(parse_duration(period)) / period_s))
    allowed = Amount(per_own_period * periods, target.code)
    exceeded = allowed.value > maximum.value
    spans = f" ({periods} of its periods)" if periods > 1 else ""
    return exceeded, (f"The order's own maximum, {fmt(Fraction(amount.value))} {unit.code} per {period_text}, "
                      f"allows up to {allowed.text(maximum.value)} per {period}{spans} "
                      f"{'>' if exceeded else '≤'} maximum {maximum.text()} per {period}.")


def _per_period(order: DoseOrder, dose_unit: DoseUnit, dose_range: Mapping[str, Any],
                weight: Fraction | None, duration_s: Fraction | None,
                notes: list[str], no_frequency: str = "no frequency was sent") -> PerPeriod | None:
    """The amount the order gives in the range's maximum-per-period window (or in its own period);
    ``no_frequency`` says why one dose is counted when the order has no frequency."""
    limit = _max_per_period(dose_range, notes)
    frequency = order.frequency
    dose_value = Fraction(order.dose.value)
    if limit is None and frequency is None:
        return None
    if limit is not None:
        maximum, period, target = limit
    else:
        assert frequency is not None
        period = frequency.period
        target = _unit(dose_unit.amount if weight is not None or not dose_unit.per_kg
                       else dose_unit.per_administration_code, "dose.unit")
        maximum = None
    window = seconds(parse_duration(period))
    try:
        per_dose = convert(dose_value, dose_unit, target, weight_kg=weight,
                           concentration=order.concentration, duration_s=duration_s)
    except UnitsIncompatible as exc:
        if dose_unit.is_rate and duration_s is None and frequency is None:
            # A rate with neither a duration nor a frequency runs without a stop: the window holds the
            # rate times its length. 30 mg/d against at most 20 mg a day read "within_range" with the
            # maximum left unapplied (found by an adversarial probe).
            per_window = convert(dose_value, dose_unit, target, weight_kg=weight,
                                 concentration=order.concentration, duration_s=window)
            projected = Amount(per_window, target.code)
            return _per_period_result(period, 1, projected, maximum,
                                      f"{fmt(dose_value)} {dose_unit.code} run without a stop for {period} (no "
                                      f"duration or frequency was sent) = {projected.text(_value(maximum))} per "
                                      f"{period}")
        notes.append(f"The amount per period was not projected: {exc.message}.")
        return None
    if duration_s is not None and duration_s > window:
        # An administration that runs longer than the window (an infusion, as a rate or as an amount
        # given over a duration): a window holds only what runs in it, not the whole administration (20
        # mg/h for 4 h read as 80 mg in an hour; found by a clinical QA probe).
        if frequency is not None and frequency.named_days:
            running, touched = frequency.most_running(duration_s, window)
        else:
            interval = None if frequency is None else frequency.period_seconds / frequency.count
            running, touched = most_running_in_window(duration_s, interval, window)
        projected = Amount(per_dose * running / duration_s, target.code)
        how = (f"{fmt(per_dose)} {target.code} over {fmt(duration_s / 3600)} h per administration; any {period} "
               f"holds at most {fmt(running / 3600)} h of administration"
               + (f" ({touched} administrations)" if touched > 1 else ""))
        return _per_period_result(period, touched, projected, maximum,
                                  f"{how} = {projected.text(_value(maximum))} per {period}")
    if frequency is None:
        doses = 1
        how = f"one dose ({order.no_frequency or no_frequency})"
    else:
        doses = frequency.doses_in(window)
        how = f"{doses} dose{'s' if doses != 1 else ''}"
        if frequency.period != period:
            how += f" in {period} at {frequency.count} per {frequency.period}"
    projected = Amount(per_dose * doses, target.code)
    calculation = f"{fmt(per_dose)} {target.code} {TIMES} {how} = {projected.text(_value(maximum))} per {period}"
    return _per_period_result(period, doses, projected, maximum, calculation)


#: How many administrations a window may meet before :func:`most_running_in_window` stops counting
#: them one by one and bounds instead (a 1000-a-minute order of a week-long infusion).
_MOST_ADMINISTRATIONS = 10_000


def most_running_in_window(duration: Fraction, interval: Fraction | None,
                           window: Fraction) -> tuple[Fraction, int]:
    """The most administration time (seconds, summed over administrations running at once) any window
    of ``window`` seconds holds, for administrations of ``duration`` starting every ``interval`` (None:
    one), and how many administrations that window meets. Exact: the time held is piecewise linear in
    where the window starts, so its maximum is where the window's start or end meets an
    administration's start or end (at most four places within one interval)."""
    if interval is None:
        return min(duration, window), 1
    if (duration + window) / interval > _MOST_ADMINISTRATIONS:
        at_once = math.ceil(duration / interval)
        return window * at_once, at_once * (math.ceil(window / interval) + 1)
    best = (Fraction(0), 0)
    for start in {Fraction(0), duration % interval, (-window) % interval, (duration - window) % interval}:
        held, met = Fraction(0), 0
        for k in range(math.floor((start - duration) / interval), math.ceil((start + window) / interval) + 1):
            overlap = min(k * interval + duration, start + window) - max(k * interval, start)
            if overlap > 0:
                held, met = held + overlap, met + 1
        best = max(best, (held, met))
    return best


def _value(amount: Amount | None) -> Fraction | None:
    return None if amount is None else amount.value


def _per_period_result(period: str, doses: int, projected: Amount, maximum: Amount | None,
                       calculation: str) -> PerPeriod:
    exceeded = maximum is not None and projected.value > maximum.value
    if maximum is not None:
        relation = ">" if exceeded else "≤"
        calculation += f" {relation} maximum {maximum.text()} per {period}"
    return PerPeriod(period, doses, projected, maximum, exceeded, calculation)


def evaluate(content: Mapping[str, Any], range_index: int, order: DoseOrder) -> Evaluation:
    """Judge ``order`` against ``content['dosing_ranges'][range_index]``; raises
    :class:`DosingError` when the answer needs something the order did not send."""
    dose_range = content["dosing_ranges"][range_index]
    weight = check_weight(order.weight_kg)
    dose_unit = _unit(order.dose.unit, "dose.unit", ordered=True)
    range_unit = _unit(str(dose_range["unit"]), "unit")
    duration_s = _duration_seconds(dose_range)
    duration_text = f"the protocol's {dose_range.get('duration')}"
    if order.duration_s is not None:
        duration_s, duration_text = order.duration_s, f"the order's {order.duration_text or 'duration'}"
    per_kg_order = dose_unit.per_kg and order.per_kg_without_weight
    absolute = absolute_range(dose_range, weight, per_kg_order=per_kg_order)
    low, high = exact(dose_range["dose_min"]), exact(dose_range["dose_max"])
    ceiling = absolute_max(dose_range, range_unit)
    if ceiling is not None and weight is not None:  # the bounds per kg for this patient, capped
        low, high = absolute.span.low / weight, absolute.span.high / weight
    dose_value = Fraction(order.dose.value)
    in_range_unit = convert(dose_value, dose_unit, range_unit, weight_kg=weight,
                            concentration=order.concentration, duration_s=duration_s)
    low_ordered, high_ordered = (convert(v, range_unit, dose_unit, weight_kg=weight,
                                         concentration=order.concentration, duration_s=duration_s)
                                 for v in (low, high))
    in_ordered_unit = Span(low_ordered, high_ordered, dose_unit.code)
    broken = judged_against(in_range_unit, low, high)  # the bound the dose broke: its text rounds away from it
    if range_unit.per_kg and broken is not None:
        absolute = absolute_range(dose_range, weight, dose=in_range_unit, per_kg_order=per_kg_order)
    notes: list[str] = []
    per_period = _per_period(order, dose_unit, dose_range, weight, duration_s, notes)

    ordered = f"{fmt(dose_value)} {dose_unit.code}"
    shown = Span(low, high, range_unit.code).text()
    if range_unit.per_kg:
        shown = absolute.calculation
    patient = ""
    if ceiling is not None and weight is not None and dose_unit.per_kg:
        # Against a capped range the whole patient's amount decides (0.3 mg/kg/h is 27 mg/h for 90 kg, over a
        # 25 mg/h cap): the message gave the dose per kg only (reviews; in any per-kg unit).
        patient = f"{fmt(in_range_unit * weight)} {range_unit.absolute_code} for {fmt(weight)} kg"
    if dose_unit.code != range_unit.code:
        over = f" over {duration_text}" if dose_unit.is_rate != range_unit.is_rate else ""
        ordered += f" (= {fmt(in_range_unit, broken)} {range_unit.code}{over}" + (f" = {patient})" if patient else ")")
    elif patient:
        ordered += f" (= {patient})"
    phase = dose_range.get("phase")
    messages: list[str] = []
    if in_range_unit < low:
        verdict = Verdict.BELOW_MIN
        messages.append(f"{ordered} is below the protocol minimum for the {phase} phase: "
                        f"range {shown}.")
    elif in_range_unit > high:
        verdict = Verdict.ABOVE_MAX
        messages.append(f"{ordered} is above the protocol maximum for the {phase} phase: "
                        f"range {shown}.")
    else:
        verdict = Verdict.WITHIN_RANGE
        messages.append(f"{ordered} is within the protocol range for the {phase} phase: {shown}.")
    if per_period is not None:
        if per_period.exceeded:
            messages.append(f"Per-period maximum exceeded: {per_period.calculation}.")
            # A dose below the minimum given often enough to exceed the maximum per period is the
            # per-period breach (critical), not an underdose (found by an adversarial probe: 9 mg ten
            # times a day against 10-20 mg, at most 40 mg a day, read below_min).
            verdict = _at_least(verdict, Verdict.EXCEEDS_MAX_PER_PERIOD)
        elif per_period.maximum is not None:
            messages.append(f"Per-period maximum respected: {per_period.calculation}.")
        else:
            messages.append(f"Projected: {per_period.calculation}.")
    messages.extend(notes)
    frequency_notes = _frequency_notes(order.frequency, dose_range, per_period)
    if verdict is Verdict.WITHIN_RANGE and _more_frequent(order.frequency, dose_range):
        verdict = Verdict.MORE_FREQUENT_THAN_PROTOCOL
    messages.extend(frequency_notes)
    regimen = _regimen(order.frequency, dose_range, range_unit, in_range_unit, high, duration_s)
    if regimen is not None and regimen.exceeded:
        label = dose_range["frequency"].get("text") or frequency_label(dose_range["frequency"])
        most = f"{dose_range['frequency']['count']} {TIMES} {fmt(high)} {range_unit.code}"
        if range_unit.is_rate:
            most = f"{fmt(high)} {range_unit.code} for {dose_range['duration']}"
        messages.append(f"Regimen exceeded: {regimen.calculation}, the most the protocol's {label} gives "
                        f"({most}).")
        verdict = _at_least(verdict, Verdict.EXCEEDS_MAX_PER_PERIOD)
    faster = _faster_than_protocol(order, dose_range, range_unit, in_range_unit, high)
    if faster is not None:
        messages.append(faster)
    longer = _longer_than_protocol(order, dose_range, range_unit, in_range_unit, high)
    if longer is not None:
        messages.append(longer)
    unchecked = []
    if order.frequency is not None and not (dose_range.get("frequency") or dose_range.get("max_per_period")) \
            and dose_range.get("phase") != "single":  # a single dose repeated is more_frequent_than_protocol
        unchecked.append(REPEAT_UNCHECKED)
        messages.append(f"Not checked: {REPEAT_UNCHECKED}.")
    if dose_range.get("max_per_period") and (per_period is None or per_period.maximum is None):
        unchecked.append(MAXIMUM_UNCHECKED)  # the messages say why (a review: REST showed a full pass)
    if ceiling is not None and weight is None:  # a dose per kg judged per kg (CDS Hooks, no weight)
        not_applied = ABSOLUTE_MAX_UNCHECKED.format(ceiling=ceiling.text())
        unchecked.append(not_applied)
        messages.append(f"Not checked: {not_applied}.")
    if order.duration_s is None and not order.paced and dose_range.get("duration") and (
            dose_unit.is_rate or range_unit.is_rate or phase == INFUSION):
        if order.bound_text is not None:
            assumed = DURATION_BOUNDED.format(duration=dose_range["duration"], bound=order.bound_text)
        elif dose_unit.is_rate:
            assumed = RATE_DURATION_ASSUMED.format(duration=dose_range["duration"])
        else:
            assumed = DURATION_ASSUMED.format(duration=dose_range["duration"])
        unchecked.append(assumed)
        messages.append(f"Not checked: {assumed}.")
    if dose_range.get("instructions"):
        messages.append(f"Protocol instructions: {dose_range['instructions']}")
    return Evaluation(verdict, range_index, dose_range, Quantity(order.dose.value, dose_unit.code),
                      Amount(in_range_unit, range_unit.code), in_ordered_unit, absolute, per_period, regimen,
                      messages, faster, longer, unchecked)


#: An order that repeats a dose judged against a range that gives no schedule: a dose in range says
#: nothing of that dose repeated. An induction dose of 2 mg/kg every 5 minutes, and 13 mg/kg IM 24
#: times a day, read a clean "within_range" (adversarial probes; the CDS Hooks card said "partly
#: checked" first). The verdict stays about the dose; this says what it does not cover.
REPEAT_UNCHECKED = ("the order repeats its dose, and this range gives no frequency or maximum per period to "
                    "check the repetition against")
#: A weight-based range's absolute maximum, with a dose per kg judged per kg (no body weight): the cap is
#: for the whole patient and needs the weight.
ABSOLUTE_MAX_UNCHECKED = ("the protocol's absolute maximum ({ceiling} whatever the weight) was not applied: "
                          "no body weight")
#: A range's maximum per period that could not be applied to the order (a rate with no duration to turn
#: into an amount, a stored maximum that is itself a rate): CDS Hooks said "partly checked", while the REST
#: answer's ``unchecked`` was empty (a review).
MAXIMUM_UNCHECKED = "the protocol's maximum per period could not be applied to this order (the messages say why)"
#: An order without a duration judged against a range that has one, where the duration is part of the
#: answer: a rate (its amount was taken over the range's duration: 0.35 mg/kg/h bounded by a day read as
#: the protocol's 4 h, a green card), an amount against a range of rates (98 mg against 0.35 mg/kg/h for
#: 4 h read "within range", a green card, for what may be pushed in a minute: an anaesthetic induction
#: dose), or an amount against an infusion's range (0.5 mg/kg over 40 min; both found by adversarial
#: probes). A bolus range's duration (the Ketalar label's "over 60 seconds") is how to give the dose,
#: shown in its instructions; an order for the dose alone is checked in full.
DURATION_ASSUMED = ("the order gives no duration or rate: it was judged as if given over the protocol's {duration}; "
                    "how fast it will be given was not checked")
#: :data:`DURATION_ASSUMED` for an order that is a rate: how fast is known, how long it runs is not (a
#: documentation probe: "gives no duration or rate" was said of 21 mg/h). A rate without a stop would break
#: most ranges' maxima per period; judged over the protocol's duration it is a partial check, saying so. The
#: assumption bounds what the verdict says from below, for one administration as for a period (a review: "how
#: much it gives in a period was not checked" stood beside a breach of the maximum per period).
RATE_DURATION_ASSUMED = ("the order gives a rate but no duration: it was judged as running for the protocol's "
                         "{duration} each time; if it runs longer, each administration (and each period) gives more "
                         "than judged here")
#: :data:`DURATION_ASSUMED` for an order that gives only the longest an administration may take.
DURATION_BOUNDED = ("the order gives only the longest it may take ({bound}): it was judged as if given over the "
                    "protocol's {duration}; how fast it will be given was not checked")
#: The phase of a range given as an infusion: its ``duration`` is how long the infusion runs, part of the
#: regimen, where another phase's (an induction bolus "over 60 seconds") is how to give the dose.
INFUSION = "infusion"


def _longer_than_protocol(order: DoseOrder, dose_range: Mapping[str, Any], range_unit: DoseUnit,
                          rate: Fraction, high: Fraction) -> str | None:
    """Why the order's infusion gives more per administration than the range's, or None.

    A range of rates with a ``duration`` (0.35 mg/kg/h for 4 h) gives at most ``dose_max x duration``
    in one administration. An order stating a longer infusion of its own was judged on its rate alone:
    0.5 mg/kg/h for a week against 0.25-0.5 mg/kg/h for 1 h read "within_range", 168 times the
    protocol's amount, with nothing said (adversarial probe). Named in a message and in
    ``Evaluation.longer`` (CDS Hooks cards with it are never "info"); with both frequencies the regimen
    (:func:`_regimen`) compares the amounts, and its breach is ``exceeds_max_per_period``."""
    protocol_s = _duration_seconds(dose_range)
    given_s = order.duration_s
    if not range_unit.is_rate or protocol_s is None or given_s is None or given_s <= protocol_s:
        return None
    assert range_unit.time_seconds is not None
    unit = range_unit.per_administration_code
    given, most = rate * given_s / range_unit.time_seconds, high * protocol_s / range_unit.time_seconds
    if given <= most:
        return None  # a slower infusion for longer: no more in all than the range gives
    return (f"Given for longer than the protocol: {fmt(rate, high)} {range_unit.code} for "
            f"{order.duration_text or time_text(given_s)} is {fmt(given, most)} {unit} in one administration; "
            f"the protocol's range runs for {dose_range['duration']}, at most {fmt(most)} {unit}.")


#: How much faster than the range's own rate an order may run before it is named: a pump rate rounded
#: to a whole number (36.5 mg at 55 mg/h where the range gives 54.75) is no deviation (a review).
FASTER_TOLERANCE = Fraction(11, 10)


def _faster_than_protocol(order: DoseOrder, dose_range: Mapping[str, Any], range_unit: DoseUnit,
                          per_dose: Fraction, high: Fraction) -> str | None:
    """Why the order gives its dose faster than the range allows, or None.

    A range of amounts with a ``duration`` ("1-4.5 mg/kg over PT60S": the Ketalar label's "administer
    slowly over 60 seconds"; 0.5 mg/kg over PT40M) gives at most ``dose_max / duration`` per unit of
    time. An order that states a shorter administration of its own was judged on its amount alone,
    and 0.5 mg/kg over one minute (40 times the protocol's rate) read "within_range" with nothing
    said (found by an adversarial probe). It is named in a message and in ``Evaluation.faster``
    (CDS Hooks cards are then never "info"), above :data:`FASTER_TOLERANCE` of that rate, and
    the verdict stays about the amount: what ``duration`` means differs by range (a shortest push
    time for a bolus, the length of an infusion), so a rule of rates cannot call every faster
    administration an overdose (a review of the first fix, which made it ``above_max``). Ranges of
    rates are judged as rates already.

    A rate is all a ``duration`` can say: it may be the time the top dose takes at a stated rate (the
    Ketalar label's 1-2 mg/kg at 0.5 mg/kg/min, PT4M), where a smaller dose in less time is the label's
    own rate. A label's push time holds for every dose, and a range says so in ``duration_min``: 1 mg/kg
    pushed in 14 s against "1-4.5 mg/kg over 60 seconds" (4.3 mg/kg/min, under 4.5) read "within_range"
    (found by two clinical probes), while the label warns that a faster push may cause respiratory
    depression or apnoea."""
    given_s = order.shortest_s if order.shortest_s is not None else order.duration_s
    if given_s is None or given_s <= 0 or range_unit.is_rate:
        return None
    # The time judged, as the order says it; an order that gives a range of times (FHIR duration 30 s
    # below durationMax 90 s) is judged at its shortest, and named so: it read "over 90 s" (a review).
    given = order.duration_text if order.shortest_s is None and order.duration_text else time_text(given_s)
    shortest_s = _duration_seconds(dose_range, "duration_min")
    if shortest_s is not None and given_s * FASTER_TOLERANCE < shortest_s:
        return (f"Given faster than the protocol: {fmt(per_dose)} {range_unit.code} over {given}; the protocol "
                f"gives each dose over at least {dose_range['duration_min']}.")
    protocol_s = _duration_seconds(dose_range)
    if protocol_s is None or given_s >= protocol_s:
        return None
    ordered_rate, protocol_rate = per_dose / given_s * 60, high / protocol_s * 60
    if ordered_rate <= protocol_rate * FASTER_TOLERANCE:
        return None
    per_minute = f"{range_unit.code}/min"
    return (f"Given faster than the protocol: {fmt(per_dose)} {range_unit.code} over {given} is "
            f"{_rounded(ordered_rate)} {per_minute}; the "
            f"protocol gives at most {fmt(high)} {range_unit.code} over {dose_range['duration']}, "
            f"{_rounded(protocol_rate)} {per_minute}.")


def _rounded(value: Fraction) -> str:
    """Three significant digits for a rate named in a message (not ``≈0.0125570776256``), in plain
    notation."""
    number = Decimal(value.numerator) / Decimal(value.denominator)
    text = format(round(number, 2 - number.adjusted()), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _frequency_notes(frequency: Frequency | None, dose_range: Mapping[str, Any],
                     per_period: PerPeriod | None) -> list[str]:
    protocol = dose_range.get("frequency")
    if not protocol:
        if _more_frequent(frequency, dose_range) and frequency is not None:
            return [f"The order repeats ({frequency.count} per {frequency.period}) a dose the protocol gives "
                    "once (single administration)."]
        return []
    label = protocol.get("text") or frequency_label(protocol)
    if frequency is None:
        if per_period is None or per_period.maximum is None:
            return [f"No frequency was sent; the protocol gives {label}."]
        return []
    if _more_frequent(frequency, dose_range):
        return [f"The ordered frequency ({frequency.count} per {frequency.period}) is more frequent than "
                f"the protocol's ({label})."]
    return []


def _regimen(frequency: Frequency | None, dose_range: Mapping[str, Any], range_unit: DoseUnit,
             per_dose: Fraction, high: Fraction, duration_s: Fraction | None = None) -> PerPeriod | None:
    """What the order gives in the period of the range's own regimen, against the most that regimen
    gives there (its maximum dose times its count: Spravato 56-84 mg twice weekly is at most 168 mg a
    week). Without it, 84 mg every day (588 mg a week) was only "more frequent" (a warning) when the
    range's maximum per period was per day (found by a clinical QA probe). Returned whether or not it
    is exceeded, so an integration reads the breach behind an ``exceeds_max_per_period`` verdict from
    data, not only from the messages, beside a ``per_period`` that a daily maximum may still respect.
    For amounts, None without both frequencies.

    A range of rates gives an amount only with its own ``duration`` (0.35 mg/kg/h for 4 h daily is at
    most 1.4 mg/kg in any day): the order's administrations run for ``duration_s`` (its own, else the
    range's), and a period holds only what runs in it, as :func:`_per_period` counts it (an infusion of
    48 h every 2 days puts 24 h in a day, not 48: a review). An order without a frequency is one
    administration: 0.2 mg/kg/h for 10 h read "below_min" once and critical once a day (a review), and
    0.35 mg/kg/h for 5.5 h daily read "within_range" (adversarial probe). Without a range duration,
    None (the per-period maximum covers those)."""
    protocol = dose_range.get("frequency")
    if not protocol:
        return None
    wanted = Frequency(int(protocol["count"]), str(protocol["period"]))
    if range_unit.is_rate:
        return _rate_regimen(frequency, dose_range, range_unit, per_dose, high, duration_s, wanted)
    if frequency is None:
        return None
    doses = frequency.doses_in(wanted.period_seconds)
    maximum = Amount(high * wanted.count, range_unit.code)
    projected = Amount(per_dose * doses, range_unit.code)
    calculation = (f"{fmt(per_dose, high)} {range_unit.code} {TIMES} {doses} dose{'s' if doses != 1 else ''} = "
                   f"{projected.text(maximum.value)} per {wanted.period}")
    return _per_period_result(wanted.period, doses, projected, maximum, calculation)


def _rate_regimen(frequency: Frequency | None, dose_range: Mapping[str, Any], range_unit: DoseUnit, rate: Fraction,
                  high: Fraction, duration_s: Fraction | None, wanted: Frequency) -> PerPeriod | None:
    """:func:`_regimen` for a range of rates: the most infusion time any period of the regimen holds,
    for the order and for the protocol, times the order's rate and the range's maximum."""
    protocol_s = _duration_seconds(dose_range)
    if protocol_s is None or duration_s is None:
        return None
    assert range_unit.time_seconds is not None
    window = wanted.period_seconds
    if frequency is not None and frequency.named_days:
        running, touched = frequency.most_running(duration_s, window)
    else:
        interval = None if frequency is None else frequency.period_seconds / frequency.count
        running, touched = most_running_in_window(duration_s, interval, window)
    most, _ = most_running_in_window(protocol_s, window / wanted.count, window)
    unit = range_unit.per_administration_code
    maximum = Amount(high * most / range_unit.time_seconds, unit)
    projected = Amount(rate * running / range_unit.time_seconds, unit)
    held = f" ({touched} administrations)" if touched > 1 else ""
    calculation = (f"{fmt(rate, high)} {range_unit.code} running {time_text(running)} in any {wanted.period}{held} "
                   f"= {projected.text(maximum.value)} per {wanted.period}")
    return _per_period_result(wanted.period, touched, projected, maximum, calculation)


def time_text(seconds: Fraction) -> str:
    """A length of time for people, exact: ``4 h``, ``245 min``, ``2 d``, ``90 s`` (not ``≈4.08333333333 h``)."""
    if seconds % 86400 == 0 and seconds > 3 * 86400:  # 48 h of overlapping infusion in a day, not "2 d"
        return f"{fmt(seconds / 86400)} d"
    for size, name in ((3600, "h"), (60, "min")):
        if seconds % size == 0:
            return f"{fmt(seconds / size)} {name}"
    return f"{fmt(seconds)} s"


def frequency_label(protocol: Mapping[str, Any]) -> str:
    """A range's frequency as "1 per P1W", or "1 per P1W to P2W" with a period range; checks hold orders
    to ``period``, the most frequent dosing."""
    label = f"{protocol['count']} per {protocol['period']}"
    return f"{label} to {protocol['period_max']}" if protocol.get("period_max") else label


def _more_frequent(frequency: Frequency | None, dose_range: Mapping[str, Any]) -> bool:
    """Whether the order gives doses more often than the range's frequency (when both say), or repeats
    a dose the range gives once (phase ``single`` without a frequency: psilocybin 25 mg every day read
    as within range; found by a clinical QA probe)."""
    protocol = dose_range.get("frequency")
    if frequency is not None and not protocol and dose_range.get("phase") == "single":
        return True
    if frequency is None or not protocol:
        return False
    wanted = Frequency(int(protocol["count"]), str(protocol["period"]))
    return frequency.more_often_than(wanted)


def check(content: Mapping[str, Any], order: DoseOrder) -> DoseCheck:
    """The API's dose check: choose the ranges (see module docstring), evaluate each, answer with
    the most favourable."""
    check_weight(order.weight_kg)
    _unit(order.dose.unit, "dose.unit", ordered=True)
    check_indication(content, order.indication)
    chosen = select_ranges(content, order.route, order.phase, order.indication)
    if isinstance(chosen, Selection):
        assert chosen.verdict is not None and chosen.message is not None
        return DoseCheck(chosen.verdict, None, [chosen.message])
    evaluations = [evaluate(content, index, order) for index, _ in chosen]
    best = most_favourable(evaluations, order.frequency)
    messages = list(best.messages)
    if len(evaluations) > 1:
        others = ", ".join(f"range {e.range_index}: {e.verdict.value}" for e in evaluations if e is not best)
        messages.append(f"The {best.range.get('phase')} phase has {len(evaluations)} alternative ranges for "
                        f"this route; the verdict is the most favourable (range {best.range_index}); "
                        f"others: {others}.")
    return DoseCheck(best.verdict, best, messages, evaluations)


def patient_ranges(content: Mapping[str, Any], route: str, phase: str | None,
                   weight_kg: Decimal | None, weight_field: str = "weight_kg") -> list[PatientRange] | Selection:
    """The absolute ranges for a patient (``GET …/dose``), or the Selection saying none applies."""
    weight = check_weight(weight_kg, weight_field)
    chosen = select_ranges(content, route, phase)
    if isinstance(chosen, Selection):
        return chosen
    return [_patient_range(index, dose_range, weight, weight_field) for index, dose_range in chosen]


def _patient_range(index: int, dose_range: Mapping[str, Any], weight: Fraction | None,
                   weight_field: str) -> PatientRange:
    absolute = absolute_range(dose_range, weight, weight_field)
    messages = [f"Protocol range for the {dose_range.get('phase')} phase: {absolute.calculation}."]
    if dose_range.get("frequency"):
        frequency = dose_range["frequency"]
        label = frequency_label(frequency)
        text = frequency.get("text")
        messages.append(f"Frequency: {text} ({label})." if text else f"Frequency: {label}.")
    maximum: Amount | None = None
    period: str | None = None
    limit = _max_per_period(dose_range, messages)
    if limit is not None:
        maximum, period, unit = limit
        if unit.per_kg and weight is not None:
            maximum = Amount(maximum.value * weight, unit.absolute_code)
        messages.append(f"At most {maximum.text()} per {period}.")
        messages.extend(_top_over_maximum(dose_range, weight))
    if dose_range.get("instructions"):
        messages.append(f"Protocol instructions: {dose_range['instructions']}")
    return PatientRange(index, dose_range, absolute, maximum, period, messages)


def _top_over_maximum(dose_range: Mapping[str, Any], weight: Fraction | None) -> list[str]:
    """A warning when the range's top, given as the range itself gives it (its frequency, its
    duration), comes to more than the range's maximum per period for this patient.

    0.35 mg/kg/h at 80 kg is 28 mg/h, and over the protocol's 4 h that is 112 mg, past its 100 mg a
    day: ``…/dose`` showed 28 mg/h as the range while ``dose-check`` called that order critical (found
    by a clinical QA probe). The range is still shown as stored; the message says which limit binds."""
    frequency = dose_range.get("frequency")
    most = Quantity(Decimal(str(dose_range["dose_max"])), str(dose_range["unit"]))
    ceiling = absolute_max(dose_range)
    if ceiling is not None and weight is not None and ceiling.value < exact(dose_range["dose_max"]) * weight:
        # The top for this patient is the cap (25 mg/h for 80 kg, not 28 mg/h): 100 mg in 4 h, no breach.
        most = Quantity(Decimal(ceiling.value.numerator) / Decimal(ceiling.value.denominator), ceiling.unit)
    top = DoseOrder(str(dose_range["route"]), most,
                    frequency=Frequency(int(frequency["count"]), str(frequency["period"])) if frequency else None,
                    weight_kg=weight)
    try:
        per_period = _per_period(top, _unit(top.dose.unit, "unit"), dose_range, weight,
                                 _duration_seconds(dose_range), [], no_frequency="the protocol gives no frequency")
    except WeightRequired:
        return []  # an amount range with a per-kg maximum and no weight: nothing to compare (a 422 before)
    if per_period is None or not per_period.exceeded or per_period.maximum is None:
        return []
    return [f"The top of the range, given as the protocol gives it, comes to more than its maximum for "
            f"this patient: {per_period.calculation}. The maximum per period is the limit, not the top of the range."]


def ranges_for(content: Mapping[str, Any], route: str,
               indications: Sequence[str] = ()) -> tuple[Sequence[tuple[int, Mapping[str, Any]]], str | None]:
    """Every range for a route (the CDS service judges an order against each); given the record's
    ``indications`` an order is for (its reasonCode), only the ranges for one of them (:func:`is_for`): an
    MDSI order of Spravato at a weekly maintenance schedule was judged against the TRD maintenance range (a
    clinical probe). When no range on the route is for them, every range of the route, with a note saying
    so (the second element): judged silently against other indications' ranges, such an order got a green
    card (a review), where the REST check says the route has no range for that indication."""
    every = candidates(content, route).candidates
    own = [(i, r) for i, r in every if any(is_for(r, code) for code in indications)]
    if own or not every or not indications:
        return own or every, None
    named = sorted({str(code) for _, r in every for code in r.get("indications") or []})
    # Read after "Not checked:" on the card (a review: "Not checked: … it was checked against …").
    return every, (f"the dose against a range for the order's indication ({', '.join(sorted(indications))}): "
                   f"none of this protocol's ranges for this route is for it, so it was judged against those for "
                   f"{', '.join(named)}")
