"""Dose arithmetic and verdicts as pure domain code: exact at the edges, units converted exactly.

No database and no Flask here: protocols.dosing judges a version's content against an order.
The catalog-wide table-driven checks run through the API in tests/api/test_dosing_api.py.
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from protocols import dose_units, dosing
from protocols.dose_units import UnitError, parse_concentration, parse_dose_unit, to_kilograms
from protocols.dosing import (
    Amount,
    ConcentrationRequired,
    DoseCheck,
    DoseOrder,
    Frequency,
    InvalidWeight,
    PerPeriod,
    PhaseRequired,
    Quantity,
    UnitsIncompatible,
    Verdict,
    WeightRequired,
)

IV, NASAL, IM = "47625008", "46713006", "78421000"


def content(*ranges: dict[str, Any], routes: tuple[str, ...] = (IV,)) -> dict[str, Any]:
    """The clinical content of a version, reduced to what dose checking reads."""
    return {"routes": [{"system": "http://snomed.info/sct", "code": code, "display": "x"} for code in routes],
            "dosing_ranges": [dict({"phase": "induction", "route": IV}, **r) for r in ranges]}


def order(value: str, unit: str, route: str = IV, **kwargs: Any) -> DoseOrder:
    return DoseOrder(route=route, dose=Quantity(Decimal(value), unit), **kwargs)


def _per_period(result: DoseCheck) -> PerPeriod:
    """The per-period evaluation a check made (failing, not ``AttributeError``, when it made none)."""
    assert result.evaluation is not None and result.evaluation.per_period is not None, result
    return result.evaluation.per_period


# ------------------------------------------------------------------------------- units


@pytest.mark.parametrize(("code", "amount", "kind", "factor", "per_kg", "seconds"), [
    ("g", "g", "mass", Fraction(1000), False, None),
    ("mg", "mg", "mass", Fraction(1), False, None),
    ("ug", "ug", "mass", Fraction(1, 1000), False, None),
    ("mcg", "ug", "mass", Fraction(1, 1000), False, None),
    ("mg/kg", "mg", "mass", Fraction(1), True, None),
    ("mg/kg/h", "mg", "mass", Fraction(1), True, Fraction(3600)),
    ("mcg/kg/min", "ug", "mass", Fraction(1, 1000), True, Fraction(60)),
    ("mg/h", "mg", "mass", Fraction(1), False, Fraction(3600)),
    ("mL", "mL", "volume", Fraction(1), False, None),
    ("L", "L", "volume", Fraction(1000), False, None),
])
def test_dose_units_parse_with_exact_factors(code, amount, kind, factor, per_kg, seconds):
    unit = parse_dose_unit(code)
    assert (unit.amount, unit.kind, unit.amount_factor, unit.per_kg, unit.time_seconds) == (
        amount, kind, factor, per_kg, seconds)
    assert isinstance(unit.amount_factor, Fraction)


@pytest.mark.parametrize(("code", "reason"), [
    ("mmol", "not an amount of drug"),
    ("kg/m2", "not a unit of time"),
    ("mg/mo", "variable length"),
    ("mg/h/kg", "amount[/kg][/time]"),
    ("foo", "not a valid UCUM unit"),
    ("", "UCUM code"),
    ("mg/kg/h/h", "amount[/kg][/time]"),
    # An annotation alone parses to a bare token, not a quantity: it was an AttributeError (a 500).
    ("{spray}", "names no unit"),
    ("mg/{tbl}", "names no unit"),
    ("{tbl}/kg", "names no unit"),
    ("mg/kg/{h}", "names no unit"),
])
def test_units_that_cannot_be_doses_say_why(code, reason):
    with pytest.raises(UnitError, match=re.escape(reason)):
        parse_dose_unit(code)


@pytest.mark.parametrize("code", ["mg/{spray}", "{mg}/mL"])
def test_annotation_only_concentration_units_are_unit_errors(code):
    with pytest.raises(UnitError, match="names no unit"):
        parse_concentration(Decimal(1), code)


def test_an_annotation_only_weight_unit_is_a_unit_error():
    with pytest.raises(UnitError, match="names no unit"):
        to_kilograms(Decimal(70), "{kg}")


def test_concentration_and_body_weight_units_convert_exactly():
    assert parse_concentration(Decimal("10"), "mg/mL").mg_per_ml == 10
    assert parse_concentration(Decimal("500"), "ug/mL").mg_per_ml == Fraction(1, 2)
    assert parse_concentration(Decimal("1"), "g/L").mg_per_ml == 1
    with pytest.raises(UnitError):
        parse_concentration(Decimal("1"), "mg/kg")
    assert to_kilograms(Decimal("154"), "[lb_av]") == Fraction(154) * Fraction(45359237, 100_000_000)
    assert to_kilograms(Decimal("3500"), "g") == Fraction(7, 2)
    with pytest.raises(UnitError):
        to_kilograms(Decimal("70"), "mL")


def test_rate_conversion_through_sixty_stays_exact():
    mg_kg_h, ug_kg_min = parse_dose_unit("mg/kg/h"), parse_dose_unit("ug/kg/min")
    one = dosing.convert(Fraction(1), mg_kg_h, ug_kg_min, weight_kg=None, concentration=None, duration_s=None)
    assert one == Fraction(50, 3)  # 16.666… exactly, not a rounded float
    assert dosing.convert(one, ug_kg_min, mg_kg_h, weight_kg=None, concentration=None, duration_s=None) == 1


# ---------------------------------------------------------------------------- verdicts


WEIGHT_BASED = {"dose_min": Decimal("0.5"), "dose_max": Decimal("1.0"), "unit": "mg/kg"}


@pytest.mark.parametrize(("value", "unit", "verdict"), [
    ("35", "mg", Verdict.WITHIN_RANGE),
    ("70", "mg", Verdict.WITHIN_RANGE),
    ("34.9999999", "mg", Verdict.BELOW_MIN),
    ("70.0000001", "mg", Verdict.ABOVE_MAX),
    ("0.035", "g", Verdict.WITHIN_RANGE),
    ("0.0700000001", "g", Verdict.ABOVE_MAX),
    ("35000", "ug", Verdict.WITHIN_RANGE),
    ("34999.9999", "mcg", Verdict.BELOW_MIN),
    ("0.5", "mg/kg", Verdict.WITHIN_RANGE),
    ("1.0000000001", "mg/kg", Verdict.ABOVE_MAX),
])
def test_weight_based_range_edges_for_70_kg(value, unit, verdict):
    result = dosing.check(content(WEIGHT_BASED), order(value, unit, weight_kg=Decimal("70")))
    assert result.verdict is verdict, result.messages
    assert result.evaluation is not None
    absolute = result.evaluation.absolute_range
    assert (absolute.span.low, absolute.span.high, absolute.span.unit) == (35, 70, "mg")
    assert absolute.calculation == "0.5\u20131 mg/kg \u00d7 70 kg = 35\u201370 mg"


def test_edges_that_floats_get_wrong_are_exact():
    # 0.1 mg/kg x 3 kg is 0.30000000000000004 in binary floating point: a float check would call
    # 0.3 mg below the minimum. Exact arithmetic keeps it at the edge, inside.
    ranges = content({"dose_min": Decimal("0.1"), "dose_max": Decimal("0.7"), "unit": "mg/kg"})
    assert dosing.check(ranges, order("0.3", "mg", weight_kg=Decimal("3"))).verdict is Verdict.WITHIN_RANGE
    assert dosing.check(ranges, order("2.1", "mg", weight_kg=Decimal("3"))).verdict is Verdict.WITHIN_RANGE
    assert dosing.check(ranges, order("2.1000000001", "mg", weight_kg=Decimal("3"))).verdict is Verdict.ABOVE_MAX
    # 1 mg/kg/h is 50/3 ug/kg/min: 16.6666666666 is inside, 16.6666666667 is above.
    rate = content({"dose_min": Decimal("0.5"), "dose_max": Decimal("1"), "unit": "mg/kg/h", "phase": "infusion"})
    assert dosing.check(rate, order("16.6666666666", "ug/kg/min", weight_kg=Decimal("70"))).verdict \
        is Verdict.WITHIN_RANGE
    assert dosing.check(rate, order("16.6666666667", "ug/kg/min", weight_kg=Decimal("70"))).verdict \
        is Verdict.ABOVE_MAX


def test_fixed_range_edges_and_range_in_ordered_unit():
    spravato = content({"dose_min": 56, "dose_max": 84, "unit": "mg", "route": NASAL}, routes=(NASAL,))
    for value, verdict in (("56", Verdict.WITHIN_RANGE), ("84", Verdict.WITHIN_RANGE),
                           ("84.0000001", Verdict.ABOVE_MAX), ("55.9999999", Verdict.BELOW_MIN)):
        assert dosing.check(spravato, order(value, "mg", route=NASAL)).verdict is verdict
    result = dosing.check(spravato, order("0.084", "g", route=NASAL))
    assert result.verdict is Verdict.WITHIN_RANGE
    assert result.evaluation is not None
    span = result.evaluation.range_in_ordered_unit
    assert (span.low, span.high, span.unit) == (Fraction(56, 1000), Fraction(84, 1000), "g")
    assert result.evaluation.absolute_range.weight_kg is None


def test_stored_floats_are_read_as_their_decimal():
    # Documents store 4.5 as a JSON number; read back as float it must still mean exactly 4.5.
    ranges = content({"dose_min": 1, "dose_max": 4.5, "unit": "mg/kg"})
    assert dosing.check(ranges, order("315", "mg", weight_kg=Decimal("70"))).verdict is Verdict.WITHIN_RANGE
    assert dosing.check(ranges, order("315.000001", "mg", weight_kg=Decimal("70"))).verdict is Verdict.ABOVE_MAX


# --------------------------------------------------------------------------- per period


@pytest.mark.parametrize(("count", "period", "window", "doses"), [
    (2, "P1W", "P1D", 1),
    (4, "P1D", "P1D", 4),
    (1, "PT8H", "P1D", 3),
    (3, "P1D", "PT12H", 2),
    (2, "P1D", "P1W", 14),
])
def test_doses_per_period_for_evenly_spaced_doses(count, period, window, doses):
    ranges = content({"dose_min": 1, "dose_max": 100, "unit": "mg",
                      "max_per_period": {"value": 1000, "unit": "mg", "period": window}})
    result = dosing.check(ranges, order("10", "mg", frequency=Frequency(count, period)))
    assert result.evaluation is not None and result.evaluation.per_period is not None
    per_period = result.evaluation.per_period
    assert per_period.doses_per_period == doses
    assert per_period.projected.value == 10 * doses


def test_per_period_maximum_edges():
    ranges = content({"dose_min": 56, "dose_max": 84, "unit": "mg", "route": NASAL,
                      "max_per_period": {"value": 84, "unit": "mg", "period": "P1D"}}, routes=(NASAL,))
    twice_weekly = Frequency(2, "P1W")
    assert dosing.check(ranges, order("84", "mg", route=NASAL, frequency=twice_weekly)).verdict \
        is Verdict.WITHIN_RANGE
    result = dosing.check(ranges, order("56", "mg", route=NASAL, frequency=Frequency(2, "P1D")))
    assert result.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD
    assert result.evaluation is not None and result.evaluation.per_period is not None
    assert result.evaluation.per_period.projected.value == 112
    assert "112 mg per P1D > maximum 84 mg per P1D" in result.evaluation.per_period.calculation
    # Above the range outranks the per-period verdict: the single dose is already wrong.
    assert dosing.check(ranges, order("85", "mg", route=NASAL, frequency=Frequency(2, "P1D"))).verdict \
        is Verdict.ABOVE_MAX


def test_weight_based_per_period_maximum_uses_the_weight():
    ranges = content({"dose_min": 1, "dose_max": 2, "unit": "mg/kg",
                      "max_per_period": {"value": 4, "unit": "mg/kg", "period": "P1D"}})
    w = Decimal("50")
    assert dosing.check(ranges, order("100", "mg", weight_kg=w, frequency=Frequency(2, "P1D"))).verdict \
        is Verdict.WITHIN_RANGE
    assert dosing.check(ranges, order("100.000001", "mg", weight_kg=w, frequency=Frequency(2, "P1D"))).verdict \
        is Verdict.ABOVE_MAX
    assert dosing.check(ranges, order("70", "mg", weight_kg=w, frequency=Frequency(3, "P1D"))).verdict \
        is Verdict.EXCEEDS_MAX_PER_PERIOD


# --------------------------------------------------------------------- what is required


def test_weight_based_range_without_weight_names_the_field():
    with pytest.raises(WeightRequired) as error:
        dosing.check(content(WEIGHT_BASED), order("35", "mg"))
    assert error.value.field == "patient.weight_kg"

    # Even a dose already per kg: the REST answer shows absolute amounts for the patient.
    with pytest.raises(WeightRequired):
        dosing.check(content(WEIGHT_BASED), order("0.5", "mg/kg"))


def test_a_dose_per_kg_may_be_judged_against_a_range_per_kg_without_a_weight():
    """Found by a conformance probe: 50 mg/kg against 0.5 mg/kg needs no weight to be above it, and was
    "dose not checked" in CDS Hooks where a weight made it critical. Asked to (CDS Hooks does), the range
    is compared per kg and says no weight was used; a maximum per period in mg still needs one."""
    over = dosing.check(content(WEIGHT_BASED), order("50", "mg/kg", per_kg_without_weight=True))
    assert over.verdict is Verdict.ABOVE_MAX and over.evaluation is not None
    assert over.evaluation.absolute_range.weight_kg is None
    assert "(compared per kg: no body weight used)" in over.evaluation.absolute_range.calculation
    assert dosing.check(content(WEIGHT_BASED), order("0.75", "mg/kg", per_kg_without_weight=True)).verdict \
        is Verdict.WITHIN_RANGE
    capped = dict(WEIGHT_BASED, max_per_period={"value": 100, "unit": "mg", "period": "P1D"})
    with pytest.raises(WeightRequired):
        dosing.check(content(capped), order("0.75", "mg/kg", per_kg_without_weight=True))


@pytest.mark.parametrize("weight", ["0.29", "500.01", "0"])
def test_implausible_weights_are_rejected(weight):
    with pytest.raises(InvalidWeight) as error:
        dosing.check(content(WEIGHT_BASED), order("35", "mg", weight_kg=Decimal(weight)))
    assert error.value.field == "patient.weight_kg"


@pytest.mark.parametrize("weight", ["0.3", "500"])
def test_weight_bounds_are_inclusive(weight):
    assert dosing.check(content(WEIGHT_BASED), order("1", "mg", weight_kg=Decimal(weight))).evaluation is not None


def test_volume_needs_a_concentration():
    ranges = content({"dose_min": 56, "dose_max": 84, "unit": "mg"})
    with pytest.raises(ConcentrationRequired) as error:
        dosing.check(ranges, order("8", "mL"))
    assert error.value.field == "concentration"
    strength = dose_units.parse_concentration(Decimal("10"), "mg/mL")
    assert dosing.check(ranges, order("8.4", "mL", concentration=strength)).verdict is Verdict.WITHIN_RANGE
    assert dosing.check(ranges, order("8.41", "mL", concentration=strength)).verdict is Verdict.ABOVE_MAX


def test_rate_against_an_amount_needs_the_range_duration():
    over_40_min = content({"dose_min": Decimal("0.5"), "dose_max": Decimal("0.5"), "unit": "mg/kg",
                           "duration": "PT40M", "phase": "single"})
    # 0.5 mg/kg over 40 minutes is 0.75 mg/kg/h.
    w = Decimal("70")
    assert dosing.check(over_40_min, order("0.75", "mg/kg/h", weight_kg=w)).verdict is Verdict.WITHIN_RANGE
    assert dosing.check(over_40_min, order("0.7500001", "mg/kg/h", weight_kg=w)).verdict is Verdict.ABOVE_MAX
    assert dosing.check(over_40_min, order("52.5", "mg/h", weight_kg=w)).verdict is Verdict.WITHIN_RANGE
    no_duration = content({"dose_min": 1, "dose_max": 2, "unit": "mg/kg"})
    with pytest.raises(UnitsIncompatible, match="duration") as raised:
        dosing.check(no_duration, order("1", "mg/kg/h", weight_kg=w))
    assert raised.value.field == "duration"  # what the caller can send to fix it (it named dose.unit)


# ----------------------------------------------------------------------- range choice


TWO_PHASES = content(
    {"phase": "induction", "dose_min": 56, "dose_max": 84, "unit": "mg", "route": NASAL},
    {"phase": "maintenance", "dose_min": 28, "dose_max": 56, "unit": "mg", "route": NASAL},
    routes=(NASAL, IM),
)


def test_route_and_phase_not_in_protocol_are_verdicts():
    result = dosing.check(TWO_PHASES, order("56", "mg", route=IV, phase="induction"))
    assert result.verdict is Verdict.ROUTE_NOT_IN_PROTOCOL and result.evaluation is None
    # A route listed in routes but without any dosing range is still not dosable.
    assert dosing.check(TWO_PHASES, order("56", "mg", route=IM)).verdict is Verdict.ROUTE_NOT_IN_PROTOCOL
    result = dosing.check(TWO_PHASES, order("56", "mg", route=NASAL, phase="loading"))
    assert result.verdict is Verdict.PHASE_NOT_IN_PROTOCOL
    assert "induction, maintenance" in result.messages[0]


def test_several_phases_without_a_phase_require_one():
    with pytest.raises(PhaseRequired) as error:
        dosing.check(TWO_PHASES, order("56", "mg", route=NASAL))
    assert error.value.field == "phase"
    assert dosing.check(TWO_PHASES, order("84", "mg", route=NASAL, phase="induction")).verdict \
        is Verdict.WITHIN_RANGE
    assert dosing.check(TWO_PHASES, order("84", "mg", route=NASAL, phase="maintenance")).verdict \
        is Verdict.ABOVE_MAX


def test_alternatives_within_a_phase_give_the_most_favourable_verdict():
    alternatives = copy.deepcopy(TWO_PHASES)
    alternatives["dosing_ranges"][1]["phase"] = "induction"
    result = dosing.check(alternatives, order("30", "mg", route=NASAL))
    assert result.verdict is Verdict.WITHIN_RANGE
    assert result.evaluation is not None and result.evaluation.range_index == 1
    assert [e.verdict for e in result.evaluations] == [Verdict.BELOW_MIN, Verdict.WITHIN_RANGE]
    assert dosing.check(alternatives, order("90", "mg", route=NASAL)).verdict is Verdict.ABOVE_MAX


def test_patient_ranges_show_absolute_amounts():
    ranges = content({"dose_min": 1, "dose_max": Decimal("4.5"), "unit": "mg/kg",
                      "max_per_period": {"value": 9, "unit": "mg/kg", "period": "P1D"}})
    result = dosing.patient_ranges(ranges, IV, None, Decimal("80"))
    assert not isinstance(result, dosing.Selection)
    (only,) = result
    assert (only.absolute_range.span.low, only.absolute_range.span.high) == (80, 360)
    assert only.max_per_period is not None and only.max_per_period.value == 720
    with pytest.raises(WeightRequired) as error:
        dosing.patient_ranges(ranges, IV, None, None)
    assert error.value.field == "weight_kg"


def test_numbers_for_people_are_exact_or_marked_rounded():
    assert dosing.fmt(Fraction(35)) == "35"
    assert dosing.fmt(Fraction(1, 8)) == "0.125"
    assert dosing.fmt(Fraction(50, 3)).startswith("\u224816.66666666")
    assert dosing.to_decimal(Fraction(7, 2)) == Decimal("3.5")


def test_a_rounded_product_is_marked_rounded_even_when_it_terminates():
    """1.00000000001 x 4.49999999996 terminates after 23 digits: shown as 4.5 it read as equal to the
    4.5 limit it exceeds."""
    product = Fraction(Decimal("1.00000000001")) * Fraction(Decimal("4.49999999996"))
    assert product > Fraction(9, 2)
    assert dosing.fmt(product) == "\u22484.5"
    assert dosing.fmt(Fraction(Decimal("123456789012"))) == "123456789012"  # 12 digits: exact
    assert dosing.fmt(Fraction(Decimal("1234567890123"))).startswith("\u2248")


def test_a_stored_rate_maximum_per_period_is_not_added_up_but_noted():
    """A maximum per period in a rate unit is refused at write time; a version stored before that rule
    keeps it, and the check says it was not applied instead of adding rates dose by dose."""
    ranges = content({"dose_min": 10, "dose_max": 20, "unit": "mg/h", "duration": "PT2H",
                      "max_per_period": {"value": 30, "unit": "mg/h", "period": "P1D"}})
    result = dosing.check(ranges, order("20", "mg/h", frequency=Frequency(2, "P1D")))
    assert result.verdict is Verdict.WITHIN_RANGE
    assert result.evaluation is not None
    assert result.evaluation.per_period is None or result.evaluation.per_period.maximum is None
    assert any("is a rate, not an amount, and was not applied" in m for m in result.evaluation.messages)
    (shown,) = dosing.patient_ranges(ranges, IV, None, None)  # type: ignore[misc]
    assert shown.max_per_period is None
    assert any("is a rate" in m for m in shown.messages)


def test_an_infusion_longer_than_the_per_period_window_counts_only_what_runs_in_it():
    """20 mg/h for 4 h against at most 30 mg in any hour: 20 mg run in an hour, not the whole 80 mg of
    the infusion (a false 'exceeds' found by a clinical QA probe), whether the order gives the rate or
    the amount with its duration. Repeated infusions: the most any hour holds, counted exactly."""
    ranges = content({"dose_min": 10, "dose_max": 30, "unit": "mg/h", "duration": "PT4H",
                      "max_per_period": {"value": 30, "unit": "mg", "period": "PT1H"}})
    result = dosing.check(ranges, order("20", "mg/h"))
    assert result.verdict is Verdict.WITHIN_RANGE
    assert result.evaluation is not None and result.evaluation.per_period is not None
    assert result.evaluation.per_period.projected.value == 20
    assert result.evaluation.per_period.calculation == (
        "80 mg over 4 h per administration; any PT1H holds at most 1 h of administration = 20 mg per PT1H "
        "≤ maximum 30 mg per PT1H")
    amount = dosing.check(ranges, order("80", "mg", duration_s=Fraction(4 * 3600)))
    assert amount.verdict is Verdict.WITHIN_RANGE and _per_period(amount).projected.value == 20
    # Every 12 h: the infusions do not overlap, an hour still holds at most 20 mg.
    assert dosing.check(ranges, order("20", "mg/h", frequency=Frequency(2, "P1D"))).verdict \
        is Verdict.WITHIN_RANGE
    # Every 2 h with 4-hour infusions: two run at once, 40 mg in an hour.
    every_2_h = dosing.check(ranges, order("20", "mg/h", frequency=Frequency(12, "P1D")))
    assert every_2_h.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD
    assert _per_period(every_2_h).projected.value == 40
    # 7 a day (every 24/7 h): an hour holds at most 1 h of one and 4/7 h of the next, 31.43 mg.
    seven = content({"dose_min": 10, "dose_max": 30, "unit": "mg/h", "duration": "PT4H",
                     "max_per_period": {"value": 35, "unit": "mg", "period": "PT1H"}})
    per_period = _per_period(dosing.check(seven, order("20", "mg/h", frequency=Frequency(7, "P1D"))))
    assert per_period.projected.value == Fraction(220, 7) and not per_period.exceeded
    assert per_period.doses_per_period == 2
    # The order's own duration counts the same way; a window longer than the infusion is unchanged.
    assert dosing.check(ranges, order("20", "mg/h", duration_s=Fraction(8 * 3600))).verdict \
        is Verdict.WITHIN_RANGE
    daily = content({"dose_min": 10, "dose_max": 30, "unit": "mg/h", "duration": "PT4H",
                     "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}})
    assert _per_period(dosing.check(daily, order("20", "mg/h"))).projected.value == 80
    assert dosing.check(daily, order("30", "mg/h")).verdict is Verdict.EXCEEDS_MAX_PER_PERIOD


@pytest.mark.parametrize(("duration", "interval", "window", "held"), [
    (4, None, 1, 1), (4, 12, 1, 1), (4, 2, 1, 2), (4, Fraction(24, 7), 1, Fraction(11, 7)),
    (1, 3, 2, 1), (3, 4, 2, 2), (5, 2, 3, 8), (4, 2, 2, 4),
])
def test_most_running_in_a_window_matches_a_brute_force_sweep(duration, interval, window, held):
    d, w = Fraction(duration), Fraction(window)
    t = None if interval is None else Fraction(interval)
    assert dosing.most_running_in_window(d, t, w)[0] == held
    if t is not None:  # the same by sweeping the window's start over one interval in small steps
        steps = [t * i / 840 for i in range(840)]
        swept = max(sum(max(Fraction(0), min(k * t + d, s + w) - max(k * t, s)) for k in range(-10, 20))
                    for s in steps)
        assert swept == held


def test_most_running_in_a_window_bounds_instead_of_counting_thousands():
    """A week-long infusion started every minute meets ~10,000 administrations in a window: bounded by
    the most that can run at once (exact here, the duration being a whole number of intervals)."""
    week, minute, hour = Fraction(7 * 86400), Fraction(60), Fraction(3600)
    held, met = dosing.most_running_in_window(week, minute, hour)
    assert held == hour * 10_080 and met >= 10_080
    # A shorter infusion is counted one by one: ten run at once at every instant.
    assert dosing.most_running_in_window(Fraction(600), minute, hour)[0] == hour * 10


def test_a_dose_below_the_minimum_given_too_often_is_the_per_period_breach():
    """9 mg ten times a day against 10-20 mg, at most 40 mg a day, is 90 mg a day: it read below_min
    (a warning card), while 10 mg ten times a day read exceeds_max_per_period (critical). A breach of
    the maximum per period outranks an underdose; a dose above the maximum still outranks both."""
    ranges = content({"dose_min": 10, "dose_max": 20, "unit": "mg",
                      "max_per_period": {"value": 40, "unit": "mg", "period": "P1D"}})
    often = Frequency(10, "P1D")
    below = dosing.check(ranges, order("9", "mg", frequency=often))
    assert below.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD
    assert below.evaluation is not None and below.evaluation.per_period is not None
    assert below.evaluation.per_period.exceeded
    assert any("below the protocol minimum" in m for m in below.evaluation.messages)  # still said
    assert dosing.check(ranges, order("10", "mg", frequency=often)).verdict is Verdict.EXCEEDS_MAX_PER_PERIOD
    assert dosing.check(ranges, order("21", "mg", frequency=often)).verdict is Verdict.ABOVE_MAX
    assert dosing.check(ranges, order("9", "mg", frequency=Frequency(4, "P1D"))).verdict is Verdict.BELOW_MIN


# ------------------------------------------------------------ found by the probe of 2026-12-05


def test_an_amount_given_faster_than_the_range_allows_is_named_and_flagged():
    """The order's own administration time was used only to turn a rate into an amount: 0.5 mg/kg over
    one minute against 0.5 mg/kg over 40 minutes read within_range with nothing said. Faster than
    dose_max / duration (beyond a 10 % tolerance for rounded pump rates) is now named in a message and
    in ``Evaluation.faster``; the verdict stays about the amount (a review: what ``duration`` means
    differs by range, so a faster administration is not called an overdose)."""
    w = Decimal("70")
    over_40_min = content({"dose_min": Decimal("0.5"), "dose_max": Decimal("0.5"), "unit": "mg/kg",
                           "duration": "PT40M", "phase": "single"})
    fast = dosing.check(over_40_min, order("30", "mg/kg/h", weight_kg=w, duration_s=Fraction(60), duration_text="PT1M"))
    assert fast.verdict is Verdict.WITHIN_RANGE and fast.evaluation is not None
    expected = ("Given faster than the protocol: 0.5 mg/kg over PT1M is 0.5 mg/kg/min; the protocol gives at most "
                "0.5 mg/kg over PT40M, 0.0125 mg/kg/min.")
    assert fast.evaluation.faster == expected and expected in fast.messages
    induction = content({"dose_min": 1, "dose_max": Decimal("4.5"), "unit": "mg/kg", "duration": "PT60S"})
    push = dosing.check(induction, order("4.5", "mg/kg", weight_kg=w, duration_s=Fraction(5), duration_text="PT5S"))
    assert push.evaluation is not None and push.evaluation.faster is not None
    def faster(checked: DoseCheck) -> str | None:
        assert checked.evaluation is not None
        return checked.evaluation.faster

    # At the protocol's time or slower, or within the tolerance (a pump rate rounded up): nothing to name.
    for given in (Fraction(60), Fraction(120)):
        assert faster(dosing.check(induction, order("4.5", "mg/kg", weight_kg=w, duration_s=given))) is None
    rounded_pump = dosing.check(over_40_min, order("36.5", "mg", weight_kg=Decimal("73"),
                                                   duration_s=Fraction(365, 55) * 360))  # 36.5 mg at 55 mg/h
    assert faster(rounded_pump) is None
    ranged = order("35", "mg", weight_kg=w, duration_s=Fraction(2400), shortest_s=Fraction(600))
    assert faster(dosing.check(over_40_min, ranged)) is not None  # 10 to 40 min: it may run in 10


def test_a_rate_without_duration_or_frequency_is_projected_as_running_without_a_stop():
    """30 mg/d against at most 20 mg a day read within_range, the maximum left unapplied. A rate with
    neither a duration nor a frequency runs without a stop: the window holds rate x its length. With a
    frequency (doses of unknown length), the maximum is still reported as not applied."""
    rate_range = content({"dose_min": 10, "dose_max": 40, "unit": "mg/d",
                          "max_per_period": {"value": 20, "unit": "mg", "period": "P1D"}})
    result = dosing.check(rate_range, order("30", "mg/d"))
    assert result.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD
    per_period = _per_period(result)
    assert per_period.projected.value == 30 and per_period.exceeded
    assert "run without a stop for P1D (no duration or frequency was sent)" in per_period.calculation
    assert dosing.check(rate_range, order("20", "mg/d")).verdict is Verdict.WITHIN_RANGE
    weight_based = content({"dose_min": Decimal("0.1"), "dose_max": 1, "unit": "mg/kg/h",
                            "max_per_period": {"value": 5, "unit": "mg/kg", "period": "P1D"}})
    assert dosing.check(weight_based, order("1", "mg/kg/h", weight_kg=Decimal("70"))).verdict \
        is Verdict.EXCEEDS_MAX_PER_PERIOD  # 24 mg/kg a day
    with_frequency = dosing.check(rate_range, order("30", "mg/d", frequency=Frequency(1, "P1D")))
    assert with_frequency.evaluation is not None and with_frequency.evaluation.maximum_per_period_unapplied


# ------------------------------------------------------------ found by the probe of 2026-12-05 (second)


@pytest.mark.parametrize(("code", "reason"), [
    ("mg{tbl}", "annotations in braces are not part of a dose unit (the check would read 'mg'"),
    ("mg/kg/h{x}", "annotations in braces"),
    ("mg.[iU]", "'mg.[iU]' is not a mass doses are written in"),
    ("mg.rad", "is not a mass doses are written in"),
    ("mg%", "'mg%' is not a mass doses are written in"),
    ("[pi].mg", "is not a mass doses are written in"),
    ("Mg", "'Mg' is not a mass doses are written in; use g, mg, ug (mcg) or ng"),
    ("kg", "'kg' is not a mass"), ("[gr]", "'[gr]' is not a mass"), ("[lb_av]", "is not a mass"),
    ("[drp]", "'[drp]' is not a volume doses are written in; use mL or L"), ("uL", "is not a volume"),
    ("mg/kg/ms", "'/ms' is not a time doses are given per; use min, h, d or wk"),
    ("mg/s", "'/s' is not a time"), ("mg/kg/h.%", "'/h.%' is not a time"), ("mg/kg/[pi].h", "is not a time"),
])
def test_an_ordered_unit_is_held_to_the_units_doses_are_written_in(code, reason):
    """Found by an adversarial probe: an ordered unit was checked only for being a mass or volume (per
    kg, per time), so 84 mg{tbl} and 84 mg.[iU] read as 84 mg within 56-84 mg, mg% as a hundredth of a
    mg, [pi].mg as 264 mg and mg/kg/h.% made the hour 36 s. Stored units had the narrower rules; orders
    are now held to them too (a volume stays a volume: mL/h and mL/kg of a product whose concentration
    is sent are read through it). The parser of stored units is unchanged."""
    with pytest.raises(UnitError, match=re.escape(reason)):
        dose_units.parse_ordered_unit(code)
    ranges = content({"dose_min": 56, "dose_max": 84, "unit": "mg"})
    with pytest.raises(dosing.UnitsIncompatible) as raised:
        dosing.check(ranges, order("84", code, weight_kg=Decimal(1), duration_s=Fraction(3600)))
    assert raised.value.field == "dose.unit"


@pytest.mark.parametrize("code", ["mg", "ug", "mcg", "g", "ng", "mL", "L", "mg/kg", "mcg/kg/min", "mg/kg/h",
                                  "mg/d", "mg/kg/wk", "mL/h", "mL/kg"])
def test_units_doses_are_written_in_are_read_in_an_order(code):
    assert dose_units.parse_ordered_unit(code) == parse_dose_unit(code)


def test_the_lower_case_litre_is_read_as_the_litre():
    """Found in review: UCUM has ``l`` beside ``L``; ``ml/h`` and ``mg/ml`` (as many EHRs send them) were
    refused by the stricter order units, and a critical card for 10 ml/h of 10 mg/mL became "dose not
    checked". They are aliases, as ``mcg`` is."""
    assert dose_units.parse_ordered_unit("ml/h") == parse_dose_unit("mL/h")
    assert dose_units.parse_ordered_unit("l") == parse_dose_unit("L")
    assert parse_concentration(Decimal(10), "mg/ml").mg_per_ml == 10
    assert parse_concentration(Decimal(1), "g/l").mg_per_ml == 1
    crps = content({"dose_min": Decimal("0.25"), "dose_max": Decimal("0.35"), "unit": "mg/kg/h", "phase": "infusion"})
    pump = order("10", "ml/h", weight_kg=Decimal(80), concentration=parse_concentration(Decimal(10), "mg/ml"))
    assert dosing.check(crps, pump).verdict is Verdict.ABOVE_MAX  # 100 mg/h against at most 28


@pytest.mark.parametrize(("code", "reason"), [
    ("mg.[pi]/mL", "'mg.[pi]' is not a mass"), ("mg/mL.%", "'mL.%' is not a volume"),
    ("mg{x}/mL", "annotations in braces"), ("mg/mL{x}", "annotations in braces"),
    ("Mg/mL", "'Mg' is not a mass"), ("mg/[drp]", "'[drp]' is not a volume"),
])
def test_a_concentration_is_held_to_the_units_doses_are_written_in(code, reason):
    with pytest.raises(UnitError, match=re.escape(reason)):
        parse_concentration(Decimal(10), code)
    assert parse_concentration(Decimal(10), "mcg/mL").mg_per_ml == Fraction(1, 100)


def test_a_repeated_dose_against_a_range_without_a_schedule_says_it_was_not_checked():
    """Found by an adversarial probe: 2 mg/kg every 5 minutes against Ketalar's 1-4.5 mg/kg induction
    (no frequency, no maximum per period) read a clean within_range on the REST check, though the CDS
    Hooks card already said "partly checked". The evaluation now lists what it did not check; the
    verdict stays about the dose. A single dose, a range with a schedule, and a ``single`` phase (whose
    repetition is its own verdict) list nothing."""
    w = Decimal("70")
    induction = content({"dose_min": 1, "dose_max": Decimal("4.5"), "unit": "mg/kg", "duration": "PT60S"})
    repeated = dosing.check(induction, order("2", "mg/kg", weight_kg=w, frequency=Frequency(1, "PT5M")))
    assert repeated.verdict is Verdict.WITHIN_RANGE and repeated.evaluation is not None
    assert repeated.evaluation.unchecked == [dosing.REPEAT_UNCHECKED]
    assert f"Not checked: {dosing.REPEAT_UNCHECKED}." in repeated.messages
    once = dosing.check(induction, order("2", "mg/kg", weight_kg=w))
    assert once.evaluation is not None and once.evaluation.unchecked == []
    capped = content({"dose_min": 1, "dose_max": Decimal("4.5"), "unit": "mg/kg",
                      "max_per_period": {"value": 10, "unit": "mg/kg", "period": "P1D"}})
    checked = dosing.check(capped, order("2", "mg/kg", weight_kg=w, frequency=Frequency(1, "PT5M")))
    assert checked.evaluation is not None and checked.evaluation.unchecked == []
    assert checked.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD
    single = content({"dose_min": 20, "dose_max": 25, "unit": "mg", "phase": "single"})
    daily = dosing.check(single, order("25", "mg", frequency=Frequency(1, "P1D")))
    assert daily.verdict is Verdict.MORE_FREQUENT_THAN_PROTOCOL and daily.evaluation is not None
    assert daily.evaluation.unchecked == []


def test_an_infusion_run_longer_than_its_range_is_named_and_its_regimen_compared():
    """Found by an adversarial probe: a range of rates with a duration (0.25-0.5 mg/kg/h for 1 h once a
    week) judged 0.5 mg/kg/h for a whole week on its rate alone: within_range, 168 times the protocol's
    weekly amount, with nothing said. The regimen now compares amounts for rates (rate x the order's
    duration per administration against dose_max x the range's duration), and a longer administration
    that gives more in all is named (``Evaluation.longer``)."""
    w = Decimal("70")
    weekly = content({"dose_min": Decimal("0.25"), "dose_max": Decimal("0.5"), "unit": "mg/kg/h",
                      "duration": "PT1H", "frequency": {"count": 1, "period": "P1W"}, "phase": "infusion"})
    week = dosing.check(weekly, order("0.5", "mg/kg/h", weight_kg=w, frequency=Frequency(1, "P1W"),
                                      duration_s=Fraction(7 * 86400), duration_text="P1W"))
    assert week.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD and week.evaluation is not None
    regimen = week.evaluation.regimen
    assert regimen is not None and regimen.exceeded
    assert (regimen.projected, regimen.maximum) == (Amount(Fraction(84), "mg/kg"), Amount(Fraction(1, 2), "mg/kg"))
    assert week.evaluation.longer == ("Given for longer than the protocol: 0.5 mg/kg/h for P1W is 84 mg/kg in one "
                                      "administration; the protocol's range runs for PT1H, at most 0.5 mg/kg.")
    # The same amount ordered as an amount over the week converts to the same rate, and is judged alike.
    as_amount = dosing.check(weekly, order("5880", "mg", weight_kg=w, frequency=Frequency(1, "P1W"),
                                           duration_s=Fraction(7 * 86400), duration_text="P1W"))
    assert as_amount.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD
    # Without a frequency the order is one administration: 2.75 mg/kg in a week against at most 0.5 (a
    # review: 0.2 mg/kg/h for 10 h read below_min once and critical once a day).
    alone = dosing.check(weekly, order("0.5", "mg/kg/h", weight_kg=w, duration_s=Fraction(5 * 3600 + 1800),
                                       duration_text="PT5H30M"))
    assert alone.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD and alone.evaluation is not None
    assert alone.evaluation.regimen is not None and alone.evaluation.regimen.projected.value == Fraction(11, 4)
    assert alone.evaluation.longer is not None and alone.evaluation.longer in alone.messages
    below = dosing.check(weekly, order("0.2", "mg/kg/h", weight_kg=w, duration_s=Fraction(10 * 3600)))
    assert below.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD  # 2 mg/kg: below the rate, above the amount
    # A range of rates with a duration and no frequency: no regimen; the longer administration is named.
    unscheduled = content({"dose_min": Decimal("0.25"), "dose_max": Decimal("0.5"), "unit": "mg/kg/h",
                           "duration": "PT1H", "phase": "infusion"})
    named = dosing.check(unscheduled, order("0.5", "mg/kg/h", weight_kg=w, duration_s=Fraction(7200)))
    assert named.verdict is Verdict.WITHIN_RANGE and named.evaluation is not None
    assert named.evaluation.regimen is None and named.evaluation.longer is not None
    # An infusion longer than the regimen's period counts what runs in each period: 0.05 mg/kg/h for 48 h
    # every 2 days puts 1.2 mg/kg in any day, within the 0.5 mg/kg/h for 4 h daily's 2 mg/kg (a review:
    # the whole 2.4 mg/kg was put in one day, a false critical).
    daily = content({"dose_min": Decimal("0.05"), "dose_max": Decimal("0.5"), "unit": "mg/kg/h", "duration": "PT4H",
                     "frequency": {"count": 1, "period": "P1D"}, "phase": "infusion"})
    spread = dosing.check(daily, order("0.05", "mg/kg/h", weight_kg=w, frequency=Frequency(1, "P2D"),
                                       duration_s=Fraction(48 * 3600)))
    assert spread.evaluation is not None and spread.evaluation.regimen is not None
    assert (spread.evaluation.regimen.projected.value, spread.evaluation.regimen.maximum) == (
        Fraction(6, 5), Amount(Fraction(2), "mg/kg"))
    assert spread.verdict is Verdict.WITHIN_RANGE and "running 24 h in any P1D" in spread.evaluation.regimen.calculation
    # At the range's duration, or slower for longer without giving more in all: nothing to name.
    for rate, hours in (("0.5", 1), ("0.25", 2)):
        same = dosing.check(weekly, order(rate, "mg/kg/h", weight_kg=w, frequency=Frequency(1, "P1W"),
                                          duration_s=Fraction(hours * 3600)))
        assert same.verdict is Verdict.WITHIN_RANGE and same.evaluation is not None
        assert same.evaluation.longer is None and same.evaluation.regimen is not None
        assert not same.evaluation.regimen.exceeded
    # Twice a week at the range's own duration: the regimen (1 mg/kg against 0.5) catches it.
    twice = dosing.check(weekly, order("0.5", "mg/kg/h", weight_kg=w, frequency=Frequency(2, "P1W")))
    assert twice.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD
    # A range of rates without a duration gives no amount per administration: no regimen, as before.
    open_ended = content({"dose_min": Decimal("0.25"), "dose_max": Decimal("0.5"), "unit": "mg/kg/h",
                          "frequency": {"count": 1, "period": "P1W"}, "phase": "infusion"})
    unbounded = dosing.check(open_ended, order("0.5", "mg/kg/h", weight_kg=w, frequency=Frequency(1, "P1W"),
                                               duration_s=Fraction(3600)))
    assert unbounded.evaluation is not None and unbounded.evaluation.regimen is None
    assert unbounded.evaluation.longer is None


def test_a_maximum_per_period_that_could_not_be_applied_is_listed_as_unchecked():
    """Found in review: a rate range without a duration, with a maximum per period, and an order with a
    frequency but no duration: the maximum cannot be applied (no amount per administration), the CDS Hooks
    card said "partly checked", and the REST answer was within_range with nothing in ``unchecked``."""
    capped = content({"dose_min": Decimal("0.25"), "dose_max": Decimal("0.35"), "unit": "mg/kg/h", "phase": "infusion",
                      "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}})
    result = dosing.check(capped, order("0.35", "mg/kg/h", weight_kg=Decimal(80), frequency=Frequency(1, "P1D")))
    assert result.verdict is Verdict.WITHIN_RANGE and result.evaluation is not None
    assert result.evaluation.unchecked == [dosing.MAXIMUM_UNCHECKED]
    applied = dosing.check(capped, order("0.35", "mg/kg/h", weight_kg=Decimal(80), frequency=Frequency(1, "P1D"),
                                         duration_s=Fraction(3600)))
    assert applied.evaluation is not None and applied.evaluation.unchecked == []


def test_time_text_is_exact_and_readable():
    assert [dosing.time_text(Fraction(s)) for s in (420, 14700, 86400, 172800, 604800, 90, Fraction(1, 2))] == [
        "7 min", "245 min", "24 h", "48 h", "7 d", "90 s", "0.5 s"]


def test_a_rate_without_a_duration_judged_over_the_ranges_says_so():
    """Found by an adversarial probe of CDS Hooks: a rate with no duration is judged over the range's
    duration, and nothing said so (a continuous infusion bounded by a day read as 4 h). It is listed in
    ``unchecked``; with the order's own duration it is not."""
    crps = content({"dose_min": Decimal("0.35"), "dose_max": Decimal("0.35"), "unit": "mg/kg/h", "duration": "PT4H",
                    "phase": "infusion"})
    assumed = dosing.check(crps, order("0.35", "mg/kg/h", weight_kg=Decimal(70)))
    assert assumed.evaluation is not None and assumed.evaluation.unchecked == [
        dosing.RATE_DURATION_ASSUMED.format(duration="PT4H")]  # "no duration or rate" said of a rate (a probe)
    stated = dosing.check(crps, order("0.35", "mg/kg/h", weight_kg=Decimal(70), duration_s=Fraction(4 * 3600)))
    assert stated.evaluation is not None and stated.evaluation.unchecked == []
    # An amount against a range of rates: found by a clinical probe, 98 mg with no duration read as the
    # protocol's 4 h infusion, a full pass, for what may be pushed at once (an anaesthetic induction dose).
    amount = dosing.check(crps, order("98", "mg", weight_kg=Decimal(70)))
    assert amount.verdict is Verdict.WITHIN_RANGE and amount.evaluation is not None
    assert amount.evaluation.unchecked == [dosing.DURATION_ASSUMED.format(duration="PT4H")]
    timed = dosing.check(crps, order("98", "mg", weight_kg=Decimal(70), duration_s=Fraction(4 * 3600)))
    assert timed.evaluation is not None and timed.evaluation.unchecked == []


def test_a_rate_without_a_duration_that_breaches_a_maximum_per_period_is_not_told_the_period_went_unchecked():
    """A review: "how much it gives in a period, was not checked" stood beside a breach of the maximum per
    period (21 mg/h three times a day against 100 mg a day). The assumed run only bounds the amounts from
    below: the message says that running longer gives more, for one administration as for a period."""
    crps = content({"dose_min": Decimal("0.35"), "dose_max": Decimal("0.35"), "unit": "mg/kg/h", "duration": "PT4H",
                    "phase": "infusion", "max_per_period": {"value": 100, "unit": "mg", "period": "P1D"}})
    result = dosing.check(crps, order("21", "mg/h", weight_kg=Decimal(60), frequency=Frequency(3, "P1D")))
    assert result.verdict is Verdict.EXCEEDS_MAX_PER_PERIOD and result.evaluation is not None
    assert result.evaluation.unchecked == [dosing.RATE_DURATION_ASSUMED.format(duration="PT4H")]
    assert "not checked" not in dosing.RATE_DURATION_ASSUMED and "gives more" in dosing.RATE_DURATION_ASSUMED


def test_an_amount_without_a_duration_is_partly_checked_against_an_infusion_but_not_against_a_bolus():
    """An infusion's duration is part of its regimen (0.5 mg/kg over 40 min): an order for the amount alone
    may be pushed, so how fast it runs is listed as not checked. A bolus range's duration is the label's
    push time (1-4.5 mg/kg over 60 s), shown in its instructions; the dose alone is a full check."""
    trd = content({"dose_min": Decimal("0.5"), "dose_max": Decimal("0.5"), "unit": "mg/kg", "duration": "PT40M",
                   "phase": "infusion"})
    pushed = dosing.check(trd, order("35", "mg", weight_kg=Decimal(70)))
    assert pushed.verdict is Verdict.WITHIN_RANGE and pushed.evaluation is not None
    assert pushed.evaluation.unchecked == [dosing.DURATION_ASSUMED.format(duration="PT40M")]
    timed = dosing.check(trd, order("35", "mg", weight_kg=Decimal(70), duration_s=Fraction(40 * 60)))
    assert timed.evaluation is not None and timed.evaluation.unchecked == []
    bolus = content({"dose_min": 1, "dose_max": Decimal("4.5"), "unit": "mg/kg", "duration": "PT60S",
                     "phase": "induction"})
    induction = dosing.check(bolus, order("140", "mg", weight_kg=Decimal(70)))
    assert induction.verdict is Verdict.WITHIN_RANGE and induction.evaluation is not None
    assert induction.evaluation.unchecked == []


def test_a_count_caps_the_doses_a_frequency_puts_in_a_window():
    assert Frequency(1, "P1D", limit=2).doses_in(Fraction(7 * 86400)) == 2
    assert Frequency(1, "P1D").doses_in(Fraction(7 * 86400)) == 7
    assert Frequency(1, "P1D", named_days=(0, 3), limit=1).doses_in(Fraction(7 * 86400)) == 1
