"""The curated catalog: every file validates, loading is idempotent, Spravato's label history."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.cli import validate_entry
from protocols import catalog, record
from schemas.protocol import ProtocolCreateSchema
from tests.factories import protocol_payload

FILES = catalog.read_catalog()
ENTRIES = [(f.path.name, index, entry) for f in FILES for index, entry in enumerate(f.entries)]
SPRAVATO = "esketamine-nasal-spravato"
REQUIRED = {
    "ketamine-iv-anesthesia-induction", "ketamine-im-anesthesia-induction", SPRAVATO,
    "ketamine-iv-trd-off-label", "ketamine-iv-crps-off-label", "zuranolone-oral-ppd",
    "psilocybin-oral-trd-investigational",
}


def test_catalog_holds_the_required_protocols():
    assert {f.protocol_id for f in FILES} >= REQUIRED
    for catalog_file in FILES:
        assert catalog_file.path.stem == catalog_file.protocol_id, "one file per protocol, named by its id"


@pytest.mark.parametrize(("name", "index", "entry"), ENTRIES, ids=[f"{n}#{i}" for n, i, _ in ENTRIES])
def test_every_catalog_entry_validates_with_the_wire_schema(name, index, entry):
    assert ProtocolCreateSchema().validate(entry) == {}


@pytest.mark.parametrize(("name", "index", "entry"), ENTRIES, ids=[f"{n}#{i}" for n, i, _ in ENTRIES])
def test_every_entry_cites_sources_for_its_facts(name, index, entry):
    supported = {path for source in entry["sources"] for path in source.get("supports", [])}
    assert all(source["url"].startswith("https://") or source["url"].startswith("http://")
               for source in entry["sources"])
    for index, _ in enumerate(entry["dosing_ranges"]):  # each range: one cited range said nothing of the others
        assert {"dosing_ranges", f"dosing_ranges.{index}"} & supported, f"dosing_ranges.{index} cites no source"
    approval = entry["fda_approval"]
    if approval["status"] == "approved":
        assert approval["approval_date"] and approval["application_number"]
        assert "fda_approval.approval_date" in supported
        assert "fda_approval.application_number" in supported


#: Label facts every entry in effect must trace: a source's ``supports`` names the field (or a path
#: inside it), or a verification note begins with the field's path and says what was and was not
#: checked. An absence (no brand, no boxed warning, no REMS, no approved indication) is a fact too.
#: Indication codes are traced by ``uncited_indications`` (each entry, by a source only).
TRACED_FIELDS = ("routes", "drug.dea_schedule", "drug.rxnorm_cui", "drug.brand_names", "fda_approval.status",
                 "fda_approval.approved_indication", "fda_approval.rems_required", "fda_approval.boxed_warning")

#: Fields traced only when the record gives a value (an empty one is not a claim of its own).
TRACED_WHEN_GIVEN = {"drug.dea_schedule": "dea_schedule", "drug.rxnorm_cui": "rxnorm_cui"}


def untraced_fields(entry: dict[str, Any]) -> list[str]:
    """The fields of ``TRACED_FIELDS`` that no source of ``entry`` supports and no note covers (the DEA
    schedule and the RxNorm code only when the record gives one)."""
    supported = {path for source in entry["sources"] for path in source.get("supports", [])}
    notes = entry.get("verification_notes", [])
    untraced = []
    for name in TRACED_FIELDS:
        if name in TRACED_WHEN_GIVEN and not entry["drug"].get(TRACED_WHEN_GIVEN[name]):
            continue
        cited = any(path == name or path.startswith(f"{name}.") for path in supported)
        noted = any(re.match(rf"{re.escape(name)}(?!\w)", note) for note in notes)
        if not (cited or noted):
            untraced.append(name)
    return untraced


def test_untraced_fields_counts_a_cited_path_inside_the_field_or_a_note_on_it_and_nothing_else():
    entry = {"drug": {"dea_schedule": "CIII", "rxnorm_cui": "6130"}, "sources": [
        {"supports": ["routes.0", "fda_approval.status", "drug.dea_schedule_text", "fda_approval.boxed_warnings",
                      "drug.rxnorm_cuis"]}],
        "verification_notes": ["drug.brand_names: none marketed; not searched in DailyMed.",
                               "fda_approval.rems_required_x: not this field",
                               "The fda_approval.approved_indication is not at the start.",
                               "The drug.rxnorm_cui is not at the start either."]}
    assert untraced_fields(entry) == ["drug.dea_schedule", "drug.rxnorm_cui", "fda_approval.approved_indication",
                                      "fda_approval.rems_required", "fda_approval.boxed_warning"]
    assert "drug.dea_schedule" not in untraced_fields({**entry, "drug": {"dea_schedule": None, "rxnorm_cui": "6130"}})
    for absent in ({"dea_schedule": "CIII", "rxnorm_cui": None}, {"dea_schedule": "CIII"}):
        assert "drug.rxnorm_cui" not in untraced_fields({**entry, "drug": absent})
    cited = {**entry, "sources": [*entry["sources"], {"supports": ["drug.rxnorm_cui"]}]}
    assert "drug.rxnorm_cui" not in untraced_fields(cited)
    noted = {**entry, "verification_notes": [*entry["verification_notes"], "drug.rxnorm_cui: 6130, ingredient."]}
    assert "drug.rxnorm_cui" not in untraced_fields(noted)


@pytest.mark.parametrize("catalog_file", FILES, ids=[f.path.name for f in FILES])
def test_the_newest_entry_of_every_file_cites_or_notes_its_label_facts(catalog_file):
    """Found by a probe: the off-label IV ketamine records (TRD, CRPS) gave CIII with no source and no
    note (corrections appended). A clinical data audit then found the same for the routes, brand names,
    approval status, approved indication, REMS and boxed warning of the newest entry of every file;
    sourcing corrections (same content, same start, more sources and notes) are appended. Earlier
    versions stay as recorded."""
    assert untraced_fields(catalog_file.entries[-1]) == [], catalog_file.path.name


def _start(entry: dict[str, Any]) -> datetime | None:
    """An entry's effective_from as an instant (None for a dateless single record)."""
    value = entry.get("effective_from")
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def entries_in_effect(entries: list[dict[str, Any]]) -> list[int]:
    """The indexes of the entries in effect for some period of the history the file records. At an
    instant T the version in effect is the one with the latest effective_from <= T, ties going to the
    higher version (the later entry): so for each distinct start, the last entry with that start, unless
    it is a retirement (then nothing is in effect from that start)."""
    last: dict[datetime | None, int] = {}
    for index, entry in enumerate(entries):
        last[_start(entry)] = index
    return sorted(index for index in last.values() if entries[index]["status"] == "active")


def test_entries_in_effect_are_the_last_of_each_start_and_never_a_retirement():
    def entry(day: str, status: str = "active") -> dict[str, Any]:
        return {"effective_from": f"{day}T00:00:00Z", "status": status}

    history = [entry("2019-03-05"), entry("2020-07-31"), entry("2025-01-21"), entry("2025-01-21"),
               entry("2019-03-05"), {"effective_from": "2020-07-31T00:00:00+00:00", "status": "active"},
               entry("2025-01-21"), entry("2026-01-01", "retired")]
    assert entries_in_effect(history) == [4, 5, 6]
    assert entries_in_effect([{"effective_from": None, "status": "active"}]) == [0]


IN_EFFECT = [(f.path.name, index, f.entries[index]) for f in FILES for index in entries_in_effect(f.entries)]


@pytest.mark.parametrize(("name", "index", "entry"), IN_EFFECT, ids=[f"{n}#{i}" for n, i, _ in IN_EFFECT])
def test_every_entry_in_effect_for_some_period_cites_or_notes_its_label_facts(name, index, entry):
    """Found by a clinical-data review: the newest entry of every file traced its label facts, but an
    as-of reading of Spravato for 2019-2024 returned the version in effect then (a back-dated
    correction, not the newest entry), whose brand name, approval status, routes and (2020) DEA schedule
    had no source and no note. Every entry that some instant resolves to (the last entry of each start,
    see ``entries_in_effect``) must trace them; entries outranked at every instant stay as recorded."""
    assert untraced_fields(entry) == [], (name, f"versions.{index}", entry["effective_from"])


def uncited_indications(entry: dict[str, Any]) -> list[str]:
    """The indication entries (``indications.{i}``) of ``entry`` that no source's ``supports`` names, as
    ``indications`` or ``indications.{i}``. A verification note does not count: a note on the choice of
    code does not say where the code was checked."""
    supported = {path for source in entry["sources"] for path in source.get("supports", [])}
    return [f"indications.{i}" for i, _ in enumerate(entry.get("indications") or [])
            if not {"indications", f"indications.{i}"} & supported]


def test_uncited_indications_counts_the_whole_list_or_the_entry_and_not_a_note():
    entry: dict[str, Any] = {
        "indications": [{"code": "F32.9"}, {"code": "F33.9"}, {"code": "370143000"}],
        "sources": [{"supports": ["indications.1", "indications.10", "indications.0.code", "indications_x"]}],
        "verification_notes": ["indications: the underlying MDD is coded.", "indications.0: F32.9."]}
    assert uncited_indications(entry) == ["indications.0", "indications.2"]
    assert uncited_indications({**entry, "sources": [*entry["sources"], {"supports": ["indications"]}]}) == []
    assert uncited_indications({**entry, "indications": []}) == []


@pytest.mark.parametrize(("name", "index", "entry"), IN_EFFECT, ids=[f"{n}#{i}" for n, i, _ in IN_EFFECT])
def test_every_indication_of_an_entry_in_effect_for_some_period_cites_its_source(name, index, entry):
    """Found by a clinical-data probe: the indication codes (what a CDS Hooks reasonCode is matched
    against, FHIR's indicationCodeableConcept) of Spravato's versions in effect for 2019, 2020 and
    2025, of the TRD ketamine and psilocybin records and of zuranolone's SNOMED CT alternate cited no
    source; ``TRACED_FIELDS`` left indications out and a note on the choice of code passed for them.
    Every indication entry of every entry in effect for some period cites where its code was taken from
    (``protocols/data/icd10cm.json`` and ``snomed_indications.json`` give a source per code)."""
    assert uncited_indications(entry) == [], (name, f"versions.{index}", entry["effective_from"])


@pytest.mark.parametrize("catalog_file", FILES, ids=[f.path.name for f in FILES])
def test_a_sourcing_correction_changes_no_clinical_value_and_drops_no_source_or_note(catalog_file):
    """A correction that only adds sources keeps the content, status and start of the entry it corrects
    (the previous entry with the same start), and every source (with what it supports) and note of it."""
    entries = catalog_file.entries
    corrections = [i for i, e in enumerate(entries) if (e.get("change_note") or "").startswith(
        "Correction: sourcing only.")]
    assert corrections, "every file's sourcing correction is found by its change note (so checked here)"
    for index in corrections:
        entry = entries[index]
        # The entry it corrects is the last one before it with the same start: a back-dated correction
        # follows entries of other periods, so the entry just before it may be of another period.
        same_start = [i for i in range(index) if _start(entries[i]) == _start(entry)]
        assert same_start, (catalog_file.path.name, index, "a correction follows the entry it corrects")
        before = entries[same_start[-1]]
        for name in (*record.CONTENT_FIELDS, "status", "effective_from"):
            if name not in ("sources", "verification_notes"):
                assert entry.get(name) == before.get(name), (catalog_file.path.name, index, name)
        assert set(before.get("verification_notes", [])) <= set(entry.get("verification_notes", []))
        for source in before["sources"]:
            (kept,) = [s for s in entry["sources"] if (s["title"], s["url"]) == (source["title"], source["url"])]
            assert set(source.get("supports", [])) <= set(kept.get("supports", [])), source["url"]


def test_catalog_never_presents_ketanest_as_a_us_product():
    """The patient article's claim (Ketanest = a US nasal spray) must not be repeated in any record."""
    for _name, _index, entry in ENTRIES:
        text = json.dumps(entry).lower()
        assert "ketanest" not in text


def test_ketalar_label_facts():
    by_id = {f.protocol_id: f.entries[-1] for f in FILES}
    iv, im = by_id["ketamine-iv-anesthesia-induction"], by_id["ketamine-im-anesthesia-induction"]
    for entry in (iv, im):
        assert entry["fda_approval"]["application_number"] == "NDA016812"
        assert entry["fda_approval"]["approval_date"].startswith("1970-")
    assert (iv["dosing_ranges"][0]["dose_min"], iv["dosing_ranges"][0]["dose_max"]) == (1, 4.5)
    assert (im["dosing_ranges"][0]["dose_min"], im["dosing_ranges"][0]["dose_max"]) == (6.5, 13)
    assert iv["dosing_ranges"][0]["unit"] == im["dosing_ranges"][0]["unit"] == "mg/kg"


def test_off_label_and_investigational_status():
    by_id = {f.protocol_id: f.entries[-1] for f in FILES}
    assert by_id["ketamine-iv-trd-off-label"]["fda_approval"]["status"] == "off_label"
    assert by_id["ketamine-iv-crps-off-label"]["fda_approval"]["status"] == "off_label"
    assert by_id["psilocybin-oral-trd-investigational"]["fda_approval"]["status"] == "investigational"
    trd = by_id["ketamine-iv-trd-off-label"]["dosing_ranges"][0]
    assert (trd["dose_min"], trd["unit"], trd["duration"]) == (0.5, "mg/kg", "PT40M")


def _versions_count(client, protocol_id):
    body = client.get(f"/v1/protocols/{protocol_id}/versions?page_size=100").get_json()
    return len(body["items"])


def _entries(protocol_id: str) -> int:
    """How many versions the curated file of ``protocol_id`` holds (a correction adds one)."""
    data = yaml.load((catalog.CATALOG_DIR / f"{protocol_id}.yaml").read_text(), Loader=catalog._StringTimestampLoader)
    return len(data["versions"])


def test_load_is_idempotent(app, client):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["protocols", "load"])
    assert first.exit_code == 0, first.output
    counts = {f.protocol_id: _versions_count(client, f.protocol_id) for f in FILES}
    assert counts == {f.protocol_id: len(f.entries) for f in FILES}
    second = runner.invoke(args=["protocols", "load"])
    assert second.exit_code == 0, second.output
    assert all(line.endswith(": unchanged") for line in second.output.strip().splitlines())
    assert {f.protocol_id: _versions_count(client, f.protocol_id) for f in FILES} == counts


def test_changed_file_appends_one_version(app, client, tmp_path):
    """An entry added at the end of a versions file, or a single-record file's record edited, appends one
    version; loading again appends nothing."""
    directory = tmp_path / "catalog"
    shutil.copytree(catalog.CATALOG_DIR, directory)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["protocols", "load", str(directory)]).exit_code == 0
    pid = "psilocybin-oral-trd-investigational"
    path = directory / f"{pid}.yaml"
    data = yaml.load(path.read_text(), Loader=catalog._StringTimestampLoader)
    loaded = len(data["versions"])
    newest = data["versions"][-1]
    data["versions"].append({**newest, "summary": newest["summary"] + " Reviewed.",
                             "effective_from": "2024-01-01T00:00:00Z", "change_note": "Reviewed."})
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    result = runner.invoke(args=["protocols", "load", str(directory)])
    assert result.exit_code == 0, result.output
    assert f"{pid}: appended versions [{loaded + 1}]" in result.output
    assert _versions_count(client, pid) == loaded + 1
    again = runner.invoke(args=["protocols", "load", str(directory)])
    assert f"{pid}: unchanged" in again.output

    single = directory / "single-record-protocol.yaml"
    record_data = {**data["versions"][0], "id": "single-record-protocol"}
    single.write_text(yaml.safe_dump(record_data, sort_keys=False, allow_unicode=True))
    assert "single-record-protocol: appended versions [1]" in runner.invoke(
        args=["protocols", "load", str(directory)]).output
    single.write_text(yaml.safe_dump({**record_data, "summary": record_data["summary"] + " Reviewed.",
                                      "effective_from": "2024-01-01T00:00:00Z"}, sort_keys=False, allow_unicode=True))
    edited = runner.invoke(args=["protocols", "load", str(directory)])
    assert edited.exit_code == 0 and "single-record-protocol: appended versions [2]" in edited.output, edited.output
    assert "single-record-protocol: unchanged" in runner.invoke(args=["protocols", "load", str(directory)]).output



def _written_through_the_api(client, protocol_id, **changes):
    current = client.get(f"/v1/protocols/{protocol_id}")
    body = current.get_json()
    for name in ("version", "recorded_at", "recorded_by", "request_id"):
        body.pop(name)
    body.update(changes)
    response = client.put(f"/v1/protocols/{protocol_id}", json=body, headers={"If-Match": current.headers["ETag"]})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_load_leaves_a_back_dated_api_correction_alone(app, client, tmp_path):
    """A correction dated from when the fact applied (as the README says to date one) was undone by the
    next load (make run loads on every start): the file's last entry was appended again with the same
    effective_from, and the higher version won at every instant (found by a probe)."""
    directory = tmp_path / "catalog"
    shutil.copytree(catalog.CATALOG_DIR, directory)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["protocols", "load", str(directory)]).exit_code == 0
    pid = "esketamine-nasal-spravato"
    before = _versions_count(client, pid)
    ranges = client.get(f"/v1/protocols/{pid}").get_json()["dosing_ranges"]
    ranges[0]["dose_max"] = 56
    corrected = _written_through_the_api(client, pid, dosing_ranges=ranges, change_note="Correction: induction max")
    result = runner.invoke(args=["protocols", "load", str(directory)])
    assert result.exit_code == 0, result.output
    assert (f"{pid}: left alone: its newest version ({before + 1}, active) was written by test-all-scopes"
            in result.output)
    assert "ketamine-iv-anesthesia-induction: unchanged" in result.output
    assert _versions_count(client, pid) == before + 1
    assert client.get(f"/v1/protocols/{pid}").get_json()["dosing_ranges"][0]["dose_max"] == 56

    # The change put in the file, as its last entry, hands the protocol back to the loader.
    path = directory / f"{pid}.yaml"
    data = yaml.load(path.read_text(), Loader=catalog._StringTimestampLoader)
    entry = {k: v for k, v in corrected.items() if k not in ("id", "version", "recorded_at", "recorded_by",
                                                             "request_id")}
    data["versions"].append(entry)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    again = runner.invoke(args=["protocols", "load", str(directory)])
    assert f"{pid}: unchanged" in again.output, again.output
    assert _versions_count(client, pid) == before + 1
    # ... and the file's later entries load after it.
    data["versions"].append({**entry, "change_note": "Correction: wording.", "summary": entry["summary"] + " Checked."})
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    later = runner.invoke(args=["protocols", "load", str(directory)])
    assert f"{pid}: appended versions [{before + 2}]" in later.output, later.output


def test_an_api_version_placed_after_entries_never_loaded_is_refused_and_the_message_says_where(
        app, client, tmp_path):
    """Found by a probe: a deployment with Spravato's first five entries and a correction written through
    the API, upgraded to a file with three more entries. The loader said to add the API version as the
    file's last entry; done so, it adopted it there, skipped the three entries (back-dated corrections of
    2019 and 2020), and every later load said "unchanged". The message names the place (right after the
    last entry the history holds); further down, the load names the entries it would skip, exits 1 and
    appends nothing; at the right place, the entries after it are appended on top."""
    directory = tmp_path / "catalog"
    directory.mkdir()
    path = directory / f"{SPRAVATO}.yaml"
    full = yaml.load((catalog.CATALOG_DIR / f"{SPRAVATO}.yaml").read_text(), Loader=catalog._StringTimestampLoader)
    path.write_text(yaml.safe_dump({**full, "versions": full["versions"][:5]}, sort_keys=False, allow_unicode=True))
    runner = app.test_cli_runner()
    assert runner.invoke(args=["protocols", "load", str(directory)]).exit_code == 0
    api = _written_through_the_api(client, SPRAVATO, summary="Corrected through the API.", effective_from=None)
    entry = {k: v for k, v in api.items() if k not in ("id", "version", "recorded_at", "recorded_by", "request_id")}

    path.write_text(yaml.safe_dump(full, sort_keys=False, allow_unicode=True))  # the upgrade: every entry
    count = len(full["versions"])
    left = runner.invoke(args=["protocols", "load", str(directory)])
    assert left.exit_code == 0 and "add it to the file right after versions.4 (the last entry the history holds)" \
        in left.output, left.output

    last = {**full, "versions": [*full["versions"], entry]}
    path.write_text(yaml.safe_dump(last, sort_keys=False, allow_unicode=True))
    refused = runner.invoke(args=["protocols", "load", str(directory)])
    assert refused.exit_code == 1, refused.output
    missing = ", ".join(f"versions.{index}" for index in range(5, count))
    assert (f"{SPRAVATO}.yaml: versions.{count} is the newest version, written through the API, but {missing} "
            "before it in the file are not in the history") in refused.output
    assert "move it right after versions.4" in refused.output
    assert _versions_count(client, SPRAVATO) == 6

    placed = {**full, "versions": [*full["versions"][:5], entry, *full["versions"][5:]]}
    path.write_text(yaml.safe_dump(placed, sort_keys=False, allow_unicode=True))
    loaded = runner.invoke(args=["protocols", "load", str(directory)])
    appended = ", ".join(str(version) for version in range(7, count + 2))  # the API version is 6
    assert loaded.exit_code == 0 and f"{SPRAVATO}: appended versions [{appended}]" in loaded.output, loaded.output
    week_9 = client.get(f"/v1/protocols/{SPRAVATO}?as_of=2019-06-01T00:00:00Z").get_json()["dosing_ranges"][2]
    assert week_9["frequency"]["period_max"] == "P2W"


def test_file_and_history_are_aligned_in_order_so_a_restated_entry_does_not_hide_a_correction(
        app, client, tmp_path):
    """Found by a probe of the fix above: "held" meant "matches some stored version", so a file that
    restates a version after a back-dated correction ([A, B, A', B], as Spravato ends with the version in
    effect) counted the restated B as held and skipped A'. File and history are aligned in order: each
    version is the first matching entry after the previous version's. An API version restated later in
    the file is adopted at its first place after what the history holds."""
    zuranolone = "zuranolone-oral-ppd"
    base = yaml.load((catalog.CATALOG_DIR / f"{zuranolone}.yaml").read_text(),
                     Loader=catalog._StringTimestampLoader)["versions"][0]
    a = {**base, "effective_from": "2021-01-01T00:00:00Z", "summary": "A."}
    b = {**base, "effective_from": "2024-01-01T00:00:00Z", "summary": "B."}
    a_corrected = {**a, "summary": "A, corrected.", "change_note": "Correction: A."}
    directory = tmp_path / "catalog"
    directory.mkdir()
    path = directory / f"{zuranolone}.yaml"

    def write(*versions):
        path.write_text(yaml.safe_dump({"id": zuranolone, "versions": list(versions)}, sort_keys=False,
                                       allow_unicode=True))
        return app.test_cli_runner().invoke(args=["protocols", "load", str(directory)])

    def as_of_2022():
        return client.get(f"/v1/protocols/{zuranolone}?as_of=2022-01-01T00:00:00Z").get_json()["summary"]

    assert write(a, b).exit_code == 0
    upgraded = write(a, b, a_corrected, b)  # by the loader only: appends A' and B again
    assert f"{zuranolone}: appended versions [3, 4]" in upgraded.output, upgraded.output
    assert as_of_2022() == "A, corrected."

    other = "zuranolone-aligned"
    path.unlink()
    path = directory / f"{other}.yaml"
    zuranolone = other
    assert write(a, b).exit_code == 0
    api = _written_through_the_api(client, other, summary="C, through the API.", effective_from=None)
    c = {k: v for k, v in api.items() if k not in ("id", "version", "recorded_at", "recorded_by", "request_id")}
    left = write(a, b, a_corrected, b)
    assert "add it to the file right after versions.1" in left.output, left.output
    late = write(a, b, a_corrected, b, c)
    assert late.exit_code == 1 and "versions.2, versions.3 before it in the file are not in the history" \
        in late.output, late.output
    assert as_of_2022() == "A."
    restated = write(a, b, c, a_corrected, c)
    assert restated.exit_code == 0 and f"{other}: appended versions [4, 5]" in restated.output, restated.output
    assert as_of_2022() == "A, corrected."
    assert client.get(f"/v1/protocols/{other}").get_json()["summary"] == "C, through the API."


def test_restatements_edits_and_misplaced_api_versions_are_named_and_never_undo_an_api_write(
        app, client, tmp_path):
    """Found by a probe of the alignment: (a) an entry repeating the one before it (same content and
    start, a new change note) appended nothing, so it read as "not in the history" and an API version
    after it was refused, with advice that, followed, appended the old content on top of the API write;
    (b) a loaded entry edited in place left its version unaligned, and the load appended only the file's
    last entry (new entries before it skipped) or, with an API version after it, put the edited entry on
    top of the API write. A restatement now goes with the version it repeats; a version this loader
    wrote that is no longer in the file stops that protocol's load (exit 1), nothing appended."""
    base = yaml.load((catalog.CATALOG_DIR / "zuranolone-oral-ppd.yaml").read_text(),
                     Loader=catalog._StringTimestampLoader)["versions"][0]
    a = {**base, "effective_from": "2021-01-01T00:00:00Z", "summary": "A."}
    b = {**base, "effective_from": "2023-08-04T00:00:00Z", "summary": "B."}
    b_restated = {**b, "change_note": "Restated, nothing changed."}
    directory = tmp_path / "catalog"
    directory.mkdir()
    runner = app.test_cli_runner()

    def write(pid, *versions):
        (directory / f"{pid}.yaml").write_text(yaml.safe_dump({"id": pid, "versions": list(versions)},
                                                               sort_keys=False, allow_unicode=True))
        return runner.invoke(args=["protocols", "load", str(directory)])

    restated = "restated-protocol"
    assert f"{restated}: appended versions [1, 2]" in write(restated, a, b, b_restated).output
    api = _written_through_the_api(client, restated, summary="C, through the API.", effective_from=None)
    c = {k: v for k, v in api.items() if k not in ("id", "version", "recorded_at", "recorded_by", "request_id")}
    taken = write(restated, a, b, b_restated, c)
    assert taken.exit_code == 0 and f"{restated}: unchanged" in taken.output, taken.output
    (directory / f"{restated}.yaml").unlink()

    edited = "edited-protocol"
    assert f"{edited}: appended versions [1, 2]" in write(edited, a, b).output
    b_edited = {**b, "summary": "B, typo fixed in place."}
    d = {**base, "effective_from": "2024-01-01T00:00:00Z", "summary": "D."}
    refused = write(edited, a, b_edited, d)
    assert refused.exit_code == 1 and (f"{edited}.yaml: version 2, written by this loader, is not in the file "
                                       "after versions.0") in refused.output, refused.output
    assert _versions_count(client, edited) == 2
    api = _written_through_the_api(client, edited, summary="X, through the API.", effective_from=None)
    x = {k: v for k, v in api.items() if k not in ("id", "version", "recorded_at", "recorded_by", "request_id")}
    for layout in ((a, b_edited, x), (a, x, b_edited)):
        assert write(edited, *layout).exit_code == 1
        assert client.get(f"/v1/protocols/{edited}").get_json()["summary"] == "X, through the API."
    assert write(edited, a, b, x, d).exit_code == 0
    assert client.get(f"/v1/protocols/{edited}?as_of=2024-06-01T00:00:00Z").get_json()["summary"] == "D."
    (directory / f"{edited}.yaml").unlink()

    early = "early-protocol"
    assert write(early, a, b).exit_code == 0
    api = _written_through_the_api(client, early, summary="Y.", effective_from=None)
    y = {k: v for k, v in api.items() if k not in ("id", "version", "recorded_at", "recorded_by", "request_id")}
    left = write(early, a, y, b)
    assert left.exit_code == 0 and "holds it at versions.1, before entries the history holds after it" in left.output
    (directory / f"{early}.yaml").unlink()

    single = "single-protocol"
    (directory / f"{single}.yaml").write_text(yaml.safe_dump({"id": single, **a}, sort_keys=False))
    assert runner.invoke(args=["protocols", "load", str(directory)]).exit_code == 0
    _written_through_the_api(client, single, summary="Z.", effective_from=None)
    (directory / f"{single}.yaml").write_text(yaml.safe_dump({"id": single, **b}, sort_keys=False))
    alone = runner.invoke(args=["protocols", "load", str(directory)])
    assert "make it the file's record; to change the protocol after that, turn the file into a versions: list" \
        in alone.output
    versions = [a, {**b, "effective_from": None}]
    (directory / f"{single}.yaml").write_text(yaml.safe_dump({"id": single, "versions": versions}, sort_keys=False))
    dateless = runner.invoke(args=["protocols", "load", str(directory)])
    assert dateless.exit_code == 1 and "versions.1: effective_from is required in a versions list" in dateless.output


def test_load_leaves_an_api_revert_to_an_earlier_entry_alone(app, client):
    """A back-dated revert to version 1's content matched the file's first entry, so the loader
    appended every entry after it again and undid the revert (found by a probe of the first fix)."""
    runner = app.test_cli_runner()
    assert runner.invoke(args=["protocols", "load"]).exit_code == 0
    pid = "ketamine-iv-anesthesia-induction"
    first = client.get(f"/v1/protocols/{pid}/versions/1").get_json()
    reverted = _written_through_the_api(client, pid, dosing_ranges=first["dosing_ranges"],
                                        sources=first["sources"], verification_notes=first["verification_notes"],
                                        change_note=first["change_note"])
    entries = _entries(pid)
    assert reverted["version"] == entries + 1
    result = runner.invoke(args=["protocols", "load"])
    assert f"{pid}: left alone: its newest version ({entries + 1}, active)" in result.output, result.output
    assert _versions_count(client, pid) == entries + 1
    assert len(client.get(f"/v1/protocols/{pid}").get_json()["dosing_ranges"]) == 1



def test_an_edited_last_entry_does_not_hand_an_api_revert_back(app, client, tmp_path):
    """After a revert through the API, editing the file's last entry (the loader's own last write no
    longer in the file) made every entry count as "after" it: the revert matched the first entry and the
    edited last entry was appended, undoing the revert (found by a probe of the second fix)."""
    pid = "ketamine-iv-anesthesia-induction"
    directory = tmp_path / "catalog"
    directory.mkdir()
    shutil.copyfile(catalog.CATALOG_DIR / f"{pid}.yaml", directory / f"{pid}.yaml")
    runner = app.test_cli_runner()
    entries = _entries(pid)
    assert f"{pid}: appended versions {list(range(1, entries + 1))}" in runner.invoke(
        args=["protocols", "load", str(directory)]).output
    first = client.get(f"/v1/protocols/{pid}/versions/1").get_json()
    _written_through_the_api(client, pid, dosing_ranges=first["dosing_ranges"], sources=first["sources"],
                             verification_notes=first["verification_notes"], change_note=first["change_note"])
    path = directory / f"{pid}.yaml"
    data = yaml.load(path.read_text(), Loader=catalog._StringTimestampLoader)
    data["versions"][-1]["summary"] += " (typo fixed)"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    result = runner.invoke(args=["protocols", "load", str(directory)])
    # The edited entry is the loader's last version, no longer in the file: nothing is appended (a probe of
    # a later fix: the edited entry was appended on top of an API version once the file was rearranged).
    assert result.exit_code == 1, result.output
    assert (f"{pid}.yaml: version {entries}, written by this loader, is not in the file after versions."
            f"{entries - 2}: an entry was edited or removed after it was loaded") in result.output
    assert _versions_count(client, pid) == entries + 1


def test_a_revert_after_a_hand_back_is_left_alone(app, client, tmp_path):
    """Handed back with two API versions (C, then D) added to the file, a later API revert to C was
    undone by an unchanged file: only the loader's own last write marked what the history held, so C
    counted as "after" it and D was appended again (found by a probe of the third fix)."""
    pid = "ketamine-iv-anesthesia-induction"
    directory = tmp_path / "catalog"
    directory.mkdir()
    path = directory / f"{pid}.yaml"
    shutil.copyfile(catalog.CATALOG_DIR / f"{pid}.yaml", path)
    runner = app.test_cli_runner()
    entries = _entries(pid)
    assert f"{pid}: appended versions {list(range(1, entries + 1))}" in runner.invoke(
        args=["protocols", "load", str(directory)]).output
    summary = client.get(f"/v1/protocols/{pid}").get_json()["summary"]
    written = [_written_through_the_api(client, pid, summary=f"{summary} ({name})") for name in ("C", "D")]
    data = yaml.load(path.read_text(), Loader=catalog._StringTimestampLoader)
    for version in written:
        data["versions"].append({k: v for k, v in version.items() if k not in (
            "id", "version", "recorded_at", "recorded_by", "request_id")})  # each with its start
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    assert f"{pid}: unchanged" in runner.invoke(args=["protocols", "load", str(directory)]).output
    _written_through_the_api(client, pid, summary=f"{summary} (C)", change_note="Revert: D was wrong.")
    result = runner.invoke(args=["protocols", "load", str(directory)])
    assert f"{pid}: left alone: its newest version ({entries + 3}, active)" in result.output, result.output
    assert _versions_count(client, pid) == entries + 3
    assert client.get(f"/v1/protocols/{pid}").get_json()["summary"].endswith("(C)")

def test_load_leaves_a_protocol_retired_through_the_api_retired(app, client):
    """Retired through the API from a past date, the protocol was brought back by the next load: the
    file's last entry was appended with its earlier effective_from (found by a probe)."""
    runner = app.test_cli_runner()
    assert runner.invoke(args=["protocols", "load"]).exit_code == 0
    pid = "zuranolone-oral-ppd"
    before = _versions_count(client, pid)
    etag = client.get(f"/v1/protocols/{pid}").headers["ETag"]
    retired = client.delete(f"/v1/protocols/{pid}?effective_from=2023-08-04T00:00:00Z&change_note=withdrawn",
                            headers={"If-Match": etag})
    assert retired.status_code == 200, retired.get_json()
    result = runner.invoke(args=["protocols", "load"])
    assert result.exit_code == 0, result.output
    assert f"{pid}: left alone: its newest version ({before + 1}, retired)" in result.output
    assert client.get(f"/v1/protocols/{pid}").status_code == 410
    assert _versions_count(client, pid) == before + 1


@pytest.mark.parametrize(("text", "message"), [
    (b"id: [unclosed\n", "not valid YAML at line 2"),
    (b"- just\n- a list\n", "a catalog file is a mapping with an 'id'"),
    (b"title: no id\n", "a catalog file is a mapping with an 'id'"),
    (b"id: x-protocol\nversions: []\n", "'versions' is a non-empty list of records"),
    (b"id: x-protocol\nversions: {a: 1}\n", "'versions' is a non-empty list of records"),
    (b"id: x-protocol\nversions: [1, 2]\n", "'versions' is a non-empty list of records"),
    (b"id: caf\xe9\n", "not UTF-8 text"),
], ids=["yaml", "list", "no-id", "empty-versions", "versions-mapping", "versions-numbers", "latin-1"])
def test_unreadable_catalog_files_are_one_line_errors_and_load_nothing(app, client, tmp_path, text, message):
    """Each printed a Python traceback (found by a probe), after nothing or, for an empty versions
    list, in the middle of the load."""
    directory = tmp_path / "catalog"
    shutil.copytree(catalog.CATALOG_DIR, directory)
    (directory / "zz-broken.yaml").write_bytes(text)
    result = app.test_cli_runner().invoke(args=["protocols", "load", str(directory)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"Error: zz-broken.yaml: {message}" in result.output and "Traceback" not in result.output
    assert result.output.strip().endswith("nothing was loaded")
    assert client.get("/v1/protocols/ketamine-iv-anesthesia-induction").status_code == 404


def test_two_files_with_one_id_are_refused_before_anything_is_loaded(app, client, tmp_path):
    """Accepted, they appended each other's entries on every load (found by a probe)."""
    directory = tmp_path / "catalog"
    shutil.copytree(catalog.CATALOG_DIR, directory)
    shutil.copyfile(directory / "zuranolone-oral-ppd.yaml", directory / "zz-copy.yaml")
    result = app.test_cli_runner().invoke(args=["protocols", "load", str(directory)])
    assert result.exit_code == 1
    assert ("zz-copy.yaml: id 'zuranolone-oral-ppd' is also the id in zuranolone-oral-ppd.yaml" in result.output)
    assert client.get("/v1/protocols/ketamine-iv-anesthesia-induction").status_code == 404


def test_an_entry_the_versioning_rules_refuse_is_named_and_the_rest_is_loaded(app, client, tmp_path):
    """A retirement whose content differs from the version it retires printed a traceback naming
    neither the file nor the entry (found by a probe). The versioning rules depend on what is stored,
    so they are applied as each version is written: the entries before the refused one stay, and a
    load after the fix resumes after them."""
    directory = tmp_path / "catalog"
    directory.mkdir()
    shutil.copyfile(catalog.CATALOG_DIR / "zuranolone-oral-ppd.yaml", directory / "a.yaml")
    first = ProtocolCreateSchema().dump(ProtocolCreateSchema().load(
        json.loads(json.dumps(protocol_payload("b-protocol")))))
    first = {**first, "effective_from": "2024-01-01T00:00:00Z"}  # entries of a versions list are dated
    retired = {**first, "status": "retired", "title": "Different content", "effective_from": "2025-01-01T00:00:00Z"}
    (directory / "b.yaml").write_text(yaml.safe_dump({"id": "b-protocol", "versions": [
        {k: v for k, v in first.items() if k != "id"}, {k: v for k, v in retired.items() if k != "id"}]}))
    runner = app.test_cli_runner()
    for attempt in range(2):
        result = runner.invoke(args=["protocols", "load", str(directory)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        refusal = "Error: the versioning rules refused b.yaml: versions.1: a retirement repeats the content"
        assert refusal in result.output
        assert (("b-protocol: appended versions [1], then versions.1 refused (below)" if attempt == 0
                 else "b-protocol: nothing appended: versions.1 refused (below)") in result.output), result.output
    assert _versions_count(client, "b-protocol") == 1
    assert client.get("/v1/protocols/zuranolone-oral-ppd").status_code == 200

def test_invalid_catalog_file_loads_nothing(app, client, tmp_path):
    directory = tmp_path / "catalog"
    shutil.copytree(catalog.CATALOG_DIR, directory)
    path = directory / "zuranolone-oral-ppd.yaml"
    path.write_text(path.read_text().replace("unit: mg\n", "unit: mcg\n", 1))
    result = app.test_cli_runner().invoke(args=["protocols", "load", str(directory)])
    assert result.exit_code != 0
    assert "zuranolone-oral-ppd.yaml: versions.0.dosing_ranges.0.unit:" in result.output
    assert client.get("/v1/protocols/ketamine-iv-anesthesia-induction").status_code == 404


@pytest.mark.parametrize(("as_of", "approval_date", "marker"), [
    ("2019-06-01T00:00:00Z", "2019-03-05", "In conjunction with an oral antidepressant, for treatment"),
    ("2021-01-01T00:00:00Z", "2020-07-31", "acute suicidal ideation"),
    ("2025-06-01T00:00:00Z", "2025-01-21", "as monotherapy"),
    (None, "2025-01-21", "as monotherapy"),
])
def test_spravato_as_of_reads_show_the_label_history(app, client, as_of, approval_date, marker):
    """Each period reads the last entry of the file with its start (a sourcing correction of the period
    outranks the entries before it); now reads the newest version."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    version = _in_effect_from(SPRAVATO, approval_date)
    assert (version == _entries(SPRAVATO)) is (approval_date == "2025-01-21")
    url = f"/v1/protocols/{SPRAVATO}" + (f"?as_of={as_of}" if as_of else "")
    response = client.get(url)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["version"] == version
    assert body["fda_approval"]["approval_date"] == approval_date
    assert marker in body["fda_approval"]["approved_indication"]
    assert response.headers["ETag"].startswith(f'"{version}-')


def test_the_readmes_as_of_examples_name_the_version_they_read(app, client):
    """The README's walkthrough says which Spravato version an ``as_of`` read gives; a correction appended
    to the catalog since left it naming version 14 for 2021, which reads 16 (a documentation probe)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    examples = re.findall(rf"/v1/protocols/{SPRAVATO}\?as_of=([^']+)'\s+# version (\d+)", readme)
    assert len(examples) == 2, examples
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    for as_of, version in examples:
        assert client.get(f"/v1/protocols/{SPRAVATO}?as_of={as_of}").get_json()["version"] == int(version), as_of


def test_spravato_before_first_approval_is_not_in_effect(app, client):
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    assert client.get(f"/v1/protocols/{SPRAVATO}?as_of=2019-03-04T23:59:59Z").status_code == 404


def test_spravato_versions_differ_in_indications_and_dosing():
    entries = {f.protocol_id: f.entries for f in FILES}[SPRAVATO]
    assert [e["effective_from"][:10] for e in entries] == (
        ["2019-03-05", "2020-07-31"] + ["2025-01-21"] * 3 + ["2019-03-05", "2020-07-31"] + ["2025-01-21"] * 2
        + ["2019-03-05", "2020-07-31", "2025-01-21"] * 2 + ["2020-07-31", "2025-01-21"])
    codes = [{i["code"] for i in e["indications"]} for e in entries]
    assert "R45.851" not in codes[0] and "R45.851" in codes[1] and "R45.851" in codes[2]
    for entry in entries:
        validate_entry(entry)  # the loader's own path accepts every version
        assert entry["fda_approval"]["rems_required"] is True
        assert entry["drug"]["dea_schedule"] == "CIII"
        assert entry["fda_approval"]["boxed_warning"].startswith("WARNING: SEDATION; DISSOCIATION")
        assert {d["dose_min"] for d in entry["dosing_ranges"]} == {56}
        assert {d["dose_max"] for d in entry["dosing_ranges"]} == {84}


def test_catalog_files_are_package_data():
    assert Path(catalog.CATALOG_DIR).is_dir()
    assert sorted(p.name for p in catalog.CATALOG_DIR.glob("*.yaml")) == sorted(f.path.name for f in FILES)


def test_invalid_version_in_a_versions_file_is_reported_by_its_index(app, tmp_path):
    directory = tmp_path / "catalog"
    shutil.copytree(catalog.CATALOG_DIR, directory)
    path = directory / f"{SPRAVATO}.yaml"
    path.write_text(path.read_text().replace("code: R45.851", "code: R45.85X", 1))
    result = app.test_cli_runner().invoke(args=["protocols", "load", str(directory)])
    assert result.exit_code != 0
    assert f"{SPRAVATO}.yaml: versions.1.indications.3.code:" in result.output


def test_spravato_correction_adds_respiratory_depression_to_the_boxed_warning(app, client):
    """The current label's boxed warning names respiratory depression; version 3 kept the 2019-2024
    wording. The correction is a new version effective with the 2025 label, so the history still
    shows what was recorded before it (found by a review of the catalog against its sources)."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    current = client.get(f"/v1/protocols/{SPRAVATO}").get_json()
    assert "RESPIRATORY DEPRESSION" in current["fda_approval"]["boxed_warning"]
    cited = {p for s in current["sources"] for p in s["supports"]}
    assert "fda_approval.boxed_warning" in cited
    before = client.get(f"/v1/protocols/{SPRAVATO}?as_of=2024-12-31T00:00:00Z").get_json()
    assert "RESPIRATORY" not in before["fda_approval"]["boxed_warning"]
    third = client.get(f"/v1/protocols/{SPRAVATO}/versions/3").get_json()
    assert "RESPIRATORY" not in third["fda_approval"]["boxed_warning"]


def _dose_check(client, protocol_id, **order):
    response = client.post(f"/v1/protocols/{protocol_id}/dose-check", json=order)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["verdict"]


def test_ketalar_iv_induction_is_pushed_over_at_least_60_seconds_whatever_the_dose(app, client):
    """The label: "Administer KETALAR slowly (i.e., over a period of 60 seconds)". Version 4 records that as the
    1-4.5 mg/kg range's shortest administration time (two clinical probes: read as a rate only, 1 mg/kg in 14 s
    and 2 mg/kg in 30 s were within range with nothing said). The alternative 1-2 mg/kg at 0.5 mg/kg/min
    keeps its rate: 1 mg/kg over 2 minutes is not named."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    ketalar = "ketamine-iv-anesthesia-induction"
    record = client.get(f"/v1/protocols/{ketalar}").get_json()
    assert record["version"] == 4 and record["dosing_ranges"][0]["duration_min"] == "PT60S"
    assert "duration_min" not in record["dosing_ranges"][1]

    def faster(value: float, duration: str) -> str | None:
        answer = client.post(f"/v1/protocols/{ketalar}/dose-check", json={
            "route": "47625008", "phase": "induction", "dose": {"value": value, "unit": "mg/kg"},
            "patient": {"weight_kg": 70}, "duration": duration})
        assert answer.status_code == 200 and answer.get_json()["verdict"] == "within_range", answer.get_json()
        return answer.get_json()["faster_than_protocol"]

    assert faster(1, "PT14S") is not None and faster(2, "PT30S") is not None
    assert faster(2, "PT60S") is None and faster(1, "PT2M") is None and faster(2, "PT4M") is None


def test_crps_infusion_is_capped_at_the_trial_rate_and_codes_crps_only(app, client):
    """The trial behind the CRPS regimen capped the rate at 25 mg/h over the 4-hour infusion:
    0.35 mg/kg/h for a 120 kg patient (42 mg/h) read as within range. And a generic chronic-pain
    code (G89.4) matched this CRPS-only regimen."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    crps = "ketamine-iv-crps-off-label"
    order = {"route": "47625008", "dose": {"value": 0.35, "unit": "mg/kg/h"},
             "frequency": {"count": 1, "period": "P1D"}}
    assert _dose_check(client, crps, patient={"weight_kg": 70}, **order) == "within_range"
    # Version 7 records the cap as the range's absolute maximum (a docs probe: 31.5 mg/h for 90 kg read
    # within range, with the cap in the instructions only): above 25 mg/h is above the range, whatever the weight.
    assert _dose_check(client, crps, patient={"weight_kg": 120}, **order) == "above_max"
    per_hour = {"route": "47625008", "frequency": {"count": 1, "period": "P1D"}, "duration": "PT4H"}
    assert _dose_check(client, crps, patient={"weight_kg": 90}, dose={"value": 25, "unit": "mg/h"},
                       **per_hour) == "within_range"
    assert _dose_check(client, crps, patient={"weight_kg": 90}, dose={"value": 31.5, "unit": "mg/h"},
                       **{**per_hour, "duration": "PT3H"}) == "above_max"
    answer = client.post(f"/v1/protocols/{crps}/dose-check", json={
        **per_hour, "dose": {"value": 25, "unit": "mg/h"}, "patient": {"weight_kg": 90}}).get_json()
    assert answer["absolute_range"]["calculation"] == (
        "0.35 mg/kg/h \u00d7 90 kg = 31.5 mg/h, at most 25 mg/h whatever the weight: 25 mg/h")
    codes = {i["code"] for i in client.get(f"/v1/protocols/{crps}").get_json()["indications"]}
    assert codes == {"G90.50", "G90.59"}


def test_crps_cap_note_gives_the_reason_that_holds(app, client):
    """Version 2 said the 25 mg/h cap was recorded per day because a per-period maximum shorter than
    the infusion counted the whole infusion's dose; since per-period sums count only what runs in the
    window that is false. Version 3 (content unchanged) gives the reason that holds: a daily maximum
    also bounds how long the infusion runs. Its claims are checked here; version 2 keeps its words."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    crps = "ketamine-iv-crps-off-label"
    current = client.get(f"/v1/protocols/{crps}/versions/3").get_json()
    second = client.get(f"/v1/protocols/{crps}/versions/2").get_json()
    assert {k: v for k, v in current.items() if k in record.CONTENT_FIELDS and k != "verification_notes"} == {
        k: v for k, v in second.items() if k in record.CONTENT_FIELDS and k != "verification_notes"}
    note = next(n for n in current["verification_notes"] if n.startswith("dosing_ranges.0.max_per_period"))
    assert "bounds how long the infusion runs" in note and "whole infusion" not in note
    assert any("whole infusion" in n for n in second["verification_notes"])
    day = {"route": "47625008", "dose": {"value": 0.35, "unit": "mg/kg/h"}, "duration": "PT24H",
           "frequency": {"count": 1, "period": "P1D"}, "patient": {"weight_kg": 60}}
    assert _dose_check(client, crps, **day) == "exceeds_max_per_period"  # 504 mg a day at 21 mg/h
    fast = {"route": "47625008", "dose": {"value": 52.5, "unit": "mg/h"}, "duration": "PT110M",
            "frequency": {"count": 1, "period": "P1D"}, "patient": {"weight_kg": 150}}
    # Version 3's stated limitation (96.25 mg a day, within it) is gone since version 7 records the rate
    # cap itself: 52.5 mg/h is above 25 mg/h.
    assert _dose_check(client, crps, **fast) == "above_max"



def test_trd_instructions_typo_is_corrected_by_a_new_version(app, client):
    """'In the repeated- infusion study' (a line break inside a hyphenated word of folded YAML) is
    corrected by version 2, same start, nothing else changed; version 1 keeps what was published."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    trd = "ketamine-iv-trd-off-label"
    current = client.get(f"/v1/protocols/{trd}/versions/2").get_json()
    first = client.get(f"/v1/protocols/{trd}/versions/1").get_json()
    assert current["effective_from"] == first["effective_from"]
    served = client.get(f"/v1/protocols/{trd}").get_json()  # versions 3 on only add sources and notes
    assert served["dosing_ranges"] == current["dosing_ranges"] and served["version"] == _entries(trd)
    assert "repeated-infusion study" in current["dosing_ranges"][0]["instructions"]
    assert "repeated- infusion" in first["dosing_ranges"][0]["instructions"]
    diff = client.get(f"/v1/protocols/{trd}/versions/1/diff/2").get_json()
    content = [op["path"] for op in diff["patch"] if op["path"].split("/")[1] in record.CONTENT_FIELDS]
    assert content == ["/dosing_ranges/0/instructions"], diff["patch"]

def test_zuranolone_course_is_not_coded_as_a_single_dose(app, client):
    """'single' means one administration (FHIR dosage type "Single dose"); the label's regimen is
    one daily dose for 14 days."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    record = client.get("/v1/protocols/zuranolone-oral-ppd").get_json()
    assert [d["phase"] for d in record["dosing_ranges"]] == ["induction"]



def test_ketalar_iv_holds_the_labels_alternative_induction_at_half_a_mg_per_kg_a_minute(app, client):
    """An order at the label's alternative rate (1-2 mg/kg at 0.5 mg/kg/min) read as below the minimum
    of the 60-second bolus range (found by a clinical review); version 1 stays in the history."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    pid = "ketamine-iv-anesthesia-induction"
    current = client.get(f"/v1/protocols/{pid}").get_json()  # versions 3 and 4 keep version 2's two ranges
    assert current["version"] == _entries(pid) and current["change_note"].startswith("Correction:")
    alternative = current["dosing_ranges"][1]
    assert (alternative["dose_min"], alternative["dose_max"], alternative["unit"]) == (1, 2, "mg/kg")
    assert "0.5 mg/kg/min" in alternative["instructions"]
    cited = {path for source in current["sources"] for path in source["supports"]}
    assert "dosing_ranges.1" in cited
    assert len(client.get(f"/v1/protocols/{pid}/versions/1").get_json()["dosing_ranges"]) == 1
    for order in ({"dose": {"value": 0.5, "unit": "mg/kg/min"}},
                  {"dose": {"value": 0.5, "unit": "mg/kg/min"}, "duration": "PT3M"},
                  {"dose": {"value": 140, "unit": "mg"}}):
        assert _dose_check(client, pid, route="47625008", patient={"weight_kg": 70}, **order) == "within_range", order


def test_spravato_from_week_9_is_every_one_to_two_weeks(app, client):
    """The label: 56 mg or 84 mg every 2 weeks or once weekly from week 9; the record held every 2
    weeks only (found by a clinical review). Corrected in the current period, version 4 stays."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    current = client.get(f"/v1/protocols/{SPRAVATO}").get_json()
    assert current["version"] == _entries(SPRAVATO)
    week_9 = current["dosing_ranges"][2]
    assert week_9["frequency"] == WEEK_9
    assert client.get(f"/v1/protocols/{SPRAVATO}/versions/4").get_json()["dosing_ranges"][2]["frequency"][
        "period"] == "P2W"
    fhir_resource = client.get(f"/fhir/R4/MedicationKnowledge/{SPRAVATO}").get_json()
    repeats = [d["timing"]["repeat"] for g in fhir_resource["administrationGuidelines"] for group in g["dosage"]
               for d in group["dosage"] if "timing" in d]
    assert {"frequency": 1, "period": 1, "periodMax": 2, "periodUnit": "wk"} in repeats
    weekly = {"route": "46713006", "phase": "maintenance", "dose": {"value": 84, "unit": "mg"},
              "frequency": {"count": 1, "period": "P1W"}}
    assert _dose_check(client, SPRAVATO, **weekly) == "within_range"


WEEK_9 = {"count": 1, "period": "P1W", "period_max": "P2W", "text": "every 2 weeks or once weekly, week 9 onwards"}


def test_spravato_84_mg_daily_breaks_the_regimen_not_the_daily_maximum(app, client):
    """The label allows at most 84 mg a day and gives induction twice weekly: 84 mg every day keeps
    the daily maximum and gives 588 mg a week against the 168 mg the regimen gives. Both projections
    are in the answer, so the critical verdict is explained by data (it read per_period.exceeded:
    false beside exceeds_max_per_period, with the reason only in a message)."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    daily = {"route": "46713006", "phase": "induction", "dose": {"value": 84, "unit": "mg"},
             "frequency": {"count": 1, "period": "P1D"}}
    result = client.post(f"/v1/protocols/{SPRAVATO}/dose-check", json=daily).get_json()
    assert result["verdict"] == "exceeds_max_per_period"
    assert result["per_period"]["exceeded"] is False
    assert result["per_period"]["maximum"] == {"value": 84, "unit": "mg"}
    assert result["regimen"]["exceeded"] is True
    assert (result["regimen"]["period"], result["regimen"]["doses_per_period"]) == ("P1W", 7)
    assert result["regimen"]["projected"] == {"value": 588, "unit": "mg"}
    assert result["regimen"]["maximum"] == {"value": 168, "unit": "mg"}
    twice_weekly = client.post(f"/v1/protocols/{SPRAVATO}/dose-check",
                               json={**daily, "frequency": {"count": 2, "period": "P1W"}}).get_json()
    assert twice_weekly["verdict"] == "within_range" and twice_weekly["regimen"]["exceeded"] is False


def _in_effect_from(protocol_id: str, start: str) -> int:
    """The version of the curated file of ``protocol_id`` in effect from ``start`` (a date): the last
    entry with that start (a later correction of the period outranks the entries before it)."""
    entries = next(f.entries for f in FILES if f.protocol_id == protocol_id)
    return max(i for i, e in enumerate(entries) if e["effective_from"].startswith(start)) + 1


@pytest.mark.parametrize(("as_of", "start", "recorded"), [
    ("2019-06-01T00:00:00Z", "2019-03-05", 1), ("2021-01-01T00:00:00Z", "2020-07-31", 2),
    ("2025-06-01T00:00:00Z", "2025-01-21", 5)])
def test_spravato_week_9_is_corrected_in_every_period_and_history_keeps_what_was_recorded(
        app, client, as_of, start, recorded):
    """Version 5 corrected the week-9 frequency from 2025 only: as-of readings and dose checks of
    2019-2024 still held every 2 weeks, so a weekly 84 mg order at week 9 read as more often than the
    label allows. Versions 6 and 7 are back-dated corrections of versions 1 and 2 (each effective
    with the version it corrects and otherwise its copy); version 8 brings version 5's note up to date
    and makes the version in effect the newest again; version 9 adds sources to it. Versions 10, 11 and 12
    add sources to versions 6, 7 and 9 (each effective with the version it corrects), and versions 13, 14
    and 15 to 10, 11 and 12 (their indication codes), and versions 16 and 17 name the indications of the
    ranges of 14 and 15, so the last of them are the versions in effect (the last entry of the file with each
    start). The versions corrected stay as recorded."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    corrected = _in_effect_from(SPRAVATO, start)
    assert corrected > 12, "the 2026-12-05 indication sourcing corrections are in effect in every period"
    read = client.get(f"/v1/protocols/{SPRAVATO}?as_of={as_of}").get_json()
    assert read["version"] == corrected and read["dosing_ranges"][2]["frequency"] == WEEK_9
    cited = {path for source in read["sources"] for path in source["supports"]}
    assert "dosing_ranges.2" in cited
    before = client.get(f"/v1/protocols/{SPRAVATO}/versions/{recorded}").get_json()
    every_2_weeks = {"count": 1, "period": "P2W", "text": WEEK_9["text"]}
    assert before["dosing_ranges"][2]["frequency"] == (WEEK_9 if recorded == 5 else every_2_weeks)
    fields = [k for k in record.CONTENT_FIELDS if k not in {"dosing_ranges", "sources", "verification_notes"}]
    assert {k: read.get(k) for k in fields} == {k: before.get(k) for k in fields}
    assert [_without_indications(r) for i, r in enumerate(read["dosing_ranges"]) if i != 2] == [
        r for i, r in enumerate(before["dosing_ranges"]) if i != 2]
    weekly = {"route": "46713006", "phase": "maintenance", "dose": {"value": 84, "unit": "mg"},
              "frequency": {"count": 1, "period": "P1W"}, "as_of": as_of}
    assert _dose_check(client, SPRAVATO, **weekly) == "within_range"
    fortnightly = {**weekly, "frequency": {"count": 1, "period": "P2W"}}
    assert _dose_check(client, SPRAVATO, **fortnightly) == "within_range"
    twice_weekly = {**weekly, "frequency": {"count": 2, "period": "P1W"}}
    assert _dose_check(client, SPRAVATO, **twice_weekly) != "within_range"
    for old in (1, 2):
        frequency = client.get(f"/v1/protocols/{SPRAVATO}/versions/{old}").get_json()["dosing_ranges"][2]["frequency"]
        assert frequency["period"] == "P2W" and "period_max" not in frequency


def _without_indications(dose_range: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dose_range.items() if k != "indications"}


TRD_CODES, MDSI_CODES = ["370143000", "F32.9", "F33.9"], ["R45.851"]


@pytest.mark.parametrize(("as_of", "start"), [("2021-01-01T00:00:00Z", "2020-07-31"), (None, "2025-01-21")])
def test_spravato_gives_each_indication_its_own_regimen_in_every_period_with_two(app, client, as_of, start):
    """Found by a clinical probe: FHIR gave every range under every indication code, so R45.851 (MDSI: 84 mg
    twice weekly for 4 weeks, "use beyond 4 weeks has not been systematically evaluated") read the TRD
    maintenance schedules, and the depression codes the MDSI regimen. Corrections of the versions in effect
    for 2020 and 2025 name each range's indications, cited to the sources of the ranges; the corrected
    version's content is otherwise unchanged, and the newest version is still the one in effect now."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    version = _in_effect_from(SPRAVATO, start)
    entries = next(f.entries for f in FILES if f.protocol_id == SPRAVATO)
    corrected = max(i for i, e in enumerate(entries[:version - 1]) if e["effective_from"] == entries[version - 1][
        "effective_from"]) + 1
    query = f"?as_of={as_of}" if as_of else ""
    read = client.get(f"/v1/protocols/{SPRAVATO}{query}").get_json()
    assert read["version"] == version and read["change_note"].startswith("Correction:")
    assert [r.get("indications") for r in read["dosing_ranges"]] == [TRD_CODES] * 3 + [MDSI_CODES]
    before = client.get(f"/v1/protocols/{SPRAVATO}/versions/{corrected}").get_json()
    assert [_without_indications(r) for r in read["dosing_ranges"]] == before["dosing_ranges"]
    fields = [k for k in record.CONTENT_FIELDS if k not in {"dosing_ranges", "sources", "verification_notes"}]
    assert {k: read.get(k) for k in fields} == {k: before.get(k) for k in fields}
    cited = {path for source in read["sources"] for path in source["supports"]}
    assert {f"dosing_ranges.{i}.indications" for i in range(4)} <= cited
    for source in before["sources"]:
        (kept,) = [s for s in read["sources"] if (s["title"], s["url"]) == (source["title"], source["url"])]
        assert set(source["supports"]) <= set(kept["supports"])
    assert set(before["verification_notes"]) <= set(read["verification_notes"])
    if as_of is None:
        assert version == _entries(SPRAVATO), "the newest version is the one in effect now"
    resource = client.get(f"/fhir/R4/MedicationKnowledge/{SPRAVATO}/_history/{version}").get_json()
    assert resource["meta"]["versionId"] == str(version)
    timings = {g["indicationCodeableConcept"]["coding"][0]["code"]: [
        d["timing"]["code"]["text"] for group in g["dosage"] for d in group["dosage"]]
        for g in resource["administrationGuidelines"]}
    trd = ["twice weekly, weeks 1-4", "once weekly, weeks 5-8", "every 2 weeks or once weekly, week 9 onwards"]
    assert timings == {**{code: trd for code in TRD_CODES}, "R45.851": ["twice weekly for 4 weeks"]}


def test_spravato_newest_version_is_the_one_in_effect_so_get_then_put_works(app, client):
    """Back-dated corrections appended last would make the newest version (the one If-Match must name)
    differ from the one GET serves: an integration that read the protocol and wrote with its ETag got a
    412. The catalog ends with a version effective now, so GET's ETag is the one to send."""
    assert app.test_cli_runner().invoke(args=["protocols", "load"]).exit_code == 0
    versions = client.get(f"/v1/protocols/{SPRAVATO}/versions?page_size=100").get_json()["items"]
    starts = [v["effective_from"][:10] for v in sorted(versions, key=lambda v: v["version"])]
    assert starts == [e["effective_from"][:10] for e in next(f.entries for f in FILES if f.protocol_id == SPRAVATO)]
    assert starts[5:8] == ["2019-03-05", "2020-07-31", "2025-01-21"]  # back-dated corrections follow 2025's
    assert starts[-1] == max(starts), "the newest version is of the latest period, so it is the one in effect"
    assert client.get(f"/v1/protocols/{SPRAVATO}").get_json()["version"] == len(versions)
    written = _written_through_the_api(client, SPRAVATO, summary="A summary written by an integration.")
    assert written["version"] == max(v["version"] for v in versions) + 1


def test_a_directory_without_catalog_files_is_an_error_not_a_silent_success(app, client, tmp_path):
    """Found by an operations probe: a directory with no *.yaml files (empty, or holding .yml files)
    loaded nothing, printed nothing and exited 0, so a deploy script pointing at the wrong place passed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = app.test_cli_runner().invoke(args=["protocols", "load", str(empty)])
    assert result.exit_code == 1 and "holds no *.yaml catalog files; nothing was loaded" in result.output
    other = tmp_path / "yml"
    other.mkdir()
    shutil.copyfile(catalog.CATALOG_DIR / "zuranolone-oral-ppd.yaml", other / "zuranolone-oral-ppd.yml")
    result = app.test_cli_runner().invoke(args=["protocols", "load", str(other)])
    assert result.exit_code == 1 and "(only zuranolone-oral-ppd.yml: name them *.yaml)" in result.output
    assert client.get("/v1/protocols/zuranolone-oral-ppd").status_code == 404
