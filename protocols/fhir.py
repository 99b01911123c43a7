"""The FHIR R4 face of a protocol version: stored document dict -> FHIR resource dicts.

Pure mapping, no Flask and no database: the HTTP layer (``api/fhir_api.py``) hands in a version's
document and the FHIR base URL of this service, and gets plain JSON-ready dicts back. Keeping it pure
lets the tests validate every curated protocol against a real FHIR validator without a server.

How a protocol version maps onto ``MedicationKnowledge`` (R4 4.0.1), and why:

* ``code``: the drug's RxNorm CUI (system ``http://www.nlm.nih.gov/research/umls/rxnorm``); the
  generic name goes in ``code.text`` only, because the record does not hold RxNorm's own display.
* ``synonym``: brand names. ``intendedRoute``: the SNOMED CT route codings of the record.
* ``administrationGuidelines``: one entry per indication (R4 allows one ``indication[x]`` per entry).
  Each entry carries the ranges for its indication (a range's ``indications`` lists the codes it is for;
  a range without them is for every indication), grouped by phase in ``dosage[]`` (``type`` = phase from
  this service's ``dosing-phase`` code system); an indication no range is for has no ``dosage``. Each
  range is one ``Dosage``: a dose unit becomes ``doseAndRate.doseRange``, a rate unit (``mg/h``,
  ``mg/kg/min``) ``doseAndRate.rateRange`` - both UCUM Quantities. Weight-based ranges are said
  in one way only: the UCUM ``/kg`` unit (``mg/kg``), never ``patientCharacteristics``.
  ``maxDosePerPeriod`` is a Ratio (amount / period in UCUM time units); frequency and the length of
  one administration become ``timing.repeat``. A weight-based range's absolute maximum is
  ``maxDosePerAdministration`` for an amount; for a rate (R4's Dosage has no element for one) it is said
  in ``text``, as is a range's shortest administration time (``duration_min``, a push time).
* ``regulatory``: the FDA as authority (a logical reference, display + identifier), the DEA schedule
  as an NCI Thesaurus coding (the FDA SPL DEA schedule codes, C48672 ... C48679), and the full FDA
  approval record in the ``fda-approval`` extension. The approval status is also repeated on each
  indication's guideline (``fda-approval-status``) so a consumer reading one indication sees it.
* Provenance and lifecycle travel in extensions defined below (``source``, ``verification-note``,
  ``protocol-status``, ``effective-from``, ``protocol-title``); their StructureDefinitions are built
  here too and served by the API at their canonical URLs.
* ``meta.versionId`` is the protocol version and ``meta.lastUpdated`` when it was published: its
  ``recorded_at``, or its ``effective_from`` when it was recorded ahead of it (:func:`published_at`;
  a version is not published over FHIR before it takes effect, ``protocols.fhir_query``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from protocols import terminology
from protocols.dosing import is_for
from protocols.durations import parse_duration
from protocols.timeutil import parse_rfc3339

FHIR_VERSION = "4.0.1"
RXNORM = terminology.RXNORM
SNOMED = terminology.SNOMED
UCUM = terminology.UCUM
NCI_THESAURUS = terminology.NCI_THESAURUS  # the FDA's SPL DEA schedule codes
MEDICATION_KNOWLEDGE_STATUS = "http://hl7.org/fhir/CodeSystem/medicationknowledge-status"
EXTENSION_BASE = "http://hl7.org/fhir/StructureDefinition/Extension"

#: FDA "SPL DEA Schedule" data standard (CDER data element C-DRG-0933): term -> (NCI code, meaning). Source:
#: https://www.fda.gov/drugs/data-standards-manual-monographs/spl-dea-schedule-drugs
DEA_SCHEDULES: dict[str, tuple[str, str]] = {
    "CI": ("C48672", "Schedule I"),
    "CII": ("C48675", "Schedule II"),
    "CIII": ("C48676", "Schedule III"),
    "CIV": ("C48677", "Schedule IV"),
    "CV": ("C48679", "Schedule V"),
}

FDA = {"display": "U.S. Food and Drug Administration",
       "identifier": {"system": "urn:ietf:rfc:3986", "value": "https://www.fda.gov"}}

#: Lifecycle of a protocol version -> MedicationKnowledge.status. Drafts are never published.
STATUS_MAP = {"active": "active", "retired": "inactive"}

#: Timing / UCUM time units, largest first (used for periods and durations): code -> seconds.
_TIME_UNITS = (("wk", 604800), ("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
_TIME_UNIT_NAMES = {"wk": "week", "d": "day", "h": "hour", "min": "minute", "s": "second"}


# ------------------------------------------------------------------------------ terminology


@dataclass(frozen=True)
class Concept:
    code: str
    display: str
    definition: str


DOSING_PHASES: tuple[Concept, ...] = (
    Concept("induction", "Induction", "Initial course that establishes the therapeutic effect."),
    Concept("maintenance", "Maintenance", "Course that keeps an established effect."),
    Concept("continuation", "Continuation", "Course continued after the initial response."),
    Concept("single", "Single dose", "One administration."),
    Concept("loading", "Loading dose", "Initial higher dose that reaches a target level quickly."),
    Concept("infusion", "Infusion", "Continuous or prolonged administration."),
    Concept("titration", "Titration", "Stepwise adjustment of the dose to effect."),
)

FDA_APPROVAL_STATUSES: tuple[Concept, ...] = (
    Concept("approved", "FDA approved", "The FDA approved the drug for this use (see the label)."),
    Concept("off_label", "Off-label", "The drug is FDA approved, but not for this use."),
    Concept("investigational", "Investigational", "Under investigation; not FDA approved."),
    Concept("not_approved", "Not approved", "Not FDA approved for this use."),
)

PROTOCOL_STATUSES: tuple[Concept, ...] = (
    Concept("active", "Active", "The protocol version is (or becomes) the one in effect."),
    Concept("retired", "Retired", "The protocol was retired by this version."),
)

CODE_SYSTEMS: dict[str, tuple[str, str, tuple[Concept, ...]]] = {
    "dosing-phase": ("Dosing phase", "Phase of treatment a dosing range applies to.", DOSING_PHASES),
    "fda-approval-status": ("FDA approval status", "Regulatory status of a drug for an indication in "
                            "the United States.", FDA_APPROVAL_STATUSES),
    "protocol-status": ("Protocol status", "Lifecycle status of a treatment-protocol version.",
                        PROTOCOL_STATUSES),
}


def code_system_url(base_url: str, name: str) -> str:
    return f"{base_url}/CodeSystem/{name}"


def code_system(name: str, base_url: str) -> dict[str, Any]:
    """A complete CodeSystem resource for one of this service's code systems (KeyError if unknown)."""
    title, description, concepts = CODE_SYSTEMS[name]
    return {
        "resourceType": "CodeSystem",
        "id": name,
        "url": code_system_url(base_url, name),
        "name": _pascal(name),
        "title": title,
        "status": "active",
        "experimental": False,
        "description": description,
        "caseSensitive": True,
        "content": "complete",
        "count": len(concepts),
        "concept": [{"code": c.code, "display": c.display, "definition": c.definition} for c in concepts],
    }


# ------------------------------------------------------------------------------- extensions


@dataclass(frozen=True)
class Part:
    """One sub-extension of a complex extension."""

    name: str
    value_type: str
    min: int
    max: str
    short: str


@dataclass(frozen=True)
class ExtensionDef:
    """An extension this service emits; its StructureDefinition is generated from this."""

    name: str
    title: str
    description: str
    context: str
    value_type: str | None = None  # simple extension: the one value[x] type
    parts: tuple[Part, ...] = ()  # complex extension: its sub-extensions

    def url(self, base_url: str) -> str:
        return f"{base_url}/StructureDefinition/{self.name}"


EXTENSIONS: dict[str, ExtensionDef] = {d.name: d for d in (
    ExtensionDef("protocol-title", "Protocol title", "Human title of the treatment protocol this "
                 "MedicationKnowledge is derived from (one drug can have several protocols).",
                 "MedicationKnowledge", value_type="string"),
    ExtensionDef("protocol-status", "Protocol status", "Lifecycle status of the protocol version "
                 "(code system protocol-status of this service).", "MedicationKnowledge",
                 value_type="code"),
    ExtensionDef("effective-from", "Effective from", "Instant from which this protocol version is the "
                 "one in effect clinically (it can differ from meta.lastUpdated, the time it was published: "
                 "recorded, or taking effect when recorded ahead of its start).",
                 "MedicationKnowledge", value_type="dateTime"),
    ExtensionDef("verification-note", "Verification note", "A fact in this protocol that could not be "
                 "verified in a primary source. Repeats.", "MedicationKnowledge", value_type="string"),
    ExtensionDef("source", "Source", "A cited source of the protocol's facts, with the record paths it "
                 "supports. Repeats.", "MedicationKnowledge", parts=(
                     Part("title", "string", 1, "1", "Title of the source"),
                     Part("url", "uri", 1, "1", "Where the source can be read"),
                     Part("supports", "string", 0, "*", "Record path this source backs, e.g. "
                          "fda_approval.approval_date"),
                 )),
    ExtensionDef("fda-approval-status", "FDA approval status", "FDA approval status of the drug for "
                 "this indication (code system fda-approval-status of this service).",
                 "MedicationKnowledge.administrationGuidelines", value_type="code"),
    ExtensionDef("fda-approval", "FDA approval", "The FDA approval record the protocol relies on.",
                 "MedicationKnowledge.regulatory", parts=(
                     Part("status", "code", 1, "1", "approved | off_label | investigational | not_approved"),
                     Part("applicationNumber", "string", 0, "1", "NDA, ANDA or BLA number"),
                     Part("approvalDate", "date", 0, "1", "Date of the approval"),
                     Part("approvedIndication", "string", 0, "1", "Indication text of the label"),
                     Part("remsRequired", "boolean", 1, "1", "Whether a REMS program applies"),
                     Part("boxedWarning", "string", 0, "1", "Boxed warning title, when the label has one"),
                 )),
)}


def extension_url(base_url: str, name: str) -> str:
    return EXTENSIONS[name].url(base_url)


def structure_definition(name: str, base_url: str) -> dict[str, Any]:
    """The StructureDefinition (differential) of one of this service's extensions (KeyError if unknown)."""
    ext = EXTENSIONS[name]
    url = ext.url(base_url)
    elements: list[dict[str, Any]] = [
        {"id": "Extension", "path": "Extension", "short": ext.title, "definition": ext.description},
    ]
    if ext.parts:
        elements.append({"id": "Extension.extension", "path": "Extension.extension", "min": len(
            [p for p in ext.parts if p.min]), "slicing": {"discriminator": [{"type": "value", "path": "url"}],
                                                        "rules": "closed"}})
        for part in ext.parts:
            slice_id = f"Extension.extension:{part.name}"
            elements += [
                {"id": slice_id, "path": "Extension.extension", "sliceName": part.name, "short": part.short,
                 "definition": part.short, "min": part.min, "max": part.max},
                {"id": f"{slice_id}.extension", "path": "Extension.extension.extension", "max": "0"},
                {"id": f"{slice_id}.url", "path": "Extension.extension.url", "fixedUri": part.name},
                {"id": f"{slice_id}.value[x]", "path": "Extension.extension.value[x]", "min": 1,
                 "type": [{"code": part.value_type}]},
            ]
        elements += [
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": url},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "max": "0"},
        ]
    else:
        elements += [
            {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": url},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1,
             "type": [{"code": ext.value_type}]},
        ]
    return {
        "resourceType": "StructureDefinition",
        "id": ext.name,
        "url": url,
        "name": _pascal(ext.name),
        "title": ext.title,
        "status": "active",
        "description": ext.description,
        "fhirVersion": FHIR_VERSION,
        "kind": "complex-type",
        "abstract": False,
        "context": [{"type": "element", "expression": ext.context}],
        "type": "Extension",
        "baseDefinition": EXTENSION_BASE,
        "derivation": "constraint",
        "differential": {"element": elements},
    }


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def _ext(base_url: str, name: str, value: Any) -> dict[str, Any]:
    value_type = EXTENSIONS[name].value_type
    assert value_type is not None
    return {"url": extension_url(base_url, name), f"value{value_type[0].upper()}{value_type[1:]}": value}


def _complex_ext(base_url: str, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for part in EXTENSIONS[name].parts:
        value = values.get(part.name)
        items = value if isinstance(value, list) else [value]
        key = f"value{part.value_type[0].upper()}{part.value_type[1:]}"
        parts += [{"url": part.name, key: item} for item in items if item is not None]
    return {"url": extension_url(base_url, name), "extension": parts}


# ----------------------------------------------------------------------------------- mapping


def to_medication_knowledge(document: Mapping[str, Any], *, base_url: str) -> dict[str, Any]:
    """Map one stored protocol document (active or retired) to an R4 MedicationKnowledge dict."""
    status = str(document["status"])
    if status not in STATUS_MAP:
        raise ValueError(f"a {status!r} version is not published over FHIR")
    drug = document["drug"]
    routes = {r["code"]: r for r in document["routes"]}
    approval = document["fda_approval"]

    extensions = [
        _ext(base_url, "protocol-title", document["title"]),
        _ext(base_url, "protocol-status", status),
        _ext(base_url, "effective-from", document["effective_from"]),
    ]
    extensions += [_ext(base_url, "verification-note", note) for note in document.get("verification_notes") or []]
    extensions += [_complex_ext(base_url, "source", source) for source in document["sources"]]

    code: dict[str, Any] = {"text": drug["name"]}
    if drug.get("rxnorm_cui"):
        code["coding"] = [{"system": RXNORM, "code": str(drug["rxnorm_cui"])}]

    guidelines = [_guideline(indication, document["dosing_ranges"], routes, approval, base_url)
                  for indication in document["indications"]]

    resource: dict[str, Any] = {
        "resourceType": "MedicationKnowledge",
        "id": document["id"],
        "meta": {"versionId": str(document["version"]), "lastUpdated": published_at(document)},
        "text": {"status": "additional", "div": _narrative(document)},
        "extension": extensions,
        "code": code,
        "status": STATUS_MAP[status],
    }
    if drug.get("brand_names"):
        resource["synonym"] = list(drug["brand_names"])
    resource["intendedRoute"] = [_concept(route) for route in document["routes"]]
    resource["administrationGuidelines"] = guidelines
    resource["regulatory"] = [_regulatory(drug, approval, base_url)]
    return resource


def ranges_for(indication_code: Any, ranges: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The dosing ranges for one indication of the record (:func:`protocols.dosing.is_for`, as dose checks
    read them)."""
    return [dose for dose in ranges if is_for(dose, str(indication_code))]


def _guideline(indication: Mapping[str, Any], ranges: Sequence[Mapping[str, Any]],
               routes: Mapping[str, Mapping[str, Any]], approval: Mapping[str, Any],
               base_url: str) -> dict[str, Any]:
    """One indication's ``administrationGuidelines`` entry, holding only the ranges for it (FHIR R4: ``dosage``
    is the dosage "for the specific guidelines", read under that entry's ``indication[x]``).

    An indication that no range is for keeps its entry, with the indication and the approval status and no
    ``dosage`` (R4 allows 0..*): the record still says the medication is for it, and a FHIR search by
    indication still finds it, while no regimen is claimed for it. Leaving the entry out would hide the
    indication; giving it the other indications' ranges is what this mapping did before ranges named their
    indications, and gave Spravato's MDSI code the TRD maintenance schedules (a clinical probe)."""
    guideline: dict[str, Any] = {
        "extension": [_ext(base_url, "fda-approval-status", approval["status"])],
        "indicationCodeableConcept": _concept(indication),
    }
    own = ranges_for(indication["code"], ranges)
    if own:
        guideline["dosage"] = _dosage_groups(own, routes, base_url)
    return guideline


def _concept(coding: Mapping[str, Any]) -> dict[str, Any]:
    return {"coding": [{"system": coding["system"], "code": coding["code"], "display": coding["display"]}],
            "text": coding["display"]}


def _narrative(document: Mapping[str, Any]) -> str:
    title = html.escape(str(document["title"]))
    summary = html.escape(str(document["summary"]))
    return f'<div xmlns="http://www.w3.org/1999/xhtml"><p><b>{title}</b></p><p>{summary}</p></div>'


def _regulatory(drug: Mapping[str, Any], approval: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    regulatory: dict[str, Any] = {
        "extension": [_complex_ext(base_url, "fda-approval", {
            "status": approval["status"],
            "applicationNumber": approval.get("application_number"),
            "approvalDate": approval.get("approval_date"),
            "approvedIndication": approval.get("approved_indication"),
            "remsRequired": bool(approval.get("rems_required")),
            "boxedWarning": approval.get("boxed_warning"),
        })],
        "regulatoryAuthority": dict(FDA),
    }
    schedule = drug.get("dea_schedule")
    if schedule:
        nci_code, meaning = DEA_SCHEDULES[schedule]
        regulatory["schedule"] = [{"schedule": {
            "coding": [{"system": NCI_THESAURUS, "code": nci_code, "display": schedule}],
            "text": f"DEA {meaning} ({schedule})"}}]
    return regulatory


def _dosage_groups(ranges: Sequence[Mapping[str, Any]], routes: Mapping[str, Mapping[str, Any]],
                   base_url: str) -> list[dict[str, Any]]:
    """Group dosing ranges by phase, in the order phases first appear in the record."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for dose in ranges:
        groups.setdefault(str(dose["phase"]), []).append(_dosage(dose, routes))
    phases = {c.code: c for c in DOSING_PHASES}
    result = []
    for phase, dosages in groups.items():
        concept = phases.get(phase)
        coding = {"system": code_system_url(base_url, "dosing-phase"), "code": phase}
        if concept is not None:
            coding["display"] = concept.display
        result.append({"type": {"coding": [coding], "text": concept.display if concept else phase},
                       "dosage": dosages})
    return result


def is_rate_unit(unit: str) -> bool:
    """Units per unit of time (mg/h, ug/kg/min, mg/d) are rates, not amounts per dose.

    Stored units passed the ``amount[/kg][/time]`` check (protocols/units.py), so whatever follows
    the amount and an optional ``/kg`` is a time."""
    per = unit.split("/")[1:]
    if per[:1] == ["kg"]:
        per = per[1:]
    return bool(per)


def quantity(value: Any, unit: str) -> dict[str, Any]:
    """A UCUM Quantity; the unit code doubles as the human unit (UCUM codes are readable here)."""
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _dosage(dose: Mapping[str, Any], routes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    unit = str(dose["unit"])
    dose_range = {"low": quantity(dose["dose_min"], unit), "high": quantity(dose["dose_max"], unit)}
    dosage: dict[str, Any] = {}
    if dose.get("instructions"):
        dosage["text"] = dose["instructions"]
    repeat: dict[str, Any] = {}
    frequency = dose.get("frequency")
    if frequency:
        periods = [frequency["period"], *([frequency["period_max"]] if frequency.get("period_max") else [])]
        amounts, period_unit = time_amounts(*periods)  # periodMax is in period's unit (FHIR)
        repeat.update({"frequency": frequency["count"], "period": amounts[0],
                       **({"periodMax": amounts[1]} if len(amounts) > 1 else {}), "periodUnit": period_unit})
    if dose.get("duration"):
        length, length_unit = time_amount(dose["duration"])
        repeat.update({"duration": length, "durationUnit": length_unit})
    if repeat:
        timing: dict[str, Any] = {"repeat": repeat}
        if frequency and frequency.get("text"):
            timing["code"] = {"text": frequency["text"]}
        dosage["timing"] = timing
    route = routes.get(str(dose["route"]))
    if route is not None:
        dosage["route"] = _concept(route)
    dosage["doseAndRate"] = [{"rateRange" if is_rate_unit(unit) else "doseRange": dose_range}]
    ceiling = dose.get("absolute_max")
    if ceiling and not is_rate_unit(str(ceiling["unit"])):
        # "10 mg/kg, at most 500 mg": the most one administration gives, whatever the weight
        dosage["maxDosePerAdministration"] = quantity(ceiling["value"], str(ceiling["unit"]))
    elif ceiling:  # a rate has no element of its own in R4's Dosage: said in the text
        _add_text(dosage, f"At most {ceiling['value']} {ceiling['unit']} whatever the weight.")
    if dose.get("duration_min"):
        # A push time holds whatever the dose; R4's Timing.repeat has a longest duration (durationMax), not
        # a shortest one without it: said in the text.
        length, length_unit = time_amount(str(dose["duration_min"]))
        _add_text(dosage, f"Each dose given over at least {length} {length_unit}.")
    maximum = dose.get("max_per_period")
    if maximum:
        length, length_unit = time_amount(maximum["period"])
        dosage["maxDosePerPeriod"] = {
            "numerator": quantity(maximum["value"], str(maximum["unit"])),
            "denominator": {"value": length, "unit": _TIME_UNIT_NAMES[length_unit], "system": UCUM,
                            "code": length_unit},
        }
    return dosage


def _add_text(dosage: dict[str, Any], sentence: str) -> None:
    """A fact R4's Dosage has no element for, after the instructions in its ``text``."""
    dosage["text"] = f"{dosage['text']} {sentence}" if dosage.get("text") else sentence


def time_amount(duration: str) -> tuple[int, str]:
    """ISO 8601 duration -> (amount, UCUM/Timing unit) in the largest unit that divides it exactly:
    ``P1W`` -> (1, "wk"), ``P1D`` -> (1, "d"), ``PT40M`` -> (40, "min"), ``PT90S`` -> (90, "s")."""
    (amount,), code = time_amounts(duration)
    return amount, code


def time_amounts(*durations: str) -> tuple[tuple[int, ...], str]:
    """Several durations in one unit, the largest that divides each exactly (``P1W``, ``P10D`` -> (7, 10)
    days), for elements that share a unit (``period``/``periodMax``)."""
    seconds = [int(parse_duration(duration) / timedelta(seconds=1)) for duration in durations]
    for code, size in _TIME_UNITS:
        if all(value % size == 0 for value in seconds):
            return tuple(value // size for value in seconds), code
    raise ValueError(f"unrepresentable durations {durations!r}")  # pragma: no cover - "s" divides all


# ------------------------------------------------------------------- bundles and outcomes


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome issue: ``expression`` names the element or parameter at fault."""

    severity: str
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    items = []
    for issue in issues:
        item: dict[str, Any] = {"severity": issue.severity, "code": issue.code, "diagnostics": issue.diagnostics}
        if issue.expression:
            item["expression"] = list(issue.expression)
        items.append(item)
    return {"resourceType": "OperationOutcome", "issue": items}


def history_entry(document: Mapping[str, Any], *, base_url: str, first_published: int) -> dict[str, Any]:
    """A history Bundle entry. A retirement is FHIR's delete: request DELETE and no resource. The first
    published version is the create (POST, 201): over FHIR a protocol does not exist while it has
    drafts only, so a version 2 that publishes draft 1 was shown as an update of nothing (a PUT of a
    resource never created, with updateCreate false; found by an adversarial probe)."""
    protocol_id = str(document["id"])
    version = int(document["version"])
    full_url = f"{base_url}/MedicationKnowledge/{protocol_id}"
    response = {"etag": weak_etag(version), "lastModified": published_at(document)}
    if document["status"] == "retired":
        return {"fullUrl": full_url,
                "request": {"method": "DELETE", "url": f"MedicationKnowledge/{protocol_id}"},
                "response": {"status": "204 No Content", **response}}
    created = version == first_published
    return {"fullUrl": full_url,
            "resource": to_medication_knowledge(document, base_url=base_url),
            "request": {"method": "POST" if created else "PUT",
                        "url": "MedicationKnowledge" if created else f"MedicationKnowledge/{protocol_id}"},
            "response": {"status": "201 Created" if created else "200 OK", **response}}


def published_at(document: Mapping[str, Any]) -> str:
    """When a version was published over FHIR (its ``meta.lastUpdated``): recorded, or, for a version
    recorded ahead of its start, when it took effect (``fhir_query.PUBLISHED_AT`` in SQL)."""
    recorded, start = str(document["recorded_at"]), str(document["effective_from"])
    return start if parse_rfc3339(start) > parse_rfc3339(recorded) else recorded


def weak_etag(version: int) -> str:
    return f'W/"{version}"'


def bundle(kind: str, *, entries: list[dict[str, Any]], links: Sequence[tuple[str, str]],
           total: int | None, timestamp: str) -> dict[str, Any]:
    result: dict[str, Any] = {"resourceType": "Bundle", "meta": {"lastUpdated": timestamp}, "type": kind}
    if total is not None:
        result["total"] = total
    result["link"] = [{"relation": rel, "url": url} for rel, url in links]
    if entries:
        result["entry"] = entries
    return result
