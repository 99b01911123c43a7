"""Property-based tests of the domain (hypothesis), through the HTTP API.

1. Any valid record round-trips: POST it, GET it, and the clinical content equals what was sent
   (numbers compared as exact decimals: ``84.0`` and ``84`` are the same dose).
2. Any sequence of writes (create, revise, draft, retire, backdated ``effective_from``) leaves
   gapless versions, and the answer for "in effect now" and "in effect at T" (several T) equals the
   one a ten-line reference model gives.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocols import terminology
from protocols.dose_units import parse_dose_unit
from protocols.invisible import is_invisible
from protocols.record import CONTENT_FIELDS
from protocols.units import DOSE_UNITS
from schemas.fields import is_blank, mixes_scripts
from tests.reliability.servers import record_figures

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "40"))
PROPERTY_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])



@pytest.fixture
def app(make_app: Any) -> Any:
    """One app serves every example of a property (hypothesis reuses function-scoped fixtures), so the
    per-key rate limit (3,000 a minute) would answer 429 in a long run (`make fuzz`): off here."""
    return make_app(PROTOCOLS_RATE_LIMIT="off")


_counts = {"round_trips": 0, "write_sequences": 0, "writes": 0, "as_of_checks": 0, "refused_retirements": 0,
           "repeated_retirements": 0}

# ---------------------------------------------------------------------------------- strategies

# Printable single-line text in any script: no controls, lone surrogates, noncharacters (unassigned
# code points included), line/paragraph separators or characters that display as nothing (format,
# private use, variation selectors: protocols.invisible), and never blank: the API refuses those.
TEXT_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Cn", "Cf", "Co", "Zl", "Zp")).filter(
    lambda char: not is_invisible(char))


def text(min_size: int = 1, max_size: int = 60) -> st.SearchStrategy[str]:
    return st.text(TEXT_CHARS, min_size=min_size, max_size=max_size).filter(lambda s: not is_blank(s))


def name(max_size: int) -> st.SearchStrategy[str]:
    """A drug or brand name: text whose words do not mix Latin, Cyrillic and Greek letters (look-alikes)."""
    return text(max_size=max_size).filter(lambda s: not mixes_scripts(s))


# Doses: up to 6 significant digits at scales from 0.0001 to 100000 (exact decimals, like input).
DOSE = st.builds(lambda digits, exponent: Decimal(digits).scaleb(exponent),
                 st.integers(1, 999_999), st.integers(-4, 0)).filter(lambda d: d <= Decimal(1_000_000))

ROUTES = sorted(terminology.ROUTES.values(), key=lambda r: r.code)
INDICATIONS = sorted(terminology.INDICATIONS.values(), key=lambda c: (c.system, c.code))
#: A maximum per period is an amount (mg, mg/kg), never a rate (schemas.clinical.MaxPerPeriodSchema).
MASS_UNITS = [u for u in DOSE_UNITS
              if u.split("/")[0] in ("g", "mg", "ug") and u.split("/")[-1] in ("g", "mg", "ug", "kg")]
PERIODS = ["PT1H", "PT12H", "P1D", "P1W", "P2W", "P28D"]


@st.composite
def dose_range(draw: Any, route_codes: list[str]) -> dict[str, Any]:
    low, high = sorted([draw(DOSE), draw(DOSE)])
    unit = draw(st.sampled_from(sorted(DOSE_UNITS)))
    cap_units = ["mL"] if unit == "mL" else MASS_UNITS
    cap = draw(st.none() | st.fixed_dictionaries({"value": DOSE, "unit": st.sampled_from(cap_units),
                                                  "period": st.sampled_from(PERIODS)}))
    frequency = draw(st.none() | st.fixed_dictionaries({
        "count": st.integers(1, 24), "period": st.sampled_from(PERIODS), "text": st.none() | text()}))
    if cap is not None:
        # A maximum one minimum dose would exceed is refused (no dose of the range could be given):
        # cap such draws at the range's maximum, in the dose's own unit.
        dose_unit, cap_unit = parse_dose_unit(unit), parse_dose_unit(cap["unit"])
        if (not dose_unit.is_rate and dose_unit.per_kg == cap_unit.per_kg
                and Fraction(cap["value"]) * cap_unit.amount_factor < Fraction(low) * dose_unit.amount_factor):
            cap = {**cap, "value": high, "unit": unit}
    return {"route": draw(st.sampled_from(route_codes)),
            "phase": draw(st.sampled_from(["induction", "maintenance", "single", "titration"])),
            "dose_min": low, "dose_max": high, "unit": unit, "frequency": frequency,
            "duration": draw(st.none() | st.sampled_from(["PT40M", "PT2H", "PT15M"])),
            "max_per_period": cap, "instructions": draw(st.none() | text(max_size=300))}


def _range_key(dose_range: dict[str, Any]) -> str:
    """Equal ranges by value, as the API compares them (Decimal("10") == Decimal("10.0"))."""
    return json.dumps(dose_range, sort_keys=True, default=lambda number: format(number.normalize(), "f"))


@st.composite
def fda_approval(draw: Any) -> dict[str, Any]:
    status = draw(st.sampled_from(["approved", "off_label", "investigational", "not_approved"]))
    approval: dict[str, Any] = {"status": status, "rems_required": draw(st.booleans()),
                                "approved_indication": draw(st.none() | text(max_size=200)),
                                "boxed_warning": draw(st.none() | text(max_size=200))}
    if status == "approved":
        approval["application_number"] = draw(st.sampled_from(["NDA", "ANDA", "BLA"])) + draw(
            st.from_regex(r"\A[0-9]{6}\Z"))
        approval["approval_date"] = draw(st.dates(min_value=datetime(1950, 1, 1).date(),
                                                  max_value=datetime(2025, 12, 31).date())).isoformat()
    else:
        approval["application_number"] = None
        approval["approval_date"] = None
    return approval


@st.composite
def clinical_content(draw: Any) -> dict[str, Any]:
    routes = draw(st.lists(st.sampled_from(ROUTES), min_size=1, max_size=3, unique_by=lambda r: r.code))
    route_codes = [r.code for r in routes]
    indications = draw(st.lists(st.sampled_from(INDICATIONS), min_size=1, max_size=3,
                                unique_by=lambda c: (c.system, c.code)))
    return {
        "title": draw(text(max_size=200)),
        "summary": draw(text(max_size=500)),
        "drug": {"name": draw(name(max_size=100)),
                 "rxnorm_cui": draw(st.none() | st.from_regex(r"\A[1-9][0-9]{0,7}\Z")),
                 "brand_names": draw(st.lists(name(max_size=40), max_size=3, unique_by=str.casefold)),
                 "dea_schedule": draw(st.none() | st.sampled_from(["CI", "CII", "CIII", "CIV", "CV"]))},
        "indications": [{"system": c.system, "code": c.code, "display": c.display} for c in indications],
        "routes": [{"system": terminology.SNOMED, "code": r.code, "display": r.display} for r in routes],
        "dosing_ranges": draw(st.lists(dose_range(route_codes), min_size=1, max_size=3, unique_by=_range_key)),
        "fda_approval": draw(fda_approval()),
        "sources": [{"title": draw(text(max_size=100)), "url": "https://example.org/label.pdf", "supports": []}],
        "verification_notes": draw(st.lists(text(max_size=100), max_size=2)),
    }


def wire(value: Any) -> Any:
    """What the client sends: exact decimals as JSON numbers (via the test client's JSON encoder)."""
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value


def normalised(value: Any) -> Any:
    """Numbers as exact decimals, so 84, 84.0 and Decimal('84.000') compare equal."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value)).normalize()
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalised(v) for v in value]
    return value


@pytest.mark.slow
@given(content=clinical_content())
@PROPERTY_SETTINGS
def test_any_valid_record_round_trips_unchanged(client: FlaskClient, backend: str, content: dict[str, Any]) -> None:
    protocol_id = f"prop-{uuid.uuid4().hex[:12]}"
    created = client.post("/v1/protocols", json={"id": protocol_id, **wire(content)})
    assert created.status_code == 201, created.get_json()
    fetched = client.get(f"/v1/protocols/{protocol_id}")
    assert fetched.status_code == 200 and fetched.headers["ETag"] == created.headers["ETag"]
    stored = fetched.get_json()
    for field in CONTENT_FIELDS:
        assert normalised(stored[field]) == normalised(content[field]), field
    assert stored["version"] == 1 and stored["id"] == protocol_id
    # Every dose keeps its exact decimal value, digit for digit.
    for sent, got in zip(content["dosing_ranges"], stored["dosing_ranges"], strict=True):
        assert Decimal(str(got["dose_min"])) == sent["dose_min"]
        assert Decimal(str(got["dose_max"])) == sent["dose_max"]
    _counts["round_trips"] += 1
    record_figures("properties", backend, **_counts)


# ------------------------------------------------------------------------ write sequences

BASE = datetime(2020, 1, 1)


@dataclass(frozen=True)
class Write:
    kind: str  # "revise" | "draft" | "retire" (DELETE) | "put-retired" (PUT with status retired)
    offset_hours: int  # effective_from = BASE + offset (any order: backdating included)


WRITES = st.lists(st.builds(Write, st.sampled_from(["revise", "revise", "draft", "retire", "put-retired"]),
                            st.integers(0, 24 * 60)), max_size=7)


@dataclass
class ModelVersion:
    version: int
    status: str
    effective_from: datetime
    title: str  # stands for the content: a retirement repeats the content it retires


def model_retired_title(versions: list[ModelVersion], at: datetime) -> str:
    """The content a retirement at ``at`` repeats: the version in effect just before it (one starting
    at ``at`` loses that instant to the retirement), else the newest published one (the API refuses a
    retirement when none is published; a create here is active)."""
    published = [v for v in versions if v.status != "draft"]
    in_effect = [v for v in published if v.effective_from < at]
    if in_effect:
        return max(in_effect, key=lambda v: (v.effective_from, v.version)).title
    return max(published, key=lambda v: v.version).title


def model_effective(versions: list[ModelVersion], at: datetime) -> tuple[int, int | None]:
    """The reference answer: (HTTP status, version). Latest effective_from wins, ties to the higher
    version; drafts are never in effect; a retirement in effect answers 410."""
    candidates = [v for v in versions if v.status != "draft" and v.effective_from <= at]
    if not candidates:
        return 404, None
    winner = max(candidates, key=lambda v: (v.effective_from, v.version))
    return (410 if winner.status == "retired" else 200), winner.version


def repeats_newest(versions: list[ModelVersion], status: str, at: datetime, title: str) -> bool:
    """Whether a write is the newest version again (same status, instant and content): the API answers
    200 with that version and appends nothing, for a PUT and for a dated retirement alike."""
    newest = versions[-1]
    return (newest.status, newest.effective_from, newest.title) == (status, at, title)


def model_undoes_retirement(versions: list[ModelVersion], at: datetime) -> bool:
    """Whether an active version taking effect after ``at`` wins its instant: a retirement at ``at``
    would be undone by it, so the API refuses it (409) and appends nothing."""
    winners: dict[datetime, ModelVersion] = {}
    for v in sorted(versions, key=lambda v: v.version):  # the higher version wins its instant
        if v.status != "draft" and v.effective_from > at:
            winners[v.effective_from] = v
    return any(v.status == "active" for v in winners.values())


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.slow
@given(first_offset=st.integers(0, 24 * 60), writes=WRITES)
# Found by `make fuzz` (10 x the CI budget): a retirement sent again at the same instant, which the
# model appended a second time while the API answers with the first (a retry). Once retiring what was
# in effect before it, once at the creation's own instant (it then repeats the newest published).
@example(first_offset=0, writes=[Write("retire", 5), Write("retire", 5)])
@example(first_offset=0, writes=[Write("retire", 0), Write("retire", 0)])
@PROPERTY_SETTINGS
def test_any_write_sequence_matches_the_reference_model(client: FlaskClient, backend: str, first_offset: int,
                                                        writes: list[Write]) -> None:
    from tests.factories import protocol_payload

    protocol_id = f"seq-{uuid.uuid4().hex[:12]}"
    first = BASE + timedelta(hours=first_offset)
    created = client.post("/v1/protocols", json=protocol_payload(protocol_id, title="created",
                                                                 effective_from=iso(first)))
    assert created.status_code == 201, created.get_json()
    model = [ModelVersion(1, "active", first, "created")]
    etag = created.headers["ETag"]
    for index, write in enumerate(writes):
        at = BASE + timedelta(hours=write.offset_hours)
        if write.kind == "retire":
            response = client.delete(f"/v1/protocols/{protocol_id}", query_string={"effective_from": iso(at)},
                                     headers={"If-Match": etag})
            if model_undoes_retirement(model, at):
                assert response.status_code == 409, (model, iso(at), response.get_json())
                _counts["refused_retirements"] += 1
                continue
            assert response.status_code == 200, response.get_json()
            title = model_retired_title(model, at)
            if repeats_newest(model, "retired", at, title):
                # The newest is this very retirement (a retry): answered with it, nothing appended, as a
                # PUT that repeats the newest version is (protocols.versioning.retire's docstring).
                assert response.get_json()["version"] == model[-1].version, response.get_json()
                assert response.headers["ETag"] == etag
                _counts["repeated_retirements"] += 1
                continue
            model.append(ModelVersion(len(model) + 1, "retired", at, title))
        else:
            status = {"draft": "draft", "put-retired": "retired"}.get(write.kind, "active")
            # A retirement written with PUT repeats the content it retires, as DELETE's does.
            title = model_retired_title(model, at) if status == "retired" else f"revision {index}"
            body = protocol_payload(protocol_id, title=title, status=status, effective_from=iso(at))
            response = client.put(f"/v1/protocols/{protocol_id}", json=body, headers={"If-Match": etag})
            if status == "retired" and model_undoes_retirement(model, at):  # the rule DELETE obeys
                assert response.status_code == 409, (model, iso(at), response.get_json())
                _counts["refused_retirements"] += 1
                continue
            if repeats_newest(model, status, at, title):
                assert response.status_code == 200, response.get_json()
                continue
            assert response.status_code == 201, response.get_json()
            model.append(ModelVersion(len(model) + 1, status, at, title))
        assert response.get_json()["version"] == len(model)
        etag = response.headers["ETag"]
        _counts["writes"] += 1

    versions = client.get(f"/v1/protocols/{protocol_id}/versions", query_string={"page_size": 100}).get_json()
    assert [v["version"] for v in versions["items"]] == list(range(len(model), 0, -1))  # gapless, newest first
    assert [v["status"] for v in reversed(versions["items"])] == [v.status for v in model]

    instants = {BASE - timedelta(days=1), BASE + timedelta(days=400)}
    for version in model:
        instants |= {version.effective_from, version.effective_from - timedelta(seconds=1),
                     version.effective_from + timedelta(seconds=1)}
    for at in sorted(instants):
        expected_status, expected_version = model_effective(model, at)
        response = client.get(f"/v1/protocols/{protocol_id}", query_string={"as_of": iso(at)})
        assert response.status_code == expected_status, (iso(at), model, response.get_json())
        if expected_version is not None:
            assert response.get_json()["version"] == expected_version, (iso(at), model)
        _counts["as_of_checks"] += 1
    now_status, now_version = model_effective(model, datetime(2100, 1, 1))
    now = client.get(f"/v1/protocols/{protocol_id}")
    assert now.status_code == now_status
    if now_version is not None:
        assert now.get_json()["version"] == now_version
    _counts["write_sequences"] += 1
    record_figures("properties", backend, **_counts)
