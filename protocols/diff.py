"""What changed between two versions of a protocol: a JSON Patch and a list of typed clinical changes.

The patch (RFC 6902) is exact and mechanical: applied to version a it yields version b byte for
byte as JSON values. The clinical changes say what the patch *means* for a patient, each with a
severity a reviewer or an EHR can act on:

* ``major``: anything that can change a dose a patient gets (dose bounds, units, frequency, per-period
  maxima, administration duration, the indications a range is for, routes, indications, dosing ranges, the
  drug, whether the protocol is in effect at all);
* ``moderate``: regulatory and safety framing (FDA status, REMS, boxed warning, DEA schedule,
  administration instructions, a range's frequency as written: ``frequency.text`` is what a clinician
  reads as the protocol's frequency, FHIR's ``Timing.code.text`` and the frequency dose checks quote);
* ``minor``: wording, sources, when a version takes effect.

Dosing ranges are matched between versions by ``(route, phase)``. Within one, a range's identity is
the population and stage it is for: its ``indications`` (as a set; absent, for every indication, is a
mark of its own), its ``frequency.text`` ("weeks 5-8", "week 9 onwards") and its ``instructions``. An
unchanged range is matched wherever it stands (a phase's ranges are in no meaningful order); the rest
are paired with the least total distance (an exact assignment, at every size): first by unit, then by
identity (how many marks differ, then how alike they are: "weeks 5-8" is nearer "weeks 5 to 8" than
"from week 9", and the indications by the codes they share), then by the stages' order in the phase,
and only then by their doses, which rank only true alternatives (equal identities). So doses moved
between two stages read as dose changes of each stage, not as their texts swapped, also when the stages
were reworded in the same revision, as far as likeness tells (a heuristic: shared words can make a mere
rewording pair stages crosswise, naming dose changes that are not there; found in review). Numbers are
compared only when units match: mg against mg/kg, or a per-day maximum against a per-week one, is a
``unit_changed``, never an "increase".

A safety net keeps a pairing that explains a range as reworded from rating below major a dose change in
its place: a range paired with a range of version a other than the one that stood in its place among
the ranges of its route and phase (the k-th with the k-th), with no major change of its own, while it
differs from that one in a dose-bearing field (doses, unit, frequency, per-period or absolute maximum,
duration, indications), is also named ``dosing_range_rematched``
(major), before and after being the two ranges of that place. An unchanged range moved elsewhere
never is (a reordering is no change); a range moved and reworded is (the net cannot tell it from
stages whose labels and doses were both rewritten, which is what it is for). A pair with a major change
of its own is left to it (found in review: both stages given one cap while their doses swapped named
the caps, not the swap).

A diff compares two stored documents, not what changes for patients: between neighbouring versions it
does not say what a version puts into effect when the earlier one is scheduled for later, a draft, or
corrected back-dated (re-sending a scheduled dose raise with no ``effective_from`` puts it in effect
now, and reads as an ``effective_from_changed``, minor). To review what a version changes for
patients, diff it against the version in effect just before its ``effective_from`` (an ``as_of`` read
names it). Everything here is a pure function of two documents.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import jsonpatch

from protocols.dose_units import UnitError, parse_dose_unit
from protocols.dosing import Span, convert, fmt
from protocols.durations import parse_duration
from protocols.terminology import ROUTES

MAJOR = "major"
MODERATE = "moderate"
MINOR = "minor"
SEVERITIES = (MAJOR, MODERATE, MINOR)

#: Every change type and its severity.
CHANGE_TYPES: dict[str, str] = {
    "status_changed": MAJOR,
    "drug_changed": MAJOR,
    "indication_added": MAJOR,
    "indication_removed": MAJOR,
    "route_added": MAJOR,
    "route_removed": MAJOR,
    "dosing_range_added": MAJOR,
    "dosing_range_removed": MAJOR,
    "dosing_range_rematched": MAJOR,
    "dose_min_increased": MAJOR,
    "dose_min_decreased": MAJOR,
    "dose_max_increased": MAJOR,
    "dose_max_decreased": MAJOR,
    "unit_changed": MAJOR,
    "frequency_changed": MAJOR,
    "max_per_period_changed": MAJOR,
    "absolute_max_changed": MAJOR,
    "duration_changed": MAJOR,
    "indications_changed": MAJOR,
    "fda_status_changed": MODERATE,
    "rems_changed": MODERATE,
    "boxed_warning_changed": MODERATE,
    "dea_schedule_changed": MODERATE,
    "instructions_changed": MODERATE,
    "frequency_text_changed": MODERATE,
    "approval_details_changed": MINOR,
    "effective_from_changed": MINOR,
    "sources_changed": MINOR,
    "text_changed": MINOR,
}


@dataclass(frozen=True)
class ClinicalChange:
    """One change in clinical terms. ``path`` is a JSON Pointer into version b (into version a for
    something removed); ``route``/``phase`` name the dosing range a dosing change belongs to."""

    type: str
    path: str
    before: Any
    after: Any
    description: str
    route: str | None = None
    phase: str | None = None

    @property
    def severity(self) -> str:
        return CHANGE_TYPES[self.type]

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "severity": self.severity, "path": self.path, "before": self.before,
                "after": self.after, "description": self.description, "route": self.route,
                "phase": self.phase}


@dataclass(frozen=True)
class VersionDiff:
    patch: list[dict[str, Any]]
    changes: list[ClinicalChange]

    @property
    def highest_severity(self) -> str | None:
        return self.changes[0].severity if self.changes else None

    def counts(self) -> dict[str, int]:
        return {severity: sum(1 for c in self.changes if c.severity == severity) for severity in SEVERITIES}


def diff_documents(a: Mapping[str, Any], b: Mapping[str, Any]) -> VersionDiff:
    """Patch and clinical changes that turn document ``a`` into document ``b``."""
    return VersionDiff(json_patch(a, b), clinical_changes(a, b))


def json_patch(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations turning ``a`` into ``b``."""
    operations: list[dict[str, Any]] = jsonpatch.make_patch(dict(a), dict(b)).patch
    return operations


def clinical_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[ClinicalChange]:
    """Typed changes, most severe first; within a severity, in document order: the record's fields in
    the order of this function, and dosing changes by their range's position (removed ranges first, by
    their position in ``a``, then the others by theirs in ``b``), not grouped by route and phase (found
    by a probe: /dosing_ranges/0, /3, /1, /2)."""
    changes = [
        *_meta(a, b),
        *_drug(a.get("drug") or {}, b.get("drug") or {}),
        *_codings(a, b, "indications", lambda i: (i.get("system"), str(i.get("code", "")).upper()),
                  "indication_added", "indication_removed", "indication"),
        *_codings(a, b, "routes", lambda r: r.get("code"), "route_added", "route_removed", "route"),
        *_dosing(a.get("dosing_ranges") or [], b.get("dosing_ranges") or []),
        *_approval(a.get("fda_approval") or {}, b.get("fda_approval") or {}),
        *_texts(a, b),
    ]
    order = {severity: index for index, severity in enumerate(SEVERITIES)}
    return sorted(changes, key=lambda change: order[change.severity])


# ----------------------------------------------------------------------------------- helpers


def _number(value: Any) -> Decimal:
    return Decimal(str(value))


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def _quoted(text: Any) -> str:
    return "none" if text is None else f'"{text}"'


def _route_name(code: str | None) -> str:
    concept = ROUTES.get(code or "")
    return f"{concept.display.lower()} ({code})" if concept else f"route {code}"


def _duration(value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _duration_equal(x: str | None, y: str | None) -> bool:
    """P1W equals P7D: compare lengths, falling back to text for anything unparsable."""
    dx, dy = _duration(x), _duration(y)
    return (dx == dy) if dx is not None and dy is not None else x == y


# ---------------------------------------------------------------------------------- sections


def _meta(a: Mapping[str, Any], b: Mapping[str, Any]) -> Iterator[ClinicalChange]:
    if a.get("status") != b.get("status"):
        yield ClinicalChange("status_changed", "/status", a.get("status"), b.get("status"),
                             f"Status changed from {a.get('status')} to {b.get('status')}")
    if a.get("effective_from") != b.get("effective_from"):
        yield ClinicalChange("effective_from_changed", "/effective_from", a.get("effective_from"),
                             b.get("effective_from"),
                             f"Takes effect at {b.get('effective_from')} instead of {a.get('effective_from')}")


def _drug(a: Mapping[str, Any], b: Mapping[str, Any]) -> Iterator[ClinicalChange]:
    for name in ("name", "rxnorm_cui"):
        if a.get(name) != b.get(name):
            yield ClinicalChange("drug_changed", f"/drug/{name}", a.get(name), b.get(name),
                                 f"Drug {name} changed from {_show(a.get(name))} to {_show(b.get(name))}")
    if a.get("dea_schedule") != b.get("dea_schedule"):
        yield ClinicalChange("dea_schedule_changed", "/drug/dea_schedule", a.get("dea_schedule"),
                             b.get("dea_schedule"),
                             f"DEA schedule changed from {_show(a.get('dea_schedule'))} to "
                             f"{_show(b.get('dea_schedule'))}")
    if (a.get("brand_names") or []) != (b.get("brand_names") or []):
        yield ClinicalChange("text_changed", "/drug/brand_names", a.get("brand_names"), b.get("brand_names"),
                             "Brand names changed")


def _codings(a: Mapping[str, Any], b: Mapping[str, Any], field: str, key: Callable[[Any], Any],
             added: str, removed: str, noun: str) -> Iterator[ClinicalChange]:
    before = {key(item): (index, item) for index, item in enumerate(a.get(field) or [])}
    after = {key(item): (index, item) for index, item in enumerate(b.get(field) or [])}
    for item_key, (index, item) in before.items():
        if item_key not in after:
            yield ClinicalChange(removed, f"/{field}/{index}", item, None,
                                 f"{noun.capitalize()} removed: {item.get('code')} {item.get('display')}")
    for item_key, (index, item) in after.items():
        if item_key not in before:
            yield ClinicalChange(added, f"/{field}/{index}", None, item,
                                 f"{noun.capitalize()} added: {item.get('code')} {item.get('display')}")
        elif before[item_key][1].get("display") != item.get("display"):
            old = before[item_key][1].get("display")
            yield ClinicalChange("text_changed", f"/{field}/{index}/display", old, item.get("display"),
                                 f"Display text of {noun} {item.get('code')} changed")
    # The codes both versions hold, in another order: in the patch (moves), so named here, as a reordering
    # of brand names or sources is (found by a probe: reversed indications were only in the patch).
    if [k for k in before if k in after] != [k for k in after if k in before]:
        which = "the same codes" if before.keys() == after.keys() else "the codes kept"
        yield ClinicalChange("text_changed", f"/{field}", a.get(field), b.get(field),
                             f"{field.capitalize()} reordered ({which})")


def _dosing_groups(ranges: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, Any], list[tuple[int, Mapping[str, Any]]]]:
    groups: dict[tuple[Any, Any], list[tuple[int, Mapping[str, Any]]]] = {}
    for index, item in enumerate(ranges):
        groups.setdefault((item.get("route"), item.get("phase")), []).append((index, item))
    return groups


def _dosing(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> Iterator[ClinicalChange]:
    """The dosing changes in document order: removed ranges by their position in ``a`` (their paths point
    there), then every other range's changes by its position in ``b``. Grouped by route and phase, they
    came as /dosing_ranges/0, /3, /1, /2 (found by a probe). A range paired away from its position
    without a major change of its own, whose position changed a dose, also gets :func:`_rematched`."""
    before, after = _dosing_groups(a), _dosing_groups(b)
    paired = {key: _pair(before.get(key, []), after.get(key, []), *key) for key in {*before, *after}}
    removed = sorted((index, item, route, phase) for (route, phase) in before
                     for index, item in paired[(route, phase)][1])
    for index, item, route, phase in removed:
        yield ClinicalChange("dosing_range_removed", f"/dosing_ranges/{index}", item, None,
                             f"Dosing range removed: {_route_name(route)}, {phase} phase", route, phase)
    kept: list[tuple[int, list[ClinicalChange]]] = []
    for route, phase in after:
        pairs, _, added = paired[(route, phase)]
        for (old_index, old), (index, item) in pairs:
            changes = list(_dose_range(old, item, f"/dosing_ranges/{index}", route, phase))
            kept.append((index, [*_rematched(before.get((route, phase), []), after[(route, phase)], old_index,
                                             (index, item), changes, route, phase), *changes]))
        kept += [(index, [ClinicalChange("dosing_range_added", f"/dosing_ranges/{index}", None, item,
                                         f"Dosing range added: {_route_name(route)}, {phase} phase: "
                                         f"{item.get('dose_min')}-{item.get('dose_max')} {item.get('unit')}",
                                         route, phase)])
                 for index, item in added]
    for _, changes in sorted(kept, key=lambda entry: entry[0]):
        yield from changes


def _rematched(old_group: Sequence[_Indexed], new_group: Sequence[_Indexed], old_index: int, new: _Indexed,
               changes: list[ClinicalChange], route: Any, phase: Any) -> list[ClinicalChange]:
    """The safety net under the pairing: the k-th range of a route and phase in version b, paired with
    another range than the k-th of that route and phase in version a, with no major change named, while
    that k-th range of version a differs from it in a dose-bearing field (a major change of
    :func:`_dose_range`: doses, unit, frequency, per-period or absolute maximum, duration, indications).
    Where the stages kept their order, the patch shows that dose change; a change list naming only wording
    there read as ``moderate`` (found in review: every stage's text reworded in the revision that moved
    doses between the stages). One major ``dosing_range_rematched`` says which range it was matched to and
    what its doses are against the range that stood in its place, so that severity is major. Places are
    counted within the route and phase (a review: by positions in the whole list, a range of another phase
    moved in front of the group turned the net off).

    An unchanged range (no change at all, a twin) moved to another place is exempt: it is the same range,
    its identity and doses together, so nothing about it can hide (a reordering stays change-free). A pair
    with a major change of its own is exempt too, its severity already major (its other fields are then
    named as their own changes, or not at all if the pairing put them elsewhere: the net does not check)."""
    index, item = new
    place = next(k for k, (i, _) in enumerate(new_group) if i == index)
    if place >= len(old_group) or not changes or any(c.severity == MAJOR for c in changes):
        return []
    there_index, there = old_group[place]
    if there_index == old_index:
        return []
    moved = [c for c in _dose_range(there, item, "", route, phase, located=False) if c.severity == MAJOR]
    if not moved:
        return []
    against = "; ".join(c.description[:1].lower() + c.description[1:] for c in moved)
    return [ClinicalChange(
        "dosing_range_rematched", f"/dosing_ranges/{index}", there, item,
        f"This range was matched to range {old_index} of version a by what it is for (its indications, "
        f"frequency text and instructions), then its doses, not to range {there_index} of version a, which "
        f"stood in its place among the {_route_name(route)} {phase} ranges; compared with that range: "
        f"{against}. Check which stage or population each range is for", route, phase)]


_Indexed = tuple[int, Mapping[str, Any]]
_Pairs = list[tuple[_Indexed, _Indexed]]


def _pair(old: list[_Indexed], new: list[_Indexed], route: Any, phase: Any) -> tuple[
        _Pairs, list[_Indexed], list[_Indexed]]:
    """The ranges of one route and phase, matched old to new: ``(pairs, removed, added)``.

    A phase's ranges are in no meaningful order: a range that is still there, unchanged, is matched
    wherever it now stands (matched by position, two swapped ranges read as four "major" dose changes).
    The ranges left over are matched with the least total :func:`_distance` (:func:`_closest_pairs`: unit,
    then identity, then content): matched in order, removing the 56 mg option of [56 mg, 84 mg] while
    annotating the 84 mg one read as "56 mg raised to 84 mg" and "84 mg removed"."""
    unmatched = list(old)
    twins: _Pairs = []
    rest: list[_Indexed] = []
    for index, item in new:
        twin = next((candidate for candidate in unmatched
                     if not any(_dose_range(candidate[1], item, "", route, phase))), None)
        if twin is None:
            rest.append((index, item))
        else:
            unmatched.remove(twin)
            twins.append((twin, (index, item)))
    old_stages, new_stages = _stages(unmatched), _stages(rest)
    letters = {text: _letter_pairs(text) for _, item in unmatched + rest for text in _identity(item)[1:]
               if isinstance(text, str)}
    cost = [[_distance(o, n, route, phase, abs(so - sn), letters)
             for (_, n), sn in zip(rest, new_stages, strict=True)]
            for (_, o), so in zip(unmatched, old_stages, strict=True)]
    chosen = _closest_pairs(cost)
    paired_old, paired_new = {i for i, _ in chosen}, {j for _, j in chosen}
    pairs = twins + [(unmatched[i], rest[j]) for i, j in chosen]
    removed = [item for i, item in enumerate(unmatched) if i not in paired_old]
    added = [item for j, item in enumerate(rest) if j not in paired_new]
    return pairs, removed, added


def _stages(ranges: list[_Indexed]) -> list[int]:
    """Each range's ordinal position within its route and phase, counted in identities (:func:`_identity`):
    the n-th stage or population the ranges name, in document order. Alternatives (equal identities) share
    one, so their order stays meaningless (paired by position, [56 mg, 84 mg] -> [84 mg, annotated] read
    as "56 mg raised to 84 mg"; found by a probe)."""
    numbers: dict[tuple[frozenset[str] | None, Any, Any], int] = {}
    return [numbers.setdefault(_identity(item), len(numbers)) for _, item in ranges]


def _closest_pairs(cost: Sequence[Sequence[tuple[int, ...]]]) -> list[tuple[int, int]]:
    """As many (old, new) index pairs as the smaller side has, with the least total cost, costs compared
    as tuples (lexicographically, each part summed over the pairing); ties keep document order (of equal
    pairings, the one giving the first old range the first new range it can, then the second, ...).
    Every leftover range on the larger side is a removal or an addition: only *which* ranges pair changes.

    Solved exactly (:func:`_assignment`, Kuhn-Munkres) on integers: each tuple, with its document-order
    tie-break as its last part, becomes one integer by weights larger than any sum of the lower parts
    (:func:`_weights`), so the least integer total is the least tuple total. An exhaustive search (up to
    720 pairings) and a greedy one beyond it (closest pair first) came before: greedy paired stages
    crosswise from 4 ranges against 7 on and hid their dose changes (found in review)."""
    transposed = len(cost) > len(cost[0]) if cost else False
    matrix = [list(line) for line in (zip(*cost, strict=True) if transposed else cost)]
    if not matrix or not matrix[0]:
        return []
    rows, columns = len(matrix), len(matrix[0])
    # The exhaustive search took the first least pairing, enumerated row by row: lexicographically least
    # columns, written as one base-`columns` number with row 0's column its leading digit.
    keyed = [[(*matrix[i][j], j * columns ** (rows - 1 - i)) for j in range(columns)] for i in range(rows)]
    weights = _weights(keyed, rows)
    assigned = _assignment([[sum(w * part for w, part in zip(weights, parts, strict=True)) for parts in row]
                            for row in keyed])
    return sorted((j, i) if transposed else (i, j) for i, j in enumerate(assigned))


def _weights(keyed: list[list[tuple[int, ...]]], pairs: int) -> list[int]:
    """Weights turning cost tuples of non-negative integers into integers whose sums over ``pairs`` pairs
    order as the tuples' sums do lexicographically: a part's weight exceeds the largest sum all lower parts
    can reach (each lower part's weight times ``pairs`` times its largest value, plus one)."""
    width = len(keyed[0][0])
    weights = [1] * width
    for part in range(width - 2, -1, -1):
        largest = max(parts[part + 1] for row in keyed for parts in row)
        weights[part] = weights[part + 1] * (pairs * largest + 1)
    return weights


def _assignment(cost: list[list[int]]) -> list[int]:
    """The minimum-cost assignment of each row to its own column (rows <= columns), as each row's column:
    the Hungarian method (Kuhn-Munkres) with potentials, O(rows^2 * columns), exact on integers. For an
    optimum that is unique (as :func:`_closest_pairs` makes it) it returns that optimum."""
    rows, columns = len(cost), len(cost[0])
    u, v = [0] * (rows + 1), [0] * (columns + 1)
    owner, way = [0] * (columns + 1), [0] * (columns + 1)  # owner[j]: the row (1-based) holding column j
    for row in range(1, rows + 1):
        owner[0], free = row, 0
        least: list[float] = [math.inf] * (columns + 1)
        used = [False] * (columns + 1)
        while owner[free]:
            used[free] = True
            current, delta, nearest = owner[free], math.inf, 0
            for j in range(1, columns + 1):
                if not used[j]:
                    reduced = cost[current - 1][j - 1] - u[current] - v[j]
                    if reduced < least[j]:
                        least[j], way[j] = reduced, free
                    if least[j] < delta:
                        delta, nearest = least[j], j
            step = int(delta)  # finite: a free column is left while rows <= columns
            for j in range(columns + 1):
                if used[j]:
                    u[owner[j]] += step
                    v[j] -= step
                else:
                    least[j] -= step
            free = nearest
        while free:
            previous = way[free]
            owner[free] = owner[previous]
            free = previous
    assigned = [0] * rows
    for j in range(1, columns + 1):
        if owner[j]:
            assigned[owner[j] - 1] = j - 1
    return assigned


#: The changes of a range's identity (:func:`_identity`), counted by :func:`_distance` as identity, not
#: again as kinds of change.
_IDENTITY_CHANGES = frozenset({"indications_changed", "frequency_text_changed", "instructions_changed"})

#: Likeness is counted in millionths (exact integers, so a pairing's total is exact).
_UNLIKE = 10**6
#: A bound's move on a log scale, counted in billionths; one beyond a float's range counts as _FARTHEST.
_MOVED_SCALE = 10**9
_FARTHEST = 1e6


def _identity(dose_range: Mapping[str, Any]) -> tuple[frozenset[str] | None, Any, Any]:
    """Who and when a range of a route and phase is for: the indications it is for (as a set; None, absent,
    is for every indication), its frequency text ("once weekly, weeks 5-8") and its instructions. Two
    ranges that differ in these are not alternatives: they serve other patients or other weeks."""
    codes = dose_range.get("indications")
    frequency = dose_range.get("frequency") or {}
    return (None if codes is None else frozenset(map(str, codes)), frequency.get("text"),
            dose_range.get("instructions"))


def _unlike_codes(x: frozenset[str] | None, y: frozenset[str] | None) -> int:
    """How unlike two ranges' indications are, 0 to :data:`_UNLIKE`: the share of codes only one names
    (Jaccard distance); absent (every indication) is wholly unlike any list."""
    if x == y:
        return 0
    if x is None or y is None:
        return _UNLIKE
    return _UNLIKE - _UNLIKE * len(x & y) // len(x | y)


def _unlike_texts(x: Any, y: Any, letters: Mapping[str, frozenset[str]]) -> int:
    """How unlike two texts are, 0 to :data:`_UNLIKE`: one minus the Dice coefficient of their letter
    pairs (:func:`_letter_pairs`, looked up in ``letters``: each text's are made once per diff), twice the
    pairs both hold over the pairs of each, in exact integers; a text against none is wholly unlike.
    "weeks 5-8" is nearer "weeks 5 to 8" than "from week 9". Why not difflib's ratio: it compares each
    two texts run by run, and 20 reworded ranges of one phase (800 comparisons) took 25 ms of a 50 ms
    diff; this takes about 1 ms."""
    if x == y:
        return 0
    if not isinstance(x, str) or not isinstance(y, str):
        return _UNLIKE
    first, second = letters[x], letters[y]
    return _UNLIKE - 2 * _UNLIKE * len(first & second) // (len(first) + len(second))


def _letter_pairs(text: str) -> frozenset[str]:
    """The pairs of neighbouring letters of a text, case folded and framed (so a one-letter text has
    two, and a text's first and last letters count as much as the others)."""
    framed = f"\x00{text.casefold()}\x00"
    return frozenset(framed[i:i + 2] for i in range(len(framed) - 1))


def _distance(a: Mapping[str, Any], b: Mapping[str, Any], route: Any, phase: Any, stage_gap: int,
              letters: Mapping[str, frozenset[str]]) -> tuple[int, int, int, int, int, int]:
    """How far apart two ranges are, as integers compared in order: whether their units differ (first, so
    that a range is never paired across units while one in its own unit is left: raising both maxima of
    [10-20 mg, 1-2 mg/kg] read as two unit changes; found by a probe), how many marks of their identity
    differ (:func:`_identity`), how unlike the differing marks are (likeness of the frequency texts and
    instructions, by their ``letters``; overlap of the indications), how far apart their stages stand (``stage_gap``, of
    :func:`_stages`), the other kinds of change between them (a rewording counts for nothing), then, in the
    same unit, how far their bounds moved (on a log scale, so 28 -> 56 mg is as far as 56 -> 112 mg).

    Identity comes before the doses (found by a probe): two maintenance ranges told apart only by their
    frequency text ("weeks 5-8", "week 9 onwards"), their instructions or their indications (F33.2,
    R45.851), whose doses were swapped, were paired crosswise at no cost but wording, so the diff named
    no dose change (minor, or only indications_changed) while the patch replaced dose_min and dose_max.
    Counting the marks alone was not enough (found in review): with every stage's text reworded ("weeks
    5-8" -> "weeks 5 to 8", "week 9 onwards" -> "from week 9") every pairing differed by as many marks, and
    the tie fell to the doses, crosswise again. So for ranges whose identities differ, the doses come last:
    they rank only true alternatives (equal identities; their likeness and stage gap count as nothing)."""
    kinds = {change.type for change in _dose_range(a, b, "", route, phase)
             if change.type != "text_changed" and change.type not in _IDENTITY_CHANGES}
    (codes_a, text_a, notes_a), (codes_b, text_b, notes_b) = _identity(a), _identity(b)
    marks = (codes_a != codes_b) + (text_a != text_b) + (notes_a != notes_b)
    unlike = (_unlike_codes(codes_a, codes_b) + _unlike_texts(text_a, text_b, letters)
              + _unlike_texts(notes_a, notes_b, letters))
    moved = 0.0
    if a.get("unit") == b.get("unit"):
        for bound in ("dose_min", "dose_max"):
            try:
                low, high = float(_number(a.get(bound))), float(_number(b.get(bound)))
                step = abs(math.log(high / low)) if low > 0 and high > 0 else float(low != high)
            except (ArithmeticError, ValueError, TypeError):  # a bound missing or not a number
                step = 1.0
            moved += step if math.isfinite(step) else _FARTHEST  # beyond a float: as far as is counted
    # The texts' likeness before the stages' order: it pairs stages that were reordered as well as reworded
    # by what they say. Its cost (a review): likeness of whole texts is swayed by shared words ("once
    # weekly, week ..."), so rewording labels alone can pair stages crosswise and name dose changes that are
    # not there, which a reviewer can dismiss. Ranking the order first would hide a dose change where stages
    # were reordered, reworded and given each other's doses (each place would keep its doses).
    return (int(a.get("unit") != b.get("unit")), marks, unlike, stage_gap if marks else 0, len(kinds),
            round(moved * _MOVED_SCALE))


def _dose_range(a: Mapping[str, Any], b: Mapping[str, Any], path: str, route: Any,
                phase: Any, *, located: bool = True) -> Iterator[ClinicalChange]:
    """The changes of one range (``located``: each description ends naming its route and phase)."""
    where = f" ({_route_name(route)}, {phase} phase)" if located else ""

    def change(kind: str, sub: str, old: Any, new: Any, description: str) -> ClinicalChange:
        return ClinicalChange(kind, f"{path}{sub}", old, new, f"{description}{where}", route, phase)

    if a.get("unit") != b.get("unit"):
        old = {k: a.get(k) for k in ("dose_min", "dose_max", "unit")}
        new = {k: b.get(k) for k in ("dose_min", "dose_max", "unit")}
        yield change("unit_changed", "/unit", old, new,
                     f"Dose unit changed from {a.get('unit')} to {b.get('unit')}: "
                     f"{_bounds(a)} became {_bounds(b)}; {_unit_change_meaning(a, b)}")
    else:
        for bound, label in (("dose_min", "Minimum dose"), ("dose_max", "Maximum dose")):
            old_value, new_value = a.get(bound), b.get(bound)
            if old_value is None or new_value is None:
                continue
            if _number(old_value) == _number(new_value):
                if str(old_value) != str(new_value):  # 84 -> 84.0: in the patch, so named here
                    yield change("text_changed", f"/{bound}", old_value, new_value,
                                 f"{label} rewritten as {new_value} (same value)")
                continue
            direction = "increased" if _number(new_value) > _number(old_value) else "decreased"
            verb = "raised" if direction == "increased" else "lowered"
            yield change(f"{bound}_{direction}", f"/{bound}", old_value, new_value,
                         f"{label} {verb} from {old_value} to {new_value} {b.get('unit')}")
    yield from _frequency(a.get("frequency"), b.get("frequency"), change)
    for name, label in (("duration", "Administration duration"), ("duration_min", "Shortest administration time")):
        if not _duration_equal(a.get(name), b.get(name)):
            yield change("duration_changed", f"/{name}", a.get(name), b.get(name),
                         f"{label} changed from {_show(a.get(name))} to {_show(b.get(name))}")
        elif a.get(name) != b.get(name):
            yield change("text_changed", f"/{name}", a.get(name), b.get(name),
                         f"{label} rewritten with the same length")
    yield from _max_per_period(a.get("max_per_period"), b.get("max_per_period"), change)
    yield from _absolute_max(a.get("absolute_max"), b.get("absolute_max"), change)
    yield from _range_indications(a.get("indications"), b.get("indications"), change)
    if a.get("instructions") != b.get("instructions"):
        yield change("instructions_changed", "/instructions", a.get("instructions"), b.get("instructions"),
                     "Administration instructions changed")


def _unit_change_meaning(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """What a range rewritten in another unit means for the dose: in units of one kind (56-84 mg as
    56000-84000 ug, mg/kg/h as ug/kg/min) its bounds are converted exactly (``dosing.convert``) and
    compared, shown as dose checks show them (``dosing.fmt``: "≈" when rounded, rounded away from the
    old bound); otherwise (mg against mg/kg, mass against volume) the numbers are not comparable. The
    change stays a major ``unit_changed`` either way: a thousandfold slip hides in exactly such a
    rewrite. Its text said "not comparable" for mg against ug too (found by an adversarial probe)."""
    to_old = _converter(b.get("unit"), a.get("unit"))
    if to_old is None:
        return "the numbers are not comparable"
    verdicts = []
    for bound, label in (("dose_min", "minimum"), ("dose_max", "maximum")):
        old_value, new_value = a.get(bound), b.get(bound)
        if old_value is None or new_value is None:
            continue
        old_amount, converted = Fraction(_number(old_value)), to_old(new_value)
        if converted != old_amount:
            verdicts.append(f"the {label} {_moved(old_amount, converted, a.get('unit'))}")
    return "the same doses" if not verdicts else f"in {a.get('unit')}: " + " and ".join(verdicts)


def _converter(unit: Any, target: Any) -> Callable[[Any], Fraction] | None:
    """Exact conversion of a value in ``unit`` to ``target`` when both are dose units of one kind (mass
    or volume, per kg or not, rate or not: ``dosing.convert``), else None: not comparable."""
    try:
        source, wanted = parse_dose_unit(str(unit)), parse_dose_unit(str(target))
    except UnitError:
        return None
    if (source.kind, source.per_kg, source.is_rate) != (wanted.kind, wanted.per_kg, wanted.is_rate):
        return None
    return lambda value: convert(Fraction(_number(value)), source, wanted, weight_kg=None, concentration=None,
                                 duration_s=None)


def _moved(old: Fraction, new: Fraction, unit: Any) -> str:
    """"raised to 840 mg": where a converted value went from ``old``, shown as dose checks show it."""
    return f"{'raised' if new > old else 'lowered'} to {fmt(new, against=old)} {unit}"


def _bounds(dose_range: Mapping[str, Any]) -> str:
    """A range's bounds as dose checks show them (``dosing.Span``), never in exponent form joined by
    a hyphen ("1e-09-2e-09 Mg" read as a subtraction; found by an adversarial probe)."""
    low, high = dose_range.get("dose_min"), dose_range.get("dose_max")
    if low is None or high is None:
        return f"{_show(low)}-{_show(high)} {dose_range.get('unit')}"
    return Span(Fraction(_number(low)), Fraction(_number(high)), str(dose_range.get("unit"))).text()


_Change = Callable[[str, str, Any, Any, str], ClinicalChange]


def _frequency(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, change: _Change) -> Iterator[ClinicalChange]:
    def shown(f: Mapping[str, Any] | None) -> str:
        if f is None:
            return "none"
        return f"{f.get('count')} per {f.get('period')}" + (f" to {f['period_max']}" if f.get("period_max") else "")

    if a is None or b is None:
        if a != b:
            yield change("frequency_changed", "/frequency", a, b,
                         f"Frequency changed from {shown(a)} to {shown(b)}")
        return
    if (a.get("count") != b.get("count") or not _duration_equal(a.get("period"), b.get("period"))
            or not _duration_equal(a.get("period_max"), b.get("period_max"))):
        yield change("frequency_changed", "/frequency", a, b, f"Frequency changed from {shown(a)} to {shown(b)}")
        return
    if a.get("period_max") != b.get("period_max"):
        yield change("text_changed", "/frequency/period_max", a.get("period_max"), b.get("period_max"),
                     "Longest frequency period rewritten with the same length")
    # Every field of the patch is named in the changes, as for max_per_period (found by a probe:
    # P1W -> P7D was in the patch and nowhere in the changes).
    if a.get("period") != b.get("period"):
        yield change("text_changed", "/frequency/period", a.get("period"), b.get("period"),
                     "Frequency period rewritten with the same length")
    if a.get("text") != b.get("text"):
        # What a clinician reads as the frequency (FHIR Timing.code.text; dose checks quote it as "the
        # protocol's"): moderate, as instructions are, not a minor rewording (found by a probe).
        yield change("frequency_text_changed", "/frequency/text", a.get("text"), b.get("text"),
                     f"Frequency text changed from {_quoted(a.get('text'))} to {_quoted(b.get('text'))}")


def _per_period_text(m: Mapping[str, Any] | None) -> str:
    return "none" if m is None else f"{m.get('value')} {m.get('unit')} per {m.get('period')}"


def _quantity_text(m: Mapping[str, Any] | None) -> str:
    return "none" if m is None else f"{m.get('value')} {m.get('unit')}"


def _added_or_removed(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, change: _Change, kind: str,
                      field: str, label: str, shown: Callable[[Mapping[str, Any] | None], str]
                      ) -> Iterator[ClinicalChange]:
    """A range's optional limit that one version has and the other does not (or neither)."""
    if a != b:
        yield change(kind, f"/{field}", a, b, f"{label} changed from {shown(a)} to {shown(b)}")


def _max_per_period(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
                    change: _Change) -> Iterator[ClinicalChange]:
    shown = _per_period_text
    if a is None or b is None:
        yield from _added_or_removed(a, b, change, "max_per_period_changed", "max_per_period",
                                     "Maximum per period", shown)
        return
    if a.get("unit") != b.get("unit") or not _duration_equal(a.get("period"), b.get("period")):
        # Another unit over the same period is converted when it can be (0.084 g -> 840 mg per P1D, a
        # tenfold raise, read "not comparable", as did the same amount rewritten; found by a probe).
        to_old = _converter(b.get("unit"), a.get("unit")) if _duration_equal(a.get("period"), b.get("period")) else None
        old_value = Fraction(_number(a.get("value")))
        converted = to_old(b.get("value")) if to_old is not None else None
        meaning = ("the amounts are not comparable" if converted is None else
                   "the same amount" if converted == old_value else
                   f"in {a.get('unit')}: {_moved(old_value, converted, a.get('unit'))}")
        yield change("unit_changed", "/max_per_period", a, b,
                     f"Maximum per period changed from {shown(a)} to {shown(b)}; {meaning}")
        return
    if _number(a.get("value")) != _number(b.get("value")):
        verb = "raised" if _number(b.get("value")) > _number(a.get("value")) else "lowered"
        yield change("max_per_period_changed", "/max_per_period/value", a.get("value"), b.get("value"),
                     f"Maximum per period {verb} from {shown(a)} to {shown(b)}")
    elif str(a.get("value")) != str(b.get("value")):
        yield change("text_changed", "/max_per_period/value", a.get("value"), b.get("value"),
                     f"Maximum per period rewritten as {b.get('value')} (same value)")
    if a.get("period") != b.get("period"):  # every field of the patch is named (as for the frequency)
        yield change("text_changed", "/max_per_period/period", a.get("period"), b.get("period"),
                     "Per-period maximum period rewritten with the same length")


def _absolute_max(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None,
                  change: _Change) -> Iterator[ClinicalChange]:
    """A weight-based range's cap for heavy patients added, removed, or moved (converted when its unit
    changed within one kind: 25 mg/h -> 0.025 g/h is the same cap)."""
    shown = _quantity_text
    if a is None or b is None:
        yield from _added_or_removed(a, b, change, "absolute_max_changed", "absolute_max", "Absolute maximum", shown)
        return
    to_old = _converter(b.get("unit"), a.get("unit"))
    old_value = Fraction(_number(a.get("value")))
    converted = to_old(b.get("value")) if to_old is not None else None
    if converted is None or converted != old_value:
        meaning = ("not comparable" if converted is None else _moved(old_value, converted, a.get("unit")))
        yield change("absolute_max_changed", "/absolute_max", a, b,
                     f"Absolute maximum changed from {shown(a)} to {shown(b)} ({meaning})")
    elif a != b:
        yield change("text_changed", "/absolute_max", a, b,
                     f"Absolute maximum rewritten as {shown(b)} (the same amount)")


def _range_indications(a: Sequence[Any] | None, b: Sequence[Any] | None,
                       change: _Change) -> Iterator[ClinicalChange]:
    """The indications a range is for (absent: every indication of the record) changed: which patients the
    range's doses are for, so major, naming the codes added and removed. The same codes in another order
    are a minor rewrite (the patch holds it, so it is named)."""
    def shown(codes: Sequence[Any] | None) -> str:
        return "every indication of the record" if codes is None else ", ".join(str(c) for c in codes)

    if a == b:
        return
    what = [f"from {shown(a)} to {shown(b)}"]
    if a is not None and b is not None:
        before, after = set(map(str, a)), set(map(str, b))
        if before == after:
            yield change("text_changed", "/indications", a, b, "Indications of the range reordered (the same codes)")
            return
        added = [str(c) for c in b if str(c) not in before]
        removed = [str(c) for c in a if str(c) not in after]
        what += [f"{label} {', '.join(codes)}" for label, codes in (("added", added), ("removed", removed)) if codes]
    yield change("indications_changed", "/indications", a, b, f"Indications of the range changed {'; '.join(what)}")


def _approval(a: Mapping[str, Any], b: Mapping[str, Any]) -> Iterator[ClinicalChange]:
    if a.get("status") != b.get("status"):
        yield ClinicalChange("fda_status_changed", "/fda_approval/status", a.get("status"), b.get("status"),
                             f"FDA status changed from {_show(a.get('status'))} to {_show(b.get('status'))}")
    if bool(a.get("rems_required")) != bool(b.get("rems_required")):
        state = "now required" if b.get("rems_required") else "no longer required"
        yield ClinicalChange("rems_changed", "/fda_approval/rems_required", a.get("rems_required"),
                             b.get("rems_required"), f"REMS {state}")
    if a.get("boxed_warning") != b.get("boxed_warning"):
        if a.get("boxed_warning") is None:
            what = "Boxed warning added"
        elif b.get("boxed_warning") is None:
            what = "Boxed warning removed"
        else:
            what = "Boxed warning changed"
        yield ClinicalChange("boxed_warning_changed", "/fda_approval/boxed_warning", a.get("boxed_warning"),
                             b.get("boxed_warning"), what)
    for name in ("application_number", "approval_date"):
        if a.get(name) != b.get(name):
            yield ClinicalChange("approval_details_changed", f"/fda_approval/{name}", a.get(name), b.get(name),
                                 f"FDA {name.replace('_', ' ')} changed from {_show(a.get(name))} to "
                                 f"{_show(b.get(name))}")
    if a.get("approved_indication") != b.get("approved_indication"):
        yield ClinicalChange("text_changed", "/fda_approval/approved_indication", a.get("approved_indication"),
                             b.get("approved_indication"), "FDA approved-indication wording changed")


def _texts(a: Mapping[str, Any], b: Mapping[str, Any]) -> Iterator[ClinicalChange]:
    for name in ("title", "summary", "verification_notes"):
        if a.get(name) != b.get(name):
            yield ClinicalChange("text_changed", f"/{name}", a.get(name), b.get(name),
                                 f"{name.replace('_', ' ').capitalize()} changed")
    if a.get("sources") != b.get("sources"):
        yield ClinicalChange("sources_changed", "/sources", a.get("sources"), b.get("sources"),
                             "Sources changed")


def diff_etag(representation: bytes) -> str:
    """Strong ETag of a diff's representation: a hash of the bytes served.

    Why not of the two versions' ETags: the versions never change, but how they are compared does (a
    release that pairs ranges or names a change differently answers the same two versions with other
    changes and severities). Keyed by the versions, a client kept the older answer under the same
    strong validator, and its revalidation was a 304 (found by an adversarial probe)."""
    digest = hashlib.sha256(representation).hexdigest()[:16]
    return f'"diff-{digest}"'
