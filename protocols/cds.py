"""CDS Hooks dose checking, in the domain's terms: draft FHIR R4 MedicationRequests in, cards out.

Why here and not in ``api/``: judging each dose against the protocols in effect is a clinical rule the
HTTP layer only carries; ``api/cds_api.py`` parses the request, reads its orders and weight with
:mod:`protocols.draft_orders` (:func:`~protocols.draft_orders.draft_medication_requests`,
:func:`~protocols.draft_orders.prefetched_weight`), calls :func:`cards_for_orders`, and maps
:class:`~protocols.errors.MalformedOrder` to a 400.

For every draft order :mod:`protocols.draft_orders` reads the RxNorm codings of the medication, the route
(SNOMED CT, or an FDA SPL code read as SNOMED CT's) and the ``doseAndRate`` of each dosage instruction; this
module finds the protocols in effect for that medication *and* route (when the order carries ``reasonCode``
and some of those protocols list it as an indication, only those), and judges the dose against each range of
each protocol with :mod:`protocols.dosing`. An order has no phase, so every range for the route is evaluated
(only those for the indications its ``reasonCode`` names, when a range of the route is for one of them: a
range's ``indications``, ``dosing.ranges_for``) and the card reports the most favourable verdict with the
others listed in its detail. One card per dosage line and protocol; when the order did not say which protocol
it is for (no ``reasonCode``, or reasons none of them lists), each card's detail says so and names its
protocol's indications (and a breach beside another protocol's clean pass is a warning, :func:`_softening`). A
medication with protocols by other routes only gets one card saying so; one ordered without a route, or by one
that cannot be read, is judged as given by each route its protocols give (:func:`_as_every_route`);
orders of one medication in one call are each "partly checked" (their sum is not added up); orders
beyond the first :data:`MAX_DRAFT_ORDERS` with protocols are named on one card. Data the check needs
but lacks (no weight prefetched, a dose in mL without a strength) is a warning card, not an error,
because the order itself is fine.
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy.orm import Session

from protocols import dosing, draft_orders, search, terminology, versioning
from protocols.db import Database
from protocols.dose_units import UnitError, parse_dose_unit
from protocols.dosing import (
    FAVOURABLE_ORDER,
    DoseOrder,
    DosingError,
    Evaluation,
    Quantity,
    Verdict,
    convert,
    evaluate,
    fmt,
    ranges_for,
)
from protocols.draft_orders import NO_ROUTE, DosageLine, DraftOrder, Weight, per_kg
from protocols.timeutil import utcnow
from protocols.versioning import StoredVersion

#: CDS Hooks: a card's summary is a "<140-character" message: at most 139, counted in UTF-16 code units as
#: JavaScript and Java clients count them (a summary of exactly 140, or with characters outside the BMP,
#: was over for them; a conformance probe).
SUMMARY_LIMIT = 139
TOPIC_SYSTEM = "urn:treatment-protocols:protocol"

INDICATOR = {Verdict.WITHIN_RANGE: "info", Verdict.BELOW_MIN: "warning", Verdict.MORE_FREQUENT_THAN_PROTOCOL: "warning",
             Verdict.EXCEEDS_MAX_PER_PERIOD: "critical", Verdict.ABOVE_MAX: "critical"}
VERDICT_TEXT = {Verdict.WITHIN_RANGE: "within protocol range", Verdict.BELOW_MIN: "below protocol minimum",
                Verdict.MORE_FREQUENT_THAN_PROTOCOL: "more frequent than the protocol",
                Verdict.EXCEEDS_MAX_PER_PERIOD: "exceeds protocol maximum per period",
                Verdict.ABOVE_MAX: "above protocol maximum"}


#: The orders of one call that are judged, of those for medications with protocols: about 580 fit the
#: 256 KB body limit, and a call of 470 held a worker for 3 s and answered 3 MB, so a few of them (one
#: read key's worth of the rate limit) delayed every other client (a security probe). An order set signed
#: at once holds a few of these medications; orders beyond are named on one card, not judged. Orders of
#: other medications, and orders that only get a route card, do not count (they filled the budget and
#: pushed a 10 mg/kg order out; reviews).
MAX_DRAFT_ORDERS = 100


#: Builds the absolute URL of one protocol version (the HTTP layer knows its routes and host).
VersionUrl = Callable[[str, int], str]



# ----------------------------------------------------------------------------------- cards


Matched = tuple[StoredVersion, Mapping[str, Any]]


@dataclass
class LineMatch:
    """The protocols one dosage line of the call's ``index``-th order is judged against (``applicable``),
    why they may not be the ones it is for (``unscoped``, :func:`_unscoped`), and, when no protocol gives
    its route, the protocols in effect for its medication by other routes (``by_other_routes``)."""

    index: int
    order: DraftOrder
    line: DosageLine
    applicable: list[Matched]
    unscoped: str | None
    by_other_routes: list[Matched] = field(default_factory=list)
    #: For a line whose route is missing or unreadable, judged as given by one of its protocols' routes
    #: (:func:`_as_every_route`): the line as ordered, and every protocol for its medication.
    unread: tuple[DosageLine, list[Matched]] | None = None


#: How many orders a "not added up" note names; the rest are counted (300 orders named on each of 300
#: cards made a 2.5 MB answer; a review).
NAMED_ORDERS = 5


def cards_for_orders(db: Database, orders: Sequence[DraftOrder], weight: Weight | str, version_url: VersionUrl,
                     *, at: datetime | None = None) -> list[dict[str, Any]]:
    """The cards of one hook call: one per dosage line of each selected draft order and protocol in effect
    at one instant (``at``, default now) for its medication and route, read in one snapshot of the
    history; one "route not in any protocol" card per order and route whose medication has protocols only
    by other routes.

    Why one instant and one snapshot: the orders of one signing are one clinical decision. Judged one
    by one at their own "now" and each in its own read, two orders for the same drug signed together
    could be checked against different versions of its protocol, one just before a scheduled version
    takes effect and one after, or one before a correction committed mid-call and one after; the
    cards then contradict each other about the same dose. For the same reason each order is judged
    knowing the others: two orders of one medication are each "partly checked", since what they give
    together was not added up (two orders of 84 mg twice weekly each said "84 mg per day respected";
    found by a clinical probe)."""
    at = at or utcnow()
    matches: list[LineMatch] = []
    unjudged: list[int] = []
    judged = 0
    with versioning.snapshot(db) as session:
        # One query for the medications the call names that any version is indexed under, and each lookup
        # once per call: 580 orders of a medication with no protocol took 3.2 s in 1,160 lookups (a review).
        expanded = [set(terminology.order_rxnorm_codes(order.rxnorm)) for order in orders]
        known = search.indexed_rxnorm_codes(
            db, {code for order, codes in zip(orders, expanded, strict=True) if order.selected for code in codes},
            session=session)
        lookups: dict[tuple[Any, ...], list[Matched]] = {}
        route_only = 0
        for index, order in enumerate(orders):
            codes_known = tuple(sorted(known & expanded[index]))
            if not order.selected or not codes_known:
                continue  # no protocol for the medication: no card, and it does not count
            found = _order_matches(db, session, at, index, order, codes_known, lookups)
            if not any(m.applicable or m.by_other_routes for m in found):
                continue
            # Judged orders and orders with a route card alone have budgets of their own: 100 oral ketamine
            # orders pushed a 700 mg IV order out of one shared budget (a review).
            if any(m.applicable for m in found):
                if judged == MAX_DRAFT_ORDERS:
                    unjudged.append(index)
                    continue
                judged += 1
            else:
                if route_only == MAX_DRAFT_ORDERS:
                    unjudged.append(index)
                    continue
                route_only += 1
            matches.extend(found)
    together = _judged_together(orders, expanded)
    by_order: dict[int, list[LineMatch]] = {}
    for match in matches:
        by_order.setdefault(match.index, []).append(match)
    cards: list[dict[str, Any]] = []
    for mine in by_order.values():  # in the orders' order, as matched
        carded_routes: set[str] = set()
        for match in mine:  # an "ordered" and a "calculated" doseAndRate are one order by one route
            if not match.applicable and match.by_other_routes and match.line.route not in carded_routes:
                carded_routes.add(match.line.route)
                cards.append(_route_card(match, version_url))
        unread: dict[int, list[LineMatch]] = {}
        for match in mine:
            if match.unread is not None:
                unread.setdefault(id(match.unread[0]), []).append(match)
            else:
                cards.extend(_line_cards(match, weight, version_url, together))
        for judged_as in unread.values():
            cards.extend(_unread_route_cards(judged_as, weight, version_url, together))
    if unjudged:
        cards.append(_unjudged_orders_card(orders, unjudged))
    return cards


def _unjudged_orders_card(orders: Sequence[DraftOrder], unjudged: Sequence[int]) -> dict[str, Any]:
    """The card naming the orders (``unjudged``: their indexes) for medications with protocols beyond the
    :data:`MAX_DRAFT_ORDERS` a call judges: their doses were not checked."""
    total = len(orders)
    names = [_order_name(orders, index) for index in unjudged[:NAMED_ORDERS]]
    if len(unjudged) > NAMED_ORDERS:
        names.append(f"and {len(unjudged) - NAMED_ORDERS} more")
    noun = "order" if len(unjudged) == 1 else "orders"
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary("doses not checked", f"{len(unjudged)} {noun} beyond the first {MAX_DRAFT_ORDERS}",
                            f"of {total} in this call"),
        "detail": (f"This service judges the first {MAX_DRAFT_ORDERS} orders of one call for medications it has "
                   f"protocols for (and checks the routes of {MAX_DRAFT_ORDERS} more that no protocol gives by their "
                   f"route); {'this one was' if len(unjudged) == 1 else f'these {len(unjudged)} were'} not checked, "
                   f"nor added to the others: {markdown_text(', '.join(names))}. Check their doses by hand."),
        "indicator": "warning",
        "source": {"label": "Treatment protocols"},
    }


def _line_cards(match: LineMatch, weight: Weight | str, version_url: VersionUrl,
                together: Mapping[int, str]) -> list[dict[str, Any]]:
    """The cards of one dosage line, one per protocol it is checked against, with unscoped breaches
    softened where :func:`_softening` says so (those cards are built again, so that the reason stands
    in its place in the detail)."""
    line = _with_a_rate_its_amount_contradicts_named(match.line, weight)  # once per line, not per protocol

    def build(stored: StoredVersion, content: Mapping[str, Any], softened: str | None = None
              ) -> tuple[dict[str, Any], Verdict | None]:
        return _card(match.order, line, stored, content, weight, version_url, match.unscoped,
                     together.get(match.index), softened)

    built = [(stored, content, *build(stored, content)) for stored, content in match.applicable]
    softened = _softening(match, [(stored, card["indicator"], verdict) for stored, _, card, verdict in built])
    return [build(stored, content, softened[stored.protocol_id])[0] if stored.protocol_id in softened else card
            for stored, content, card, _ in built]


def _order_matches(db: Database, session: Session, at: datetime, index: int, order: DraftOrder,
                   codes: tuple[str, ...], lookups: dict[tuple[Any, ...], list[Matched]]) -> list[LineMatch]:
    """The protocols each dosage line of ``order`` (the call's ``index``-th, whose medication codes some
    version is indexed under are ``codes``) is judged against, in effect at ``at``.

    A lookup is made once per call for each (codes, route) (``lookups``) and narrowed by the order's
    reasons (:func:`search.narrowed_to`) once per route of the order: an order of 1,500 ``doseAndRate`` entries
    took 3.6-5.2 s repeating the same lookup (an adversarial probe), and 500 orders with a code or a
    reason of their own each made lookups of their own (a review). A route outside today's pick list is
    looked up too: a version stored when the list still held it would be missed (a review)."""
    def lookup(route: str | None) -> list[Matched]:
        key = (codes, route)
        if key not in lookups:
            lookups[key] = [(stored, json.loads(stored.document, parse_float=Decimal))
                            for stored in search.applicable_protocols(db, rxnorm_cuis=codes, route=route, at=at,
                                                                      session=session)]
        return search.narrowed_to(lookups[key], order.reasons)

    by_route: dict[str, tuple[list[Matched], str | None, list[Matched]]] = {}
    matches: list[LineMatch] = []
    for line in order.lines:
        if line.unread_route is not None:
            everything = lookup(None)
            as_given = _as_every_route(line, everything)
            if as_given:
                matches.extend(LineMatch(index, order, judged, applicable, _unscoped(order, applicable),
                                         unread=(line, everything)) for judged, applicable in as_given)
                continue
        if line.route not in by_route:
            applicable = lookup(line.route)
            by_route[line.route] = applicable, _unscoped(order, applicable), [] if applicable else lookup(None)
        matches.append(LineMatch(index, order, line, *by_route[line.route]))
    return matches


def _unread_route_cards(judged_as: list[LineMatch], weight: Weight | str, version_url: VersionUrl,
                        together: Mapping[int, str]) -> list[dict[str, Any]]:
    """The cards of one line whose route is missing or unreadable, judged as given by each route its
    protocols give (``judged_as``: one match per route): those cards when every one of them is critical
    (840 mg of Spravato a day, 20 mg/kg of ketamine: a breach by every route, whichever was meant), else
    one "route not read" card saying what each route's protocols made of the dose: critical when by some
    route every protocol calls it a breach (10 mg/kg of ketamine with no route: above every IV maximum,
    within the IM range; it read as a warning that named no breach, a review). Judged cards that disagreed
    put an epidural order's 100 mg "within protocol range" as IV, and a usual 2 mg/kg anaesthesia dose with
    no route got a critical card from the depression protocol (a review)."""
    first = judged_as[0]
    assert first.unread is not None
    line, everything = first.unread
    by_route: dict[str, list[dict[str, Any]]] = {}
    for match in judged_as:
        by_route.setdefault(match.line.route, []).extend(_line_cards(match, weight, version_url, together))
    cards = [card for judged in by_route.values() for card in judged]
    # An order with no route of a medication given by one route only (Spravato, a nasal spray) is read as
    # that route whatever its verdict: no other was meant. A route written but unreadable may be one no
    # protocol gives, and with several routes any of them may be meant: then only a breach by all counts.
    implied = line.unread_route == NO_ROUTE and len(judged_as) == 1
    if cards and (implied or all(card["indicator"] == "critical" for card in cards)):
        return cards
    card = _route_card(replace(first, line=line, applicable=[], by_other_routes=everything), version_url)
    breached = [route for route, judged in by_route.items() if judged and all(c["indicator"] == "critical"
                                                                            for c in judged)]
    lines = []
    for route, judged in by_route.items():
        known = terminology.ROUTES.get(route)
        verdicts = "; ".join(f"{c['summary'].split(': ')[0].removesuffix(', route not read')} "
                             f"({c['source']['topic']['code'].replace('/', ' v')})" for c in judged)
        lines.append(f"- As given by the {markdown_text(known.display.lower() if known else route)}: "
                     f"{markdown_text(verdicts or 'not judged')}")
    card["detail"] += "\n" + "\n".join(["What the protocols make of the dose, route by route:", *lines])
    # What the verdicts rest on, as the judged cards say it (a review: a critical card from a weight of 2012
    # said nothing of the weight, nor that another order of the medication was not added to it).
    context = []
    if isinstance(weight, Weight):
        observed = f"{fmt(weight.kg)} kg (observed {weight.observed()})"
        context.append(f"Body weight used: {observed}" + (f"; {weight.stale}" if weight.stale else "")
                       if weight.refused is None else f"Body weight prefetched: {observed}; not used: {weight.refused}")
    elif weight:
        context.append(f"No body weight: {weight}")
    if together.get(first.index):
        context.append(f"Not checked: {together[first.index]}")
    card["detail"] += "".join(f"\n{markdown_text(text)}." for text in context)
    if breached:
        names = " or ".join((terminology.ROUTES[r].display.lower() if r in terminology.ROUTES else r)
                            for r in breached)
        card["indicator"] = "critical"
        card["summary"] = _summary(f"route not read, a breach if {names}", f"{first.order.medication} {line.label}",
                                   _protocols_label(everything))
    return [card]


def _as_every_route(line: DosageLine, found: list[Matched]) -> list[tuple[DosageLine, list[Matched]]]:
    """A line whose route is missing or could not be read, judged as given by each route the protocols in
    ``found`` (its medication's, by any route) give, with the protocols that give it: one line per route,
    each "partly checked" and saying which route it was judged as. A card saying only "route not read"
    left 840 mg of Spravato a day (a nasal spray, one route) and 20 mg/kg of ketamine (above the maximum
    by every route) unchecked (a clinical probe); FHIR's ``Dosage.route`` is optional."""
    routes: dict[str, list[Matched]] = {}
    for matched in found:
        for route in matched[1].get("routes") or []:
            code = str(route.get("code") or "")
            if code and matched not in routes.setdefault(code, []):
                routes[code].append(matched)
    judged = []
    unread = ("the order gives no route" if line.unread_route == NO_ROUTE
              else f"the order's route ({line.unread_route}) could not be read")
    for code, applicable in routes.items():
        known = terminology.ROUTES.get(code)
        as_route = f"the {known.display.lower()} ({code})" if known else f"route {code}"
        others = ("the route its protocols give" if len(routes) == 1 else
                  f"one of the {len(routes)} routes its protocols give, by each of which it breaks a maximum")
        note = f"{unread}, so the dose was judged as given by {as_route}, {others}"
        judged.append((replace(line, route=code, unchecked=[*line.unchecked, note]), applicable))
    return judged


def _judged_together(orders: Sequence[DraftOrder], codes: Sequence[set[str]]) -> dict[int, str]:
    """For each order of the call that another order is for the same medication as (their ``codes``,
    read as the catalog reads them, :func:`terminology.order_rxnorm_codes`, share one), the note
    its cards carry, by order index: every order is judged alone, so their sum is not. Every order
    counts, unselected order-select drafts (signed with the others) and orders by a route no protocol
    gives included. By medication, not by protocol: ketamine 35 mg IV for depression and 24.5 mg/h for
    CRPS, or 4.5 mg/kg IV and 13 mg/kg IM, are one patient's ketamine, and each read as a full pass
    against its own protocol (a clinical probe), and so are a product code and its ingredient's (a
    review). Dosage instructions of one order that may be given together are noted by
    :func:`_draft_order`. ``codes``: each order's codes as the catalog reads them."""
    notes: dict[int, str] = {}
    for index, mine in enumerate(codes):
        peers = [other for other, theirs in enumerate(codes) if mine & theirs] if mine else []
        if len(peers) < 2:
            continue
        names = [_order_name(orders, peer) for peer in peers[:NAMED_ORDERS]]
        if len(peers) > NAMED_ORDERS:
            names.append(f"and {len(peers) - NAMED_ORDERS} more")
        notes[index] = (f"{len(peers)} orders of this call are for this medication ({', '.join(names)}); each was "
                        "judged alone, and what they give together was not added up")
    return notes


def _order_name(orders: Sequence[DraftOrder], index: int) -> str:
    """How a card names the call's ``index``-th order: ``MedicationRequest/<id>``, else its place."""
    order = orders[index]
    if order.resource_id:
        return f"MedicationRequest/{order.resource_id}"
    return f"draft order {index + 1} of {len(orders)}"


def _softening(match: LineMatch, judged: list[tuple[StoredVersion, str, Verdict | None]]) -> dict[str, str]:
    """Why a critical card of one dosage line is a warning, by protocol id, for an order that names no
    indication at all (``reasonCode``) and is checked against every protocol for its drug and route
    (:func:`_unscoped`): while another protocol's card for the line is a full pass (green), a dose above
    a protocol's maximum is a warning there. Found by a clinical probe: ketamine 2 mg/kg IV with no
    reasonCode, the Ketalar label's average induction dose and the usual anaesthesia order, got critical
    cards from the depression and CRPS protocols beside the anaesthesia protocol's "within range".

    Only then (a review of the first version): a pass that is itself partly checked (the dose repeated
    every 5 minutes, a weight from 2012) holds nothing, an order that names an indication no protocol
    lists said what it is for, and a maximum per period exceeded is a schedule no range allows. When no
    protocol's card is green, each breach stays critical. A reason given in words only, or as a
    reasonReference, is a reason too: 315 mg for "treatment-resistant depression" in text lost its critical
    card as an order that "names no indication" (a clinical probe)."""
    if match.order.reason_stated or match.unscoped is None or len(judged) < 2:
        return {}
    passes = [stored for stored, indicator, verdict in judged if indicator == "info"]
    if not passes:
        return {}
    softened = {}
    for stored, indicator, verdict in judged:
        if indicator == "critical" and verdict is Verdict.ABOVE_MAX:
            others = ", ".join(f"protocol {p.protocol_id} v{p.version}" for p in passes)
            softened[stored.protocol_id] = (f"A warning, not critical: the order names no indication, and its dose "
                                            f"is within the range of {others}, with nothing left unchecked")
    return softened


def _route_card(match: LineMatch, version_url: VersionUrl) -> dict[str, Any]:
    """The card of a dosage line whose medication has protocols, none of them by its route: no card at
    all read as "nothing to check" (Spravato ordered IV, ketamine ordered intranasally or by mouth, the
    compounded forms FDA warned about; found by a clinical probe), where the REST check answers
    ``route_not_in_protocol``."""
    line = match.line
    route = terminology.ROUTES.get(line.route)
    route_text = route.display.lower() if route else f"route {line.route}" if line.route else "by its route"
    listed = []
    for stored, content in match.by_other_routes:
        routes = ", ".join(f"{r.get('display') or r.get('code')} ({r.get('code')})"
                           for r in content.get("routes") or [])
        listed.append(f"- **{markdown_text(content.get('title', stored.protocol_id))}** (protocol "
                      f"{stored.protocol_id} v{stored.version}): {markdown_text(routes or 'no route listed')}")
    label = _protocols_label(match.by_other_routes)
    if line.unread_route is not None:  # :func:`_unread_route_cards`: not a breach by every route
        unread = ("The order gives no route" if line.unread_route == NO_ROUTE else
                  f"The order's route ({markdown_text(line.unread_route)}) is coded neither in SNOMED CT nor as an "
                  f"FDA SPL route code")
        opening = (f"{unread}, so which protocol applies is not known: it was judged as given by each route its "
                   f"protocols give (below); send the route.")
    else:
        opening = (f"No protocol in effect gives {markdown_text(match.order.medication)} by the "
                   f"{markdown_text(route_text)} ({markdown_text(line.route)}); the dose was not checked.")
    detail = [f"{opening} The protocols for {markdown_text(match.order.medication)} give it by:", *listed]
    links = [{"label": f"Protocol {stored.protocol_id} version {stored.version}",
              "url": version_url(stored.protocol_id, stored.version), "type": "absolute"}
             for stored, _ in match.by_other_routes]
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary("route not in any protocol" if line.unread_route is None else "route not read",
                            f"{match.order.medication} {line.label} {route_text}", label),
        "detail": "\n".join(detail),
        "indicator": "warning",
        "source": {"label": "Treatment protocols", "url": links[0]["url"]},
        "links": links,
    }


def _protocols_label(matched: Sequence[Matched]) -> str:
    """``protocol <id> v<n>`` for a card about several protocols: the first and how many more."""
    first, _ = matched[0]
    return f"protocol {first.protocol_id} v{first.version}" + (
        f" and {len(matched) - 1} more" if len(matched) > 1 else "")


def _unscoped(order: DraftOrder, applicable: list[tuple[StoredVersion, Mapping[str, Any]]]) -> str | None:
    """Why the cards of a route may be about protocols the order is not for, or None: an order without
    ``reasonCode`` is checked against every protocol for its drug and route (an anaesthesia dose got
    critical cards from the depression and CRPS protocols with nothing saying why), and an order whose
    reasons none of them lists falls back to all of them. The verdicts stand; each card then names its
    protocol's indications (:func:`_card`), so the prescriber learns which one it is about."""
    reasons = {code.upper() for code in order.reasons}
    if reasons and any(search.treats(content, reasons) for _, content in applicable):
        return None
    if not reasons and len(applicable) < 2:
        return None
    if reasons and len(applicable) == 1:
        return (f"None of the order's indications ({', '.join(sorted(reasons))}) is listed by the one protocol in "
                "effect for this medication and route; the order was checked against it anyway")
    if reasons:
        return (f"None of the order's indications ({', '.join(sorted(reasons))}) is listed by the protocols in "
                f"effect for this medication and route, so it was checked against all {len(applicable)}")
    if order.reason_stated:
        return (f"The order's reason is not coded (a reasonCode without a code, or a reasonReference), so it was "
                f"checked against all {len(applicable)} protocols in effect for this medication and route")
    return (f"The order names no indication (reasonCode), so it was checked against all {len(applicable)} "
            "protocols in effect for this medication and route")


@dataclass
class RangeResult:
    phase: str
    verdict: Verdict | None
    evaluations: list[Evaluation]
    problem: str | None
    #: Quantities of the line this range could not judge (shown as "not checked: ..." under it).
    unchecked: list[str] = field(default_factory=list)
    #: The order's own maximum per period against this range's (:func:`dosing.own_maximum_against_range`).
    own_maximum: str | None = None


def _judge(content: Mapping[str, Any], index: int, line: DosageLine, weight: Weight | str) -> RangeResult:
    """Judge every quantity of the line against one range; the worst verdict wins. A quantity that
    cannot be compared (a rate against an amount range that gives no duration) is noted, and never
    replaces a verdict reached for another: 400 mg at 50 mg/h against 1-4.5 mg/kg stays "above"."""
    dose_range = content["dosing_ranges"][index]
    phase = str(dose_range.get("phase"))
    evaluations, problems = [], []
    weight_kg = weight.usable_kg if isinstance(weight, Weight) else None
    no_weight = (weight if isinstance(weight, str) else
                 f"the prefetched {fmt(weight.kg)} kg is not used: {weight.refused}" if weight.refused else None)
    # A dose ordered with its rate: how fast it runs is known when the time the rate takes could be worked
    # out (the rate is then judged as that dose); otherwise the amount's speed is as unknown as without one.
    rate_of = [draft_orders.is_rate(q.unit) for q in line.doses]
    mixed = any(rate_of) and not all(rate_of)  # a dose and its rate together
    implied_of = [_implied_duration(line, q, weight_kg) if is_rate else None for q, is_rate in zip(
        line.doses, rate_of, strict=True)]
    paced = mixed and (
        (line.duration is not None and not line.duration_is_bound) or implied_of[rate_of.index(True)] is not None)
    bound = line.duration if line.duration_is_bound else None
    for dose, is_rate, implied in zip(line.doses, rate_of, implied_of, strict=True):
        # durationMax alone bounds an administration without saying how long it takes: a rate runs the
        # time its dose takes (140 mg at 35 mg/min "up to 10 min" read as 350 mg over the 10 min; cut to
        # the bound, a dose that cannot run within it read "below minimum"), else the bound; an amount is
        # one administration of the range, its speed unknown (98 mg "up to 24 h" read as 4 mg/h, "below
        # minimum"), unless even the bound is too fast (below), which is how a self-contradicting order
        # (98 mg at 24.5 mg/h "up to 1 h") shows (reviews).
        duration = ((implied or bound) if is_rate else None) if bound is not None else line.duration or implied
        order = DoseOrder(route=line.route, dose=dose, frequency=line.frequency, weight_kg=weight_kg,
                          concentration=line.concentration, duration_s=duration[0] if duration else None,
                          duration_text=duration[1] if duration else None, shortest_s=line.shortest_s,
                          no_frequency=line.no_frequency, paced=paced, per_kg_without_weight=True,
                          bound_text=f"durationMax {bound[1]}" if bound is not None else None)
        try:
            if bound is not None and not is_rate:
                # Given within its bound, the amount goes at least that fast: a breach judged over the bound
                # is certain (315 mg "up to 10 s" against "over 60 s", 98 mg "up to 1 h" against 0.35 mg/kg/h
                # for 4 h read as a green card and a warning; a review); a pass there is not.
                slowest = evaluate(content, index, replace(order, duration_s=bound[0], duration_text=bound[1]))
                if slowest.faster or slowest.verdict in (Verdict.ABOVE_MAX, Verdict.EXCEEDS_MAX_PER_PERIOD):
                    evaluations.append(slowest)
                    continue
            evaluations.append(evaluate(content, index, order))
        except DosingError as exc:
            # Not for a dose and its rate together: the time the rate runs is worked out from the dose, through
            # the weight when one of them is per kg, and without one it is the protocol's (0.5 mg/kg at 400 mg/h
            # read critical "for any body weight", a warning at every weight; a review).
            certain = _breach_at_any_weight(content, index, order, no_weight) if (
                weight_kg is None and exc.field.endswith("weight_kg") and not mixed) else None
            if certain is not None:
                evaluations.append(certain)
                continue
            problem = exc.message
            if no_weight is not None and exc.field.endswith("weight_kg"):
                problem = f"{exc.message} ({no_weight})"
            problems.append(f"{fmt(Fraction(dose.value))} {dose.unit}: {problem}")
    if not evaluations:
        return RangeResult(phase, None, [], "; ".join(problems) or "nothing in the order could be read as a dose "
                           "or rate (see below)")
    # A green card for 20 mg/h once a day against at most 100 mg a day, with no duration to project
    # the day's amount from, promised a check that did not happen (found by an adversarial probe).
    problems += [f"{fmt(Fraction(e.dose.value))} {e.dose.unit}: the protocol's maximum per period could not be "
                 "applied (see above)" for e in evaluations if e.maximum_per_period_unapplied]
    # A dose range (low to high) is inside only when both ends are, a dose and its rate only when
    # both are: take the worst.
    verdict = max((e.verdict for e in evaluations), key=FAVOURABLE_ORDER.index)
    own_maximum = None
    if line.own_maximum is not None and line.frequency is None and line.no_frequency is None:
        # With no timing (as needed, or not said), the order's own maximum is what bounds what it gives in a
        # period: above the range's maximum per period, that is a breach. Within it, the card stays partly
        # checked (the line's note), since the range's schedule is not compared (a review).
        amount, period_s, period_text = line.own_maximum
        try:
            compared = dosing.own_maximum_against_range(dose_range, amount, period_s, period_text,
                                                        weight_kg=weight_kg, concentration=line.concentration)
        except DosingError as exc:
            compared = None
            problems.append(f"the order's own maximum, {fmt(Fraction(amount.value))} {amount.unit} per "
                            f"{period_text}: {exc.message}")
        if compared is not None:
            exceeded, own_maximum = compared
            if exceeded:
                verdict = max(verdict, Verdict.EXCEEDS_MAX_PER_PERIOD, key=FAVOURABLE_ORDER.index)
    return RangeResult(phase, verdict, evaluations, None, problems, own_maximum)


def _with_a_rate_its_amount_contradicts_named(line: DosageLine, weight: Weight | str) -> DosageLine:
    """The line with a note naming a rate in volume per time that, at the product's strength, gives over the
    order's duration another amount than every amount ordered with it (beyond 1 %, the order's rounding).

    Why: an infusion is usually diluted, and its rate in mL/h is then of the bag, not of the product's
    strength the order's Medication gives: "35 mg in 100 mL over 40 min" (150 mL/h) of a 10 mg/mL ketamine
    reads as 1,000 mg, a critical "14.3 mg/kg" card beside its own 35 mg within range (a clinical probe).
    The rate is still judged, at the product's strength: a premixed bag is that strength, and 35 mg at
    150 mL/h of a 1 mg/mL product over 40 min gives 100 mg (1.43 mg/kg); left unjudged, that overdose read
    "within protocol range, partly checked" (a review). The note says which figure is which, so a
    prescriber whose bag is diluted knows why the card is critical."""
    if line.concentration is None or line.duration is None or line.duration_is_bound:
        return line
    weight_kg = weight.usable_kg if isinstance(weight, Weight) else None
    try:
        units = [parse_dose_unit(q.unit) for q in line.doses]
    except UnitError:
        return line
    amounts = [(q, u) for q, u in zip(line.doses, units, strict=True) if not u.is_rate and u.kind == "mass"]
    duration_s, duration_text = line.duration
    mg_per_ml = line.concentration.mg_per_ml
    for rate, unit in zip(line.doses, units, strict=True):
        if not unit.is_rate or unit.kind != "volume" or unit.time_seconds is None or not amounts:
            continue
        given = Fraction(rate.value) * unit.amount_factor / unit.time_seconds * duration_s * mg_per_ml
        disagreeing = []
        for amount, amount_unit in amounts:
            mg, ordered = given, Fraction(amount.value) * amount_unit.amount_factor
            if unit.per_kg != amount_unit.per_kg:  # compared per patient: needs the weight
                if weight_kg is None:
                    break
                mg = mg * weight_kg if unit.per_kg else mg
                ordered = ordered * weight_kg if amount_unit.per_kg else ordered
            if abs(mg - ordered) * 100 <= ordered:  # within 1 % of one of them (a dose range's end): agrees
                break
            disagreeing.append((amount, mg, "/kg" if unit.per_kg and amount_unit.per_kg else ""))
        else:
            amount, mg, per_kg = disagreeing[0]
            note = (f"the rate {fmt(Fraction(rate.value))} {rate.unit} and the amount ordered with it disagree at the "
                    f"product's strength ({fmt(Fraction(line.concentration.value))} {line.concentration.unit}): "
                    f"the rate gives {fmt(mg)} mg{per_kg} over {duration_text}, not "
                    f"{fmt(Fraction(amount.value))} {amount.unit}; both were judged, the rate at that strength, so "
                    f"if the infusion is diluted its verdict is not about what runs")
            return replace(line, unchecked=[*line.unchecked, note])
    return line


#: A breach of the maximum: with no body weight, one that holds at the lightest and at the heaviest weight
#: the service accepts holds at every weight between (:func:`_breach_at_any_weight`).
_BREACHES = (Verdict.ABOVE_MAX, Verdict.EXCEEDS_MAX_PER_PERIOD)


def _breach_at_any_weight(content: Mapping[str, Any], index: int, order: DoseOrder, no_weight: str | None
                          ) -> Evaluation | None:
    """With no usable body weight, the judgement of an order that breaks a weight-based maximum whatever
    the patient weighs, or None. 3,000 mg of ketamine IV without a weight read "dose not checked" (a
    clinical probe): above 4.5 mg/kg for anyone under 667 kg, and the service accepts 0.3-500 kg.

    Why the two ends suffice: a dose and a maximum are each either an amount or an amount per kg, so
    their ratio grows or shrinks steadily with the weight (a dose per kg against an amount in mg grows
    with it, an amount against a maximum per kg shrinks); a breach at both ends is a breach at every
    weight between. The evaluation shown is the one at the end where the breach is smallest, with a first
    message saying so."""
    ends = []
    for weight in (dosing.MIN_WEIGHT_KG, dosing.MAX_WEIGHT_KG):
        try:
            ends.append(evaluate(content, index, replace(order, weight_kg=Fraction(weight))))
        except DosingError:
            return None
    if not all(e.verdict in _BREACHES for e in ends):
        return None
    # A dose per kg grows with the weight (its breach is smallest for the lightest), an amount does not
    # (its breach against a maximum per kg is smallest for the heaviest).
    mildest = ends[0] if per_kg(order.dose.unit) else ends[1]
    at = dosing.MIN_WEIGHT_KG if mildest is ends[0] else dosing.MAX_WEIGHT_KG
    why = f" ({no_weight})" if no_weight else ""
    note = (f"No body weight{why}: {fmt(Fraction(order.dose.value))} {order.dose.unit} breaks the protocol's "
            f"maximum for any body weight from {dosing.MIN_WEIGHT_KG} to {dosing.MAX_WEIGHT_KG} kg (the weights "
            f"this service accepts); the figures below are for {at} kg.")
    return replace(mildest, messages=[note, *mildest.messages])


def _implied_duration(line: DosageLine, rate: Quantity, weight_kg: Fraction | None) -> tuple[Fraction, str] | None:
    """For a rate ordered together with its dose (140 mg at 0.5 mg/kg/min), how long the dose runs at
    that rate: the rate is then judged as that dose, not as a rate over the protocol's duration (the
    Ketalar label's 1-2 mg/kg at 0.5 mg/kg/min read "below minimum" over its 60 s bolus; found by a
    clinical QA probe). None when the line has no dose, or the units or weight do not allow it.

    Only the rate: the amount is still judged as what one administration gives (98 mg against at most
    0.35 mg/kg/h for 4 h, over the range's duration, also when the order gives ``durationMax`` alone),
    since judged over its own time at its own rate it is the rate again, and 500 mg at 24.5 mg/h lost its
    critical card (a review)."""
    try:
        rate_unit = parse_dose_unit(rate.unit)
        if not rate_unit.is_rate:
            return None
        for amount in line.doses:
            amount_unit = parse_dose_unit(amount.unit)
            if amount_unit.is_rate:
                continue
            # Both per kg (2 mg/kg at 0.5 mg/kg/min): the time needs no weight, and without one it was not
            # worked out, so the rate was judged over the range's 60 s and read "below minimum" (a review).
            per_kg = "/kg" if amount_unit.per_kg and rate_unit.per_kg else ""
            per_minute = convert(Fraction(rate.value), rate_unit, parse_dose_unit(f"mg{per_kg}/min"),
                                 weight_kg=weight_kg, concentration=line.concentration, duration_s=None)
            mg = convert(Fraction(amount.value), amount_unit, parse_dose_unit(f"mg{per_kg}"), weight_kg=weight_kg,
                         concentration=line.concentration, duration_s=None)
            if per_minute <= 0:
                return None
            return mg / per_minute * 60, (f"{fmt(mg / per_minute)} min ({fmt(Fraction(amount.value))} {amount.unit} "
                                          f"at {fmt(Fraction(rate.value))} {rate.unit})")
    except (DosingError, UnitError):
        return None
    return None


#: What CommonMark and GitHub's extensions read as markup anywhere in a line: emphasis, code, links
#: and images, raw HTML and autolinks, entities, strikethrough, and the backslash itself.
_INLINE_MARKUP = re.compile(r"[\\`*_\[\]<&~]")
#: What opens a block (heading, quote, list, setext underline, ordered list) at the start of a line:
#: a text placed first in a list item would otherwise become one inside it.
_BLOCK_START = re.compile(r"^(?:[#>+=-]|[0-9]+(?=[.)]))")


def markdown_text(text: object) -> str:
    """``text`` as literal text inside a card's markdown ``detail`` (CDS Hooks: GitHub-flavoured
    markdown). Protocol titles, indications, phases and instructions, and the order's own words, are
    data: written into the markdown as they were, a protocol titled ``[Approved dose: 500 mg](https://…)``
    showed the prescriber a link, an image fetched from another site and headings of its own making
    (found by an adversarial probe). Line breaks become spaces, so that a text stays inside its line.
    A bare web or e-mail address is left as it is: GitHub-flavoured markdown shows it as a link to
    itself, which names its own target."""
    flat = " ".join(str(text).split())
    escaped = _INLINE_MARKUP.sub(lambda m: "\\" + m.group(), flat)
    return _BLOCK_START.sub(lambda m: m.group() + "\\" if m.group()[0].isdigit() else "\\" + m.group(), escaped)


def _card(order: DraftOrder, line: DosageLine, stored: StoredVersion, content: Mapping[str, Any],
          weight: Weight | str, version_url: VersionUrl, unscoped: str | None = None,
          together: str | None = None, softened: str | None = None) -> tuple[dict[str, Any], Verdict | None]:
    """The card of one dosage line checked against one protocol, and the verdict of its best range (None:
    not checked). ``together``: why other orders of the call make this one "partly checked";
    ``softened``: why a critical verdict is shown as a warning (:func:`_softening`)."""
    ranges, other_indications = ranges_for(content, line.route,
                                           search.treated_codes(content, {c.upper() for c in order.reasons}))
    results = [_judge(content, index, line, weight) for index, _ in ranges]
    judged = [r for r in results if r.verdict is not None]
    route = terminology.ROUTES.get(line.route)
    route_text = route.display.lower() if route else f"route {line.route}"
    if line.unread_route is not None:
        route_text = f"judged as {route_text}"
    label = f"protocol {stored.protocol_id} v{stored.version}"
    unchecked = list(line.unchecked)  # the order's own; each range lists the quantities it could not judge
    if together:
        unchecked.append(together)
    if other_indications:
        unchecked.append(other_indications)
    if isinstance(weight, Weight) and weight.stale and weight.refused is None and (
            any(per_kg(str(r["unit"])) or per_kg(str((r.get("max_per_period") or {}).get("unit", "")))
                for _, r in ranges) or any(per_kg(dose.unit) for dose in line.doses)):
        unchecked.append(f"{weight.stale}; the weight-based dose was checked with it")
    best_verdict: Verdict | None = None
    # (Not when the timing could not be read or gives one administration, nor with the order's own maximum:
    # each says so itself; a route note is no reason to drop it: a review.)
    if (line.as_needed and line.frequency is None and line.no_frequency is None and line.own_maximum is None
            and any(r.get("frequency") or r.get("max_per_period") for _, r in ranges)):
        # A one-time order without timing is one dose; "as needed" without timing or maximum is not.
        unchecked.append("the order is as needed with no timing or maximum, so its amount per period was "
                         "checked for one dose")
    if judged:
        best = min(judged, key=lambda r: FAVOURABLE_ORDER.index(r.verdict))
        assert best.verdict is not None
        best_verdict = best.verdict
        indicator = INDICATOR[best.verdict]
        verdict = VERDICT_TEXT[best.verdict]
        # What the best range gives nothing to check against (dosing.REPEAT_UNCHECKED, in its messages: an
        # induction dose of 2 mg/kg every 5 minutes read "within protocol range" on a green card).
        if (unchecked or best.unchecked or any(e.unchecked for e in best.evaluations)) and indicator == "info":
            # Never the green card of a real pass for an order part of which was not checked.
            indicator, verdict = "warning", f"{verdict}, partly checked"
        if indicator == "info" and any(e.faster for e in best.evaluations):
            # The amount is in range, given faster than the protocol gives it (dosing._faster_than_protocol).
            indicator, verdict = "warning", f"{verdict}, given faster than the protocol"
        if indicator == "info" and any(e.longer for e in best.evaluations):
            # The rate is in range, run longer than the protocol runs it (dosing._longer_than_protocol).
            indicator, verdict = "warning", f"{verdict}, given for longer than the protocol"
    else:
        indicator, verdict = "warning", "dose not checked"
    detail = [f"Checked against **{markdown_text(content.get('title', stored.protocol_id))}** "
              f"({label}, ETag {stored.etag}, effective from {json.loads(stored.document)['effective_from']})."]
    if unscoped:
        indications = "; ".join(f"{i.get('display') or i.get('code')} ({i.get('code')})"
                                for i in content.get("indications") or []) or "no indication listed"
        detail.append(f"{markdown_text(unscoped)}. This card applies if the order is for: "
                      f"{markdown_text(indications)}.")
    if softened and indicator == "critical":
        indicator = "warning"
        detail.append(f"{markdown_text(softened)}.")
    if isinstance(weight, Weight) and weight.refused is None:
        detail.append(f"Body weight used: {fmt(weight.kg)} kg (observed {weight.observed()}).")
    elif isinstance(weight, Weight):
        detail.append(f"Body weight prefetched: {fmt(weight.kg)} kg (observed {weight.observed()}); not used: "
                      f"{markdown_text(weight.refused)}.")
    for result in results:
        if result.verdict is None:
            detail.append(f"- **{markdown_text(result.phase)}**: could not be checked: {markdown_text(result.problem)}")
            continue
        detail.append(f"- **{markdown_text(result.phase)}**: {result.verdict.value}")
        # A dose range's two ends, or a dose and its rate, are two evaluations of one range: a line they
        # share (the repetition not checked, the instructions) is shown once (a review).
        messages = dict.fromkeys(message for evaluation in result.evaluations for message in evaluation.messages)
        detail.extend(f"  - {markdown_text(message)}" for message in messages)
        if result.own_maximum:
            detail.append(f"  - {markdown_text(result.own_maximum)}")
        detail.extend(f"  - not checked: {markdown_text(problem)}" for problem in result.unchecked)
    detail.extend(f"- {markdown_text(note)}" for note in line.notes)
    detail.extend(f"- Not checked: {markdown_text(reason)}." for reason in unchecked)
    if line.unread_route is not None:  # in the verdict's part, which a long medication name never cuts
        verdict = f"{verdict}, route not read"
    summary = _summary(verdict, f"{order.medication} {line.label} {route_text}", label)
    url = version_url(stored.protocol_id, stored.version)
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "detail": "\n".join(detail),
        "indicator": indicator,
        "source": {"label": f"Treatment protocol {stored.protocol_id} version {stored.version}", "url": url,
                   "topic": {"system": TOPIC_SYSTEM, "code": f"{stored.protocol_id}/{stored.version}",
                             "display": str(content.get("title", stored.protocol_id))}},
        "links": [{"label": f"Protocol {stored.protocol_id} version {stored.version}", "url": url,
                   "type": "absolute"}],
    }, best_verdict


def _summary(verdict: str, order_text: str, label: str) -> str:
    """``<verdict>: <order> (<protocol vN>)`` within CDS Hooks' 140 characters: the order text is
    shortened, never the verdict or the protocol version (a long EHR medication name cut the verdict
    off: "…500 mg nasal route: ab…")."""
    prefix, suffix = f"{verdict}: ", f" ({label})"
    # Plain text on one line: the order's own words lose line breaks and invisible format characters (a
    # right-to-left override made the card's text read backwards; an adversarial probe).
    order_text = " ".join("".join(c for c in order_text if unicodedata.category(c) not in ("Cc", "Cf")
                                  or c.isspace()).split())
    room = SUMMARY_LIMIT - utf16_length(prefix) - utf16_length(suffix)
    if utf16_length(order_text) > room:
        order_text = _utf16_prefix(order_text, max(room - 1, 0)) + "…"
    return _utf16_prefix(prefix + order_text + suffix, SUMMARY_LIMIT)


def utf16_length(text: str) -> int:
    """``text``'s length in UTF-16 code units (a character outside the BMP is two)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def _utf16_prefix(text: str, units: int) -> str:
    """The longest start of ``text`` of at most ``units`` UTF-16 code units (never half a character)."""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > units:
            return text[:index]
    return text
