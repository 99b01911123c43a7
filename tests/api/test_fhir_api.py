"""/fhir/R4: read, vread, history, search, CapabilityStatement, errors and the NDJSON export.

Responses are parsed with the ``fhir.resources`` R4B models (a real validator), and one test drives
a real HTTP server with ``fhirpy``, a FHIR client library from PyPI.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.medicationknowledge import MedicationKnowledge
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.structuredefinition import StructureDefinition
from werkzeug.serving import make_server

import api.fhir_api as fhir_api
from protocols import fhir, versioning
from protocols.timeutil import parse_rfc3339, utcnow
from tests.factories import protocol_payload, unique_id

FHIR_JSON = "application/fhir+json"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MK = "/fhir/R4/MedicationKnowledge"


def _create(client: Any, **overrides: Any) -> dict[str, Any]:
    payload = protocol_payload(**overrides)
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 201, response.get_json()
    return payload


def _revise(client: Any, protocol_id: str, **changes: Any) -> dict[str, Any]:
    current = client.get(f"/v1/protocols/{protocol_id}/versions/latest")
    body = {**current.get_json(), **changes}
    response = client.put(f"/v1/protocols/{protocol_id}", json=body, headers={"If-Match": current.headers["ETag"]})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _retire(client: Any, protocol_id: str) -> None:
    current = client.get(f"/v1/protocols/{protocol_id}/versions/latest")
    response = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": current.headers["ETag"]})
    assert response.status_code == 200, response.get_json()


def _outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == FHIR_JSON
    body = response.get_json()
    OperationOutcome.model_validate(body)
    return body


def _bundle(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == FHIR_JSON
    body = response.get_json()
    Bundle.model_validate(body)
    for entry in body.get("entry", []):
        if entry.get("resource", {}).get("resourceType") == "MedicationKnowledge":
            MedicationKnowledge.model_validate(entry["resource"])
    return body


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _search_ids(client: Any, query: str, headers: dict[str, str] | None = None) -> list[str]:
    body = _bundle(client.get(f"{MK}?{query}", headers=headers or {}))
    ids = [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]
    assert body["total"] == len(ids), "total must count exactly what the filters match"  # all fit one page
    return ids


def _all_pages(client: Any, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow ``next`` links until there is none; returns (entries, bundles)."""
    entries: list[dict[str, Any]] = []
    bundles: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        body = _bundle(client.get(next_url))
        bundles.append(body)
        entries += body.get("entry", [])
        links = {link["relation"]: link["url"] for link in body["link"]}
        next_url = _path(links["next"]) if "next" in links else None
        assert len(bundles) < 50, "paging does not end"
    return entries, bundles


# -------------------------------------------------------------------------------- read


def test_read_serves_the_version_in_effect_with_fhir_headers(client):
    payload = _create(client)
    _revise(client, payload["id"], summary="Revised summary.")
    response = client.get(f"{MK}/{payload['id']}")
    assert response.status_code == 200
    assert response.mimetype == FHIR_JSON
    resource = response.get_json()
    MedicationKnowledge.model_validate(resource)
    stored = client.get(f"/v1/protocols/{payload['id']}").get_json()
    assert resource["meta"] == {"versionId": "2", "lastUpdated": stored["recorded_at"]}
    assert response.headers["ETag"] == 'W/"2"'
    assert response.headers["Content-Location"].endswith(f"{MK}/{payload['id']}/_history/2")
    assert resource["code"]["coding"] == [{"system": RXNORM, "code": "2201625"}]

    again = client.get(f"{MK}/{payload['id']}", headers={"If-None-Match": 'W/"2"'})
    assert again.status_code == 304
    assert client.get(f"{MK}/{payload['id']}", headers={"If-None-Match": 'W/"1"'}).status_code == 200


def test_a_fhir_read_compares_if_match_weakly_and_refuses_with_a_conflict_outcome(client):
    """A FHIR read's If-Match is evaluated as every GET's is, but weakly: FHIR's ETags are all weak
    (``W/"<versionId>"``) and FHIR clients send them in If-Match, so the strong rule refused even the
    ETag just served (found in review). A mismatch is a 412 OperationOutcome (``conflict``) naming the
    current ETag; a malformed header a 400 naming If-Match; a read that fails anyway ignores it."""
    payload = _create(client)
    url = f"{MK}/{payload['id']}"
    for if_match in ("*", 'W/"1"', '"1"', 'W/"7", W/"1"'):
        assert client.get(url, headers={"If-Match": if_match}).status_code == 200, if_match
    _revise(client, payload["id"], summary="Revised summary.")
    refused = _outcome(client.get(url, headers={"If-Match": 'W/"1"'}), 412)
    assert refused["issue"][0]["code"] == "conflict" and refused["issue"][0]["expression"] == ["If-Match"]
    assert 'the current ETag W/"2"' in refused["issue"][0]["diagnostics"]
    assert client.get(f"{url}/_history/1", headers={"If-Match": 'W/"1"'}).status_code == 200
    malformed = _outcome(client.get(url, headers={"If-Match": "garbage"}), 400)
    assert malformed["issue"][0]["expression"] == ["If-Match"]
    # its example is a FHIR ETag, not the v1 API's (found by a probe)
    assert malformed["issue"][0]["diagnostics"].endswith('such as W/"3"')
    assert client.get(f"{MK}/no-such-protocol", headers={"If-Match": '"x"'}).status_code == 404


def test_an_export_has_no_entity_tag_so_only_a_star_if_match_is_served(client):
    """``$export`` streams without an ETag: If-Match ``*`` (the representation exists) is served, any
    entity-tag is a 412 (the refused stream was never started: its snapshot opens on the first read)."""
    _create(client)
    assert client.get("/fhir/R4/$export", headers={"If-Match": "*"}).status_code == 200
    refused = _outcome(client.get("/fhir/R4/$export", headers={"If-Match": '"x"'}), 412)
    assert "no entity-tag" in refused["issue"][0]["diagnostics"]


def test_a_future_version_is_not_served_before_it_takes_effect(client):
    payload = _create(client)
    future = (utcnow() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _revise(client, payload["id"], summary="Next month's protocol.", effective_from=future)
    resource = client.get(f"{MK}/{payload['id']}").get_json()
    assert resource["meta"]["versionId"] == "1"


def test_unknown_protocol_is_404_operation_outcome(client):
    body = _outcome(client.get(f"{MK}/no-such-protocol"), 404)
    assert body["issue"][0]["code"] == "not-found"
    assert body["issue"][0]["expression"] == ["MedicationKnowledge.id"]


def test_nothing_in_effect_yet_is_404(client):
    future = (utcnow() + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    payload = _create(client, effective_from=future)
    body = _outcome(client.get(f"{MK}/{payload['id']}"), 404)
    assert "in effect" in body["issue"][0]["diagnostics"]


def test_retired_protocol_is_410_and_its_earlier_versions_stay_readable(client):
    payload = _create(client)
    _retire(client, payload["id"])
    body = _outcome(client.get(f"{MK}/{payload['id']}"), 410)
    assert body["issue"][0]["code"] == "deleted"
    assert body["issue"][0]["expression"] == ["MedicationKnowledge.status"]
    _outcome(client.get(f"{MK}/{payload['id']}/_history/2"), 410)
    old = client.get(f"{MK}/{payload['id']}/_history/1")
    assert old.status_code == 200
    assert old.get_json()["status"] == "active"
    assert payload["id"] not in _search_ids(client, f"_id={payload['id']}")


def test_vread_serves_each_published_version_forever_and_hides_drafts(client):
    payload = _create(client)
    _revise(client, payload["id"], summary="second")
    _revise(client, payload["id"], summary="draft, not for EHRs", status="draft")
    first = client.get(f"{MK}/{payload['id']}/_history/1")
    assert first.status_code == 200
    assert first.headers["ETag"] == 'W/"1"'
    assert "immutable" in first.headers["Cache-Control"]
    assert first.get_json()["meta"]["versionId"] == "1"
    for missing in ("3", "99", "abc", "01", "%D9%A1", "1.0"):  # %D9%A1: an Arabic-Indic digit one
        body = _outcome(client.get(f"{MK}/{payload['id']}/_history/{missing}"), 404)
        assert body["issue"][0]["expression"] == ["MedicationKnowledge.meta.versionId"]
    _outcome(client.get(f"{MK}/nope/_history/1"), 404)


# ----------------------------------------------------------------------------- history


def test_history_lists_published_versions_newest_first_with_retirement_as_delete(client):
    payload = _create(client)
    pid = payload["id"]
    _revise(client, pid, summary="v2")
    _revise(client, pid, summary="v3 draft", status="draft")
    _revise(client, pid, summary="v4", status="active")
    _retire(client, pid)

    body = _bundle(client.get(f"{MK}/{pid}/_history"))
    assert body["type"] == "history"
    assert body["total"] == 4
    entries = body["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"5"', 'W/"4"', 'W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "PUT", "POST"]
    assert "resource" not in entries[0]
    assert [e["resource"]["meta"]["versionId"] for e in entries[1:]] == ["4", "2", "1"]
    modified = [e["response"]["lastModified"] for e in entries]
    assert modified == sorted(modified, reverse=True)

    paged, bundles = _all_pages(client, f"{MK}/{pid}/_history?_count=1")
    assert [e["response"]["etag"] for e in paged] == ['W/"5"', 'W/"4"', 'W/"2"', 'W/"1"']
    assert len(bundles) == 4

    since = entries[1]["response"]["lastModified"]
    recent = _bundle(client.get(f"{MK}/{pid}/_history?_since={since}"))
    assert [e["response"]["etag"] for e in recent["entry"]] == ['W/"5"', 'W/"4"']
    _outcome(client.get(f"{MK}/unknown-id/_history"), 404)



def test_a_version_scheduled_for_later_is_published_over_fhir_when_it_takes_effect(client):
    """Found by a probe: a dose change scheduled for 2031 was already the newest `_history` entry and
    `vread`-able, `status: active`, while read served the version in effect; a retirement scheduled
    for later was already a DELETE entry. Until it takes effect a version is not published over FHIR."""
    pid = _create(client, effective_from="2020-01-01T00:00:00Z")["id"]
    _revise(client, pid, summary="scheduled dose change", effective_from="2031-01-01T00:00:00Z")
    entries = _bundle(client.get(f"{MK}/{pid}/_history"))["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"1"']
    unpublished = _outcome(client.get(f"{MK}/{pid}/_history/2"), 404)
    assert "takes effect at 2031-01-01T00:00:00Z" in json.dumps(unpublished)
    assert client.get(f"{MK}/{pid}").get_json()["meta"]["versionId"] == "1"
    current = client.get(f"/v1/protocols/{pid}/versions/latest")
    retired_later = client.delete(f"/v1/protocols/{pid}?effective_from=2032-01-01T00:00:00Z",
                                  headers={"If-Match": current.headers["ETag"]})
    assert retired_later.status_code == 200
    assert [e["request"]["method"] for e in _bundle(client.get(f"{MK}/{pid}/_history"))["entry"]] == ["POST"]
    _outcome(client.get(f"{MK}/{pid}/_history/3"), 404)
    future_only = _create(client, effective_from="2031-01-01T00:00:00Z")["id"]
    _outcome(client.get(f"{MK}/{future_only}"), 404)
    _outcome(client.get(f"{MK}/{future_only}/_history"), 404)
    _outcome(client.get(f"{MK}/{future_only}/_history/1"), 404)


def test_a_scheduled_version_cancelled_before_it_took_effect_is_never_published(client):
    """Found by a probe of the fix above: a version scheduled for a past instant but cancelled before it
    (a retirement, or another version, at the same instant, recorded earlier: the README's way to
    cancel one) was never in effect, yet appeared in `_history` and `vread` as `active`."""
    pid = _create(client, effective_from="2020-01-01T00:00:00Z")["id"]
    soon = utcnow() + timedelta(seconds=1)
    start = soon.isoformat(timespec="microseconds") + "Z"
    _revise(client, pid, summary="scheduled, then cancelled", effective_from=start)
    _revise(client, pid, summary="what takes effect instead", effective_from=start)
    while utcnow() <= soon:  # waits for the instant to pass, asserts nothing about time
        threading.Event().wait(0.05)
    entries = _bundle(client.get(f"{MK}/{pid}/_history"))["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"1"']
    cancelled = _outcome(client.get(f"{MK}/{pid}/_history/2"), 404)
    assert "cancelled before it took effect" in json.dumps(cancelled)
    assert client.get(f"{MK}/{pid}").get_json()["meta"]["versionId"] == "3"


def test_a_scheduled_change_is_seen_by_lastupdated_and_since_polls_once_it_takes_effect(client):
    """Found by a probe: `meta.lastUpdated` was the recording time, so when a version recorded ahead of
    its start took effect, the resource changed with a timestamp older than the client's last poll, and
    `_lastUpdated=gt<poll>` and `_history?_since=<poll>` never reported the new dose. It is published
    (and `lastUpdated`) when it takes effect."""
    pid = _create(client, effective_from="2020-01-01T00:00:00Z")["id"]
    start = utcnow() + timedelta(seconds=2)
    _revise(client, pid, summary="scheduled", effective_from=start.isoformat(timespec="microseconds") + "Z")
    poll = utcnow().isoformat(timespec="microseconds") + "Z"
    assert client.get(f"{MK}/{pid}").get_json()["meta"]["versionId"] == "1"
    deadline = utcnow() + timedelta(seconds=30)
    while client.get(f"{MK}/{pid}").get_json()["meta"]["versionId"] != "2":  # waits for a state, asserts none
        assert utcnow() < deadline, "the scheduled version never took effect"
        threading.Event().wait(0.1)
    read = client.get(f"{MK}/{pid}")
    assert parse_rfc3339(read.get_json()["meta"]["lastUpdated"]) > parse_rfc3339(poll)
    found = _bundle(client.get(MK, query_string={"_id": pid, "_lastUpdated": f"gt{poll}"}))
    assert [e["resource"]["meta"]["versionId"] for e in found["entry"]] == ["2"]
    since = _bundle(client.get(f"{MK}/{pid}/_history", query_string={"_since": poll}))
    assert [e["response"]["etag"] for e in since["entry"]] == ['W/"2"']
    assert since["entry"][0]["response"]["lastModified"] == read.get_json()["meta"]["lastUpdated"]


def test_a_history_bundle_is_stamped_at_the_instant_its_entries_were_read(client, monkeypatch):
    """Found by a probe: the entries were read at one "now" and the Bundle stamped with a later one, so a
    version taking effect in between was in neither that Bundle nor the poll `_since` its timestamp.
    A clock that moves on at each read stands in for the milliseconds the Bundle takes to build."""
    switch = datetime(2030, 1, 1)  # naive UTC, as utcnow() returns
    pid = _create(client, effective_from="2020-01-01T00:00:00Z")["id"]
    _revise(client, pid, summary="scheduled", effective_from="2030-01-01T00:00:00Z")
    clock = iter([switch - timedelta(milliseconds=1)] + [switch + timedelta(milliseconds=n) for n in range(1, 50)])
    monkeypatch.setattr(fhir_api, "utcnow", lambda: next(clock))
    before = _bundle(client.get(f"{MK}/{pid}/_history"))
    assert [e["response"]["etag"] for e in before["entry"]] == ['W/"1"']
    stamp = before["meta"]["lastUpdated"]
    assert parse_rfc3339(stamp) < switch, stamp
    monkeypatch.setattr(fhir_api, "utcnow", lambda: switch + timedelta(seconds=5))
    polled = _bundle(client.get(f"{MK}/{pid}/_history", query_string={"_since": stamp}))
    assert [e["response"]["etag"] for e in polled["entry"]] == ['W/"2"']


def test_history_shows_the_first_published_version_as_the_create(client):
    """Created as a draft and published in version 2: over FHIR the resource did not exist before
    version 2 (read and _history were 404), yet its oldest entry was a PUT answered 200, an update of
    a resource never created. The first published version is the POST (201); later ones are PUTs."""
    pid = _create(client, status="draft")["id"]
    assert client.get(f"{MK}/{pid}/_history").status_code == 404
    _revise(client, pid, summary="published", status="active")
    _revise(client, pid, summary="revised")
    entries = _bundle(client.get(f"{MK}/{pid}/_history"))["entry"]
    assert [(e["request"]["method"], e["request"]["url"], e["response"]["status"]) for e in entries] == [
        ("PUT", f"MedicationKnowledge/{pid}", "200 OK"), ("POST", "MedicationKnowledge", "201 Created")]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"']
    since = entries[0]["response"]["lastModified"]  # a page without the create still knows it is not one
    (latest,) = _bundle(client.get(f"{MK}/{pid}/_history?_since={since}"))["entry"]
    assert latest["request"]["method"] == "PUT"

def test_history_pages_back_through_previous_links(client):
    """A history page reached by a cursor links back: ``previous`` walks to the newest page, and the
    pages read backwards hold what the forward walk held, newest first within each page."""
    pid = _create(client)["id"]
    for n in range(2, 6):
        _revise(client, pid, summary=f"v{n}")
    _revise(client, pid, summary="draft", status="draft")  # drafts are not published: never on a page
    forward, bundles = _all_pages(client, f"{MK}/{pid}/_history?_count=2")
    assert [e["response"]["etag"] for e in forward] == ['W/"5"', 'W/"4"', 'W/"3"', 'W/"2"', 'W/"1"']

    def links(body: dict[str, Any]) -> dict[str, str]:
        return {link["relation"]: link["url"] for link in body["link"]}

    assert "previous" not in links(bundles[0])
    pages = []
    body = bundles[-1]
    while "previous" in links(body):
        body = _bundle(client.get(_path(links(body)["previous"])))
        pages.append([e["response"]["etag"] for e in body["entry"]])
        assert "next" in links(body) and len(pages) < 10
    assert pages == [['W/"3"', 'W/"2"'], ['W/"5"', 'W/"4"']]
    # forwards again from a page read backwards
    again = _bundle(client.get(_path(links(_bundle(client.get(_path(links(bundles[-1])["previous"]))))["next"])))
    assert [e["response"]["etag"] for e in again["entry"]] == ['W/"1"']

    since = forward[3]["response"]["lastModified"]  # version 2's: the filter keeps 5..2
    _, filtered = _all_pages(client, f"{MK}/{pid}/_history?_count=3&_since={since}")
    back = _bundle(client.get(_path(links(filtered[-1])["previous"])))
    assert [e["response"]["etag"] for e in back["entry"]] == ['W/"5"', 'W/"4"', 'W/"3"']
    assert "previous" not in links(back) and "_since" in links(back)["next"]


# ------------------------------------------------------------------------------ search


def test_search_pages_to_the_end_through_next_links(client):
    ids = {_create(client, title=f"Protocol {n}")["id"] for n in range(5)}
    entries, bundles = _all_pages(client, f"{MK}?_count=2")
    found = [e["resource"]["id"] for e in entries]
    assert sorted(found) == sorted(ids)  # every protocol once, none twice
    assert [b["total"] for b in bundles] == [5, 5, 5]
    assert [len(b.get("entry", [])) for b in bundles] == [2, 2, 1]
    assert all(e["search"]["mode"] == "match" for e in entries)
    assert all(e["fullUrl"].endswith(f"{MK}/{e['resource']['id']}") for e in entries)

    last_links = {link["relation"]: link["url"] for link in bundles[-1]["link"]}
    back = _bundle(client.get(_path(last_links["previous"])))
    assert [e["resource"]["id"] for e in back["entry"]] == found[2:4]

    only_total = _bundle(client.get(f"{MK}?_count=0"))
    assert only_total["total"] == 5
    assert "entry" not in only_total


def test_a_search_bundles_total_counts_the_state_its_entries_were_read_in(app, client, monkeypatch):
    """The page and its total are read in one snapshot: a protocol created between the two reads (here
    by the count's wrapper, as another client's write would) is in neither. Read separately, a complete
    single page disagreed with its own total under concurrent writes (23 against 24; adversarial probe)."""
    from schemas.protocol import ProtocolCreateSchema, split_payload

    ids = {_create(client, title=f"Protocol {n}")["id"] for n in range(3)}
    real_count = fhir_api.fhir_query.count
    written: list[str] = []

    def count_after_a_write(*args: Any, **kwargs: Any) -> int:
        payload = protocol_payload()
        _, content = split_payload(ProtocolCreateSchema().load(payload))
        # Stamped before the request's instant and committed after its page was read, as a write of
        # another worker that took its time just before this request did.
        versioning.create(app.extensions["protocols_db"], payload["id"], content,
                          effective_from=utcnow() - timedelta(seconds=5))
        written.append(payload["id"])
        return real_count(*args, **kwargs)

    monkeypatch.setattr(fhir_api.fhir_query, "count", count_after_a_write)
    bundle = _bundle(client.get(f"{MK}?_count=100"))
    assert written and {e["resource"]["id"] for e in bundle["entry"]} == ids
    assert bundle["total"] == len(ids)
    monkeypatch.setattr(fhir_api.fhir_query, "count", real_count)
    assert _bundle(client.get(f"{MK}?_count=0"))["total"] == len(ids) + 1  # the write is there, after


def test_a_history_bundles_total_counts_the_state_its_entries_were_read_in(app, client, monkeypatch):
    """Found by a probe (PostgreSQL, 29 of 783 reads under concurrent writes): a complete `_history` page
    held 18 entries against a `total` of 17, its count and its rows read as separate statements. A version
    appended between the two (here by the rows' query builder, as another client's write would) is in
    neither."""
    from protocols import fhir_query
    from schemas.protocol import ProtocolCreateSchema, split_payload

    pid = _create(client)["id"]
    _revise(client, pid, title="Second title")
    real_window = fhir_query.newest_first_window
    written: list[int] = []

    def window_after_a_write(*args: Any, **kwargs: Any) -> Any:
        db = app.extensions["protocols_db"]
        _, content = split_payload(ProtocolCreateSchema().load(protocol_payload(pid, title="Third title")))
        stored, _ = versioning.revise(db, pid, content, if_match=[versioning.latest(db, pid).etag],
                                      effective_from=utcnow() - timedelta(seconds=5))
        written.append(stored.version)
        return real_window(*args, **kwargs)

    monkeypatch.setattr(fhir_query, "newest_first_window", window_after_a_write)
    bundle = _bundle(client.get(f"{MK}/{pid}/_history"))
    assert written == [3]
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2", "1"]
    assert bundle["total"] == 2
    monkeypatch.setattr(fhir_query, "newest_first_window", real_window)
    assert _bundle(client.get(f"{MK}/{pid}/_history"))["total"] == 3  # the write is there, after


def test_a_since_outside_the_years_stored_says_so(client):
    """Found in review: `_since=0001-01-01T00:00:00Z` was a 400 blaming its UTC offset."""
    pid = _create(client)["id"]
    for value in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        outcome = _outcome(client.get(f"{MK}/{pid}/_history", query_string={"_since": value}), 400)
        assert "year must be between 1900 and 9998" in outcome["issue"][0]["diagnostics"], outcome


def test_pretty_indents_every_json_answer_and_is_kept_in_links(client):
    """Found by a probe: `_pretty` (FHIR R4, for every interaction) was a 400 under strict handling on every
    call, `/metadata` included. `true` indents the JSON, `false` does not; another value is a 400 naming it;
    a search's links keep it, as they keep `_format`; the NDJSON export does not take it."""
    pid = _create(client)["id"]
    _revise(client, pid, title="Second title")
    for path in ("/fhir/R4/metadata", f"{MK}/{pid}", f"{MK}/{pid}/_history/1", f"{MK}/{pid}/_history", MK,
                 f"{MK}/nope"):
        pretty = client.get(path, query_string={"_pretty": "true"})
        plain = client.get(path, query_string={"_pretty": "false"})
        assert pretty.status_code == plain.status_code and pretty.status_code in (200, 404), path
        assert pretty.get_json() == plain.get_json() or path == MK or path.endswith("_history"), path
        assert pretty.get_data(as_text=True).startswith('{\n  "resourceType"'), path
        assert "\n" not in plain.get_data(as_text=True), path
    paged = _bundle(client.get(MK, query_string={"_id": pid, "_count": 1, "_pretty": "true"}))
    assert all("_pretty=true" in link["url"] for link in paged["link"]), paged["link"]
    history = _bundle(client.get(f"{MK}/{pid}/_history", query_string={"_count": 1, "_pretty": "true"}))
    assert all("_pretty=true" in link["url"] for link in history["link"]), history["link"]
    refused = _outcome(client.get(f"{MK}/{pid}", query_string={"_pretty": "yes"}), 400)
    assert refused["issue"][0]["expression"] == ["_pretty"]
    assert client.get("/fhir/R4/$export", query_string={"_pretty": "true"}).status_code == 400


def test_every_fhir_answer_varies_on_accept(client):
    """The JSON type follows ``Accept`` under one ETag, and a version read is cached for a year: every
    answer, 304s and errors included, says ``Vary: Accept`` (it said nothing; adversarial probe)."""
    protocol_id = _create(client)["id"]
    fhir_json = client.get(f"{MK}/{protocol_id}/_history/1", headers={"Accept": "application/fhir+json"})
    plain = client.get(f"{MK}/{protocol_id}/_history/1", headers={"Accept": "application/json"})
    assert (fhir_json.mimetype, plain.mimetype) == ("application/fhir+json", "application/json")
    assert fhir_json.headers["ETag"] == plain.headers["ETag"]
    not_modified = client.get(f"{MK}/{protocol_id}/_history/1", headers={"If-None-Match": plain.headers["ETag"]})
    assert not_modified.status_code == 304
    answers = [fhir_json, plain, not_modified, client.get(f"{MK}/{protocol_id}"), client.get(f"{MK}?_count=1"),
               client.get(f"{MK}/{protocol_id}/_history"), client.get("/fhir/R4/metadata"),
               client.get(f"{MK}/no-such-protocol"), client.get("/fhir/R4/metadata", headers={"Accept": "text/xml"}),
               client.get(MK, headers={"If-Match": 'W/"other"'})]  # a 412 replaces the bundle (review)
    assert [r.status_code for r in answers] == [200, 200, 304, 200, 200, 200, 200, 404, 406, 412]
    assert all(r.headers.get("Vary", "").split(", ").count("Accept") == 1 for r in answers), [
        r.headers.get("Vary") for r in answers]


def test_search_by_rxnorm_code(client):
    esketamine = _create(client)["id"]
    drug = {"name": "ketamine", "rxnorm_cui": "6130", "brand_names": ["Ketalar"], "dea_schedule": "CIII"}
    ketamine = _create(client, drug=drug)["id"]
    no_code = _create(client, drug={**drug, "rxnorm_cui": None})["id"]
    assert _search_ids(client, f"code={RXNORM}|6130") == [ketamine]
    assert _search_ids(client, "code=6130") == [ketamine]
    assert sorted(_search_ids(client, f"code={RXNORM}|6130,{RXNORM}|2201625")) == sorted([ketamine, esketamine])
    assert sorted(_search_ids(client, f"code={RXNORM}|")) == sorted([ketamine, esketamine])
    assert no_code in _search_ids(client, "")  # no CUI: found unfiltered, never by code
    assert _search_ids(client, "code=http://snomed.info/sct|6130") == []
    assert _search_ids(client, f"code={RXNORM}|6130&code={RXNORM}|2201625") == []  # repeats AND


def test_search_by_last_updated_uses_fhir_precision_and_prefixes(app, client, db):
    old = unique_id("old")
    new = unique_id("new")
    versioning.create(db, old, protocol_payload(), now=datetime(2023, 5, 10, 12, 0))
    versioning.create(db, new, protocol_payload(), now=datetime(2024, 3, 1, 9, 15, 30))
    assert _search_ids(client, "_lastUpdated=2023") == [old]
    assert _search_ids(client, "_lastUpdated=2024-03-01") == [new]
    assert _search_ids(client, "_lastUpdated=ge2024-01") == [new]
    assert _search_ids(client, "_lastUpdated=lt2024") == [old]
    assert _search_ids(client, "_lastUpdated=gt2023-05-10") == [new]
    assert _search_ids(client, "_lastUpdated=le2023-05-10") == [old]
    assert _search_ids(client, "_lastUpdated=ne2023") == [new]
    assert _search_ids(client, "_lastUpdated=eq2024-03-01T09:15:30Z") == [new]
    assert _search_ids(client, "_lastUpdated=2024-03-01T10:15:30%2B01:00") == [new]
    assert _search_ids(client, "_lastUpdated=ge2023&_lastUpdated=lt2024") == [old]
    # A time without a zone is UTC, as the CapabilityStatement says (it was a 400; adversarial probe).
    assert _search_ids(client, "_lastUpdated=eq2024-03-01T09:15:30") == [new]
    assert _search_ids(client, "_lastUpdated=eq2024-03-01T09:15") == [new]
    assert _search_ids(client, "_lastUpdated=gt2024-03-01T09:15:30") == []
    # An unencoded '+' arrives as a space: refused (never guessed), saying how to send it.
    response = client.get("/fhir/R4/MedicationKnowledge?_lastUpdated=2024-03-01T10:15:30+01:00")
    assert response.status_code == 400
    [issue] = response.get_json()["issue"]
    assert issue["expression"] == ["_lastUpdated"] and "send the offset's '+' as %2B" in issue["diagnostics"]
    response = client.get("/fhir/R4/MedicationKnowledge?_lastUpdated=2024-03-01 10:15")
    assert "%2B" not in response.get_json()["issue"][0]["diagnostics"]  # not an offset: no such hint


@pytest.mark.parametrize(("value", "found"), [
    ("eq2024-03-01T09:15:30.123456Z", True),
    ("eq2024-03-01T09:15:30.1234560Z", True),    # seven digits, as .NET writes them
    ("eq2024-03-01T09:15:30.123456000Z", True),  # nine, as Java writes them
    ("eq2024-03-01T09:15:30.1234567Z", False),   # a moment between two stored microseconds
    ("ge2024-03-01T09:15:30.1234567Z", False),
    ("le2024-03-01T09:15:30.1234567Z", True),
    ("gt2024-03-01T09:15:30.1234559Z", True),
    ("gt2024-03-01T09:15:30.1234560Z", False),
    ("lt2024-03-01T09:15:30.1234561Z", True),
    ("lt2024-03-01T09:15:30.123456000Z", False),
    ("ne2024-03-01T09:15:30.1234567Z", True),
    ("eq2024-03-01T10:15:30.1234560%2B01:00", True),
])
def test_last_updated_with_more_fraction_digits_than_stored_compares_exactly(client, db, value, found):
    """FHIR allows fractions longer than the microseconds stored; each prefix still compares exactly
    (a value of seven digits was a 400, found by an adversarial probe)."""
    pid = unique_id("frac")
    versioning.create(db, pid, protocol_payload(), now=datetime(2024, 3, 1, 9, 15, 30, 123456))
    assert (pid in _search_ids(client, f"_id={pid}&_lastUpdated={value}")) is found


def test_since_past_microseconds_is_rounded_up_and_effective_from_past_them_is_422(client, db):
    """`_since` is "at or after": `.4494881` must not list a version recorded at `.449488` (probe); and a
    write's instant that microseconds cannot hold is refused, not cut (it was stored as `.123456`)."""
    pid = unique_id("since")
    versioning.create(db, pid, protocol_payload(), now=datetime(2024, 3, 1, 9, 15, 30, 449488))
    history = f"{MK}/{pid}/_history"
    assert _bundle(client.get(history, query_string={"_since": "2024-03-01T09:15:30.4494881Z"}))["total"] == 0
    assert _bundle(client.get(history, query_string={"_since": "2024-03-01T09:15:30.4494880Z"}))["total"] == 1
    assert _bundle(client.get(history, query_string={"_since": "2024-03-01T09:15:30.4494879Z"}))["total"] == 1
    payload = protocol_payload(id=unique_id("frac"), effective_from="2026-12-05T00:00:00.1234567Z")
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422 and "effective_from" in response.get_json()["errors"], response.get_json()


def test_last_updated_with_more_than_nine_fraction_digits_is_400(client):
    outcome = _outcome(client.get(MK, query_string={"_lastUpdated": "ge2024-03-01T09:15:30.1234567891Z"}), 400)
    assert outcome["issue"][0]["expression"] == ["_lastUpdated"]


def test_search_by_id_and_status(client):
    a = _create(client)["id"]
    b = _create(client)["id"]
    assert _search_ids(client, f"_id={a}") == [a]
    assert sorted(_search_ids(client, f"_id={a},{b}")) == sorted([a, b])
    assert sorted(_search_ids(client, "status=active")) == sorted([a, b])
    assert _search_ids(client, "status=inactive") == []
    assert sorted(_search_ids(client, f"status={fhir.MEDICATION_KNOWLEDGE_STATUS}|active")) == sorted([a, b])


def test_capability_statement_lists_only_what_works(client):
    response = client.get("/fhir/R4/metadata")
    assert response.status_code == 200
    assert response.mimetype == FHIR_JSON
    statement = response.get_json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    [rest] = statement["rest"]
    resources = {r["type"]: r for r in rest["resource"]}
    mk = resources["MedicationKnowledge"]
    assert {i["code"] for i in mk["interaction"]} == {"read", "vread", "history-instance", "search-type"}
    # how a client authenticates (a conformance probe: reads need a key by default, and it was not said)
    assert rest["security"]["cors"] is False and "Authorization: Bearer <key>" in rest["security"]["description"]
    assert "anonymous" not in rest["security"]["description"]

    # Every listed search parameter must narrow a search: a value that keeps `kept` and drops `dropped`.
    kept = _create(client)["id"]
    dropped = _create(client, drug={"name": "ketamine", "rxnorm_cui": "6130", "brand_names": [],
                                    "dea_schedule": "CIII"})["id"]
    stamp = client.get(f"{MK}/{kept}").get_json()["meta"]["lastUpdated"]
    examples = {
        "_id": f"_id={kept}",
        "code": f"code={RXNORM}|2201625",
        "status": "status=active",
        "_lastUpdated": f"_lastUpdated=le{stamp}",
    }
    listed = [p["name"] for p in mk["searchParam"]]
    assert sorted(listed) == sorted(examples), "a listed parameter has no proof that it filters"
    for name in listed:
        found = _search_ids(client, examples[name].replace("+", "%2B"))
        assert kept in found, name
        if name != "status":
            assert dropped not in found, name
    assert _search_ids(client, "status=inactive") == []  # status filters too: nothing current is inactive
    # And what is not listed is refused, not ignored.
    _outcome(client.get(f"{MK}?name=ketamine"), 400)

    # Every advertised interaction answers.
    assert client.get(f"{MK}/{kept}").status_code == 200
    assert client.get(f"{MK}/{kept}/_history/1").status_code == 200
    assert client.get(f"{MK}/{kept}/_history").status_code == 200
    assert set(resources) == {"MedicationKnowledge", "StructureDefinition", "CodeSystem"}
    assert [op["name"] for op in rest["operation"]] == ["export"]


# ----------------------------------------------------------------- parameter handling


def test_unsupported_parameters_strict_by_default_and_lenient_on_request(client):
    pid = _create(client)["id"]
    for headers in ({}, {"Prefer": "handling=strict"}):
        body = _outcome(client.get(f"{MK}?_id={pid}&_sort=-_lastUpdated&code:text=ket", headers=headers), 400)
        assert [i["expression"] for i in body["issue"]] == [["_sort"], ["code:text"]]
        assert {i["code"] for i in body["issue"]} == {"not-supported"}

    lenient = _bundle(client.get(f"{MK}?_id={pid}&_sort=-_lastUpdated", headers={"Prefer": "handling=lenient"}))
    [outcome] = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["resource"]["resourceType"] == "OperationOutcome"
    assert outcome["resource"]["issue"][0]["severity"] == "warning"
    assert outcome["resource"]["issue"][0]["expression"] == ["_sort"]
    assert [e["resource"]["id"] for e in lenient["entry"] if e["search"]["mode"] == "match"] == [pid]
    self_link = next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    assert "_sort" not in self_link and f"_id={pid}" in self_link

    _outcome(client.get(f"{MK}/{pid}?_elements=code"), 400)
    read = client.get(f"{MK}/{pid}?_elements=code", headers={"Prefer": "handling=lenient"})
    assert read.status_code == 200
    assert "_elements" in read.headers["Warning"]
    odd = client.get(f"{MK}/{pid}?%C3%A9t%C3%A9%0D%0AX-Injected:1=1", headers={"Prefer": "handling=lenient"})
    assert odd.status_code == 200
    assert "X-Injected" not in odd.headers and "\n" not in odd.headers["Warning"]

    history = _bundle(client.get(f"{MK}/{pid}/_history?_at=2024", headers={"Prefer": "handling=lenient"}))
    assert history["entry"][0]["resource"]["resourceType"] == "OperationOutcome"
    _outcome(client.get(f"{MK}/{pid}/_history?_at=2024"), 400)


@pytest.mark.parametrize(("query", "param"), [
    ("_count=-1", "_count"), ("_count=ten", "_count"), ("_lastUpdated=last-week", "_lastUpdated"),
    ("status=retired", "status"), ("_cursor=not-a-cursor", "_cursor"), ("code=", "code"),
])
def test_malformed_values_are_400_even_when_lenient(client, query, param):
    for headers in ({}, {"Prefer": "handling=lenient"}):
        body = _outcome(client.get(f"{MK}?{query}", headers=headers), 400)
        assert body["issue"][0]["code"] == "invalid"
        assert body["issue"][0]["expression"] == [param]


def test_a_forged_cursor_of_deeply_nested_json_is_400_not_500(client):
    """base64 of 2,000 '[' (a 2,667-character token, well inside a request line) made json.loads raise
    RecursionError, which nothing caught: a 500 on search and on _history (adversarial probe)."""
    pid = _create(client)["id"]
    token = base64.urlsafe_b64encode(b"[" * 2000).decode().rstrip("=")
    for path in (MK, f"{MK}/{pid}/_history"):
        body = _outcome(client.get(f"{path}?_cursor={token}"), 400)
        assert body["issue"][0]["expression"] == ["_cursor"]


def test_a_cursor_is_refused_by_every_listing_but_the_one_that_issued_it(client):
    """A ``_history`` cursor of one protocol was accepted by search (its version number read as a
    search position: a wrong page) and by another protocol's ``_history`` (a wrong page with a
    ``previous`` link on its first page): found by an adversarial probe. Each listing's own cursor
    still pages it."""
    first, second = _create(client)["id"], _create(client)["id"]
    for pid in (first, second):
        for n in range(3):
            _revise(client, pid, title=f"revision {n}")
    _create(client)

    def next_cursor(url: str) -> str:
        links = {link["relation"]: link["url"] for link in _bundle(client.get(url))["link"]}
        return links["next"].split("_cursor=")[1].split("&")[0]

    history = next_cursor(f"{MK}/{first}/_history?_count=2")
    search = next_cursor(f"{MK}?_count=1")
    for url in (f"{MK}?_count=2&_cursor={history}", f"{MK}/{second}/_history?_count=2&_cursor={history}",
                f"{MK}/{first}/_history?_count=2&_cursor={search}"):
        body = _outcome(client.get(url), 400)
        assert body["issue"][0]["expression"] == ["_cursor"], url
    # An edited cursor (a field the service never writes) is refused as the REST listings refuse one.
    data = json.loads(base64.urlsafe_b64decode(history + "=" * (-len(history) % 4)))
    edited = base64.urlsafe_b64encode(json.dumps({**data, "x": "1"}).encode()).decode().rstrip("=")
    assert _outcome(client.get(f"{MK}/{first}/_history?_count=2&_cursor={edited}"), 400)["issue"][0][
        "expression"] == ["_cursor"]
    own_history = _bundle(client.get(f"{MK}/{first}/_history?_count=2&_cursor={history}"))
    assert [e["resource"]["meta"]["versionId"] for e in own_history["entry"]] == ["2", "1"]
    assert len(_bundle(client.get(f"{MK}?_count=1&_cursor={search}"))["entry"]) == 1


def test_format_and_accept_agree_on_versions_refusals_and_hints(client):
    """_format checks fhirVersion as Accept does (4.0 only; 5.0 was a 200 through _format and a 406
    through Accept); an Accept entry with q=0 refuses its type (fhir+json;q=0 with */* was answered in
    fhir+json: it gets application/json); an unencoded '+' in _format gets the hint the dates give."""
    metadata = "/fhir/R4/metadata"
    assert _outcome(client.get(f"{metadata}?_format=application/fhir%2Bjson;fhirVersion=5.0"), 406)
    assert _outcome(client.get(metadata, headers={"Accept": "application/fhir+json; fhirVersion=5.0"}), 406)
    assert client.get(f"{metadata}?_format=application/fhir%2Bjson;fhirVersion=4.0").status_code == 200
    plain = client.get(metadata, headers={"Accept": "application/fhir+json;q=0, */*;q=0.1"})
    assert plain.status_code == 200 and plain.mimetype == "application/json"
    refused = client.get(f"{MK}/nope", headers={"Accept": "application/fhir+json;q=0, application/json"})
    assert refused.status_code == 404 and refused.mimetype == "application/json"  # the error too
    nothing = client.get(metadata, headers={"Accept": "application/fhir+json;q=0, application/json;q=0, */*"})
    assert nothing.status_code == 406
    assert client.get(metadata, headers={"Accept": "*/*"}).mimetype == FHIR_JSON
    # The most specific entry decides (probe of the first fix): a q=0 for R5 refuses R5 only, a q=0
    # wildcard refuses what it covers unless the type itself is named with q > 0.
    r4_not_r5 = "application/fhir+json;fhirVersion=5.0;q=0, application/fhir+json;fhirVersion=4.0"
    assert client.get(metadata, headers={"Accept": r4_not_r5}).mimetype == FHIR_JSON
    assert client.get(metadata, headers={"Accept": "*/*;q=0, application/json"}).mimetype == "application/json"
    assert client.get(metadata, headers={"Accept": "application/*;q=0, application/fhir+json"}).mimetype == FHIR_JSON
    assert client.get(metadata, headers={"Accept": "application/*;q=0, text/html"}).status_code == 406
    unencoded = _outcome(client.get(f"{metadata}?_format=application/fhir+json"), 406)
    assert "%2B" in unencoded["issue"][0]["diagnostics"]


def test_formats_other_than_json_are_406(client):
    assert _outcome(client.get("/fhir/R4/metadata?_format=xml"), 406)["issue"][0]["expression"] == ["_format"]
    assert _outcome(client.get("/fhir/R4/metadata", headers={"Accept": "application/fhir+xml"}), 406)
    assert client.get("/fhir/R4/metadata?_format=json").status_code == 200
    assert client.get("/fhir/R4/metadata", headers={"Accept": "application/fhir+json"}).status_code == 200


@pytest.mark.parametrize(("accept", "status"), [
    ("application/fhir+json; fhirVersion=4.0", 200),  # FHIR R4 http.html#version-parameter
    ("application/fhir+json; fhirVersion=4.0.1", 200),
    ("application/fhir+json; charset=utf-8", 200),
    ("application/json; charset=UTF-8", 200),
    ("application/fhir+xml;q=0.9, application/*;q=0.5", 200),
    ("text/html, */*;q=0.1", 200),
    ("application/fhir+json; fhirVersion=3.0", 406),  # STU3 is not served
    ("application/fhir+json;q=0", 406),
    ("application/fhir+xml; fhirVersion=4.0", 406),
])
def test_accept_with_media_type_parameters(client, accept, status):
    response = client.get("/fhir/R4/metadata", headers={"Accept": accept})
    assert response.status_code == status, (accept, response.get_json())
    if status == 406:
        assert _outcome(response, 406)["issue"][0]["expression"] == ["Accept"]


def test_unknown_paths_and_writes_answer_in_fhir(client):
    body = _outcome(client.get("/fhir/R4/Patient/123"), 404)
    assert "metadata" in body["issue"][0]["diagnostics"]
    response = client.post(MK, json={"resourceType": "MedicationKnowledge"})
    _outcome(response, 405)
    assert "GET" in response.headers["Allow"]
    _outcome(client.delete(f"{MK}/anything"), 405)
    _outcome(client.post("/fhir/R4", json={"resourceType": "Bundle", "type": "batch"}), 405)
    _outcome(client.get("/fhir/R4"), 404)


def test_extension_and_code_system_urls_resolve_on_this_server(client):
    pid = _create(client, verification_notes=["day of approval unverified"])["id"]
    resource = client.get(f"{MK}/{pid}").get_json()
    urls: set[str] = set()
    systems: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            is_extension = "extension" in node or any(k.startswith("value") for k in node)
            if is_extension and str(node.get("url", "")).startswith("http"):
                urls.add(node["url"])
            if "system" in node and "/fhir/R4/" in str(node["system"]):
                systems.add(node["system"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(resource)
    assert len(urls) == len(fhir.EXTENSIONS)
    for url in urls:
        definition = client.get(_path(url)).get_json()
        StructureDefinition.model_validate(definition)
        assert definition["url"] == url
    assert systems
    for system in systems:
        code_system = client.get(_path(system)).get_json()
        CodeSystem.model_validate(code_system)
        assert code_system["url"] == system
    _outcome(client.get("/fhir/R4/StructureDefinition/unknown-extension"), 404)


def test_definitions_and_capabilities_are_public_but_resources_need_a_key(anon_client, client):
    pid = _create(client)["id"]
    assert anon_client.get("/fhir/R4/metadata").status_code == 200
    assert anon_client.get("/fhir/R4/StructureDefinition/source").status_code == 200
    body = _outcome(anon_client.get(f"{MK}/{pid}"), 401)
    assert body["issue"][0]["code"] == "login"


# ------------------------------------------------------------------------------ export



def test_export_is_one_snapshot_across_its_pages(make_app):
    """A protocol retired from a past date while the export streamed was left out of it, though it was
    current when the export began: every page re-read the history as it then stood (found by a probe)."""
    app = make_app(PROTOCOLS_FHIR_EXPORT_PAGE_SIZE=1)
    client = app.test_client()
    created = [_create(client, effective_from="2019-01-01T00:00:00Z")["id"] for _ in range(3)]
    response = client.get("/fhir/R4/$export")
    chunks = iter(response.response)
    first = json.loads(next(chunks))["id"]
    assert first == created[-1]  # newest protocol first
    oldest = created[0]
    etag = client.get(f"/v1/protocols/{oldest}").headers["ETag"]
    retired = client.delete(f"/v1/protocols/{oldest}?effective_from=2020-01-01T00:00:00Z",
                            headers={"If-Match": etag})
    assert retired.status_code == 200, retired.get_json()
    rest = [json.loads(line)["id"] for chunk in chunks
            for line in (chunk if isinstance(chunk, bytes) else chunk.encode()).splitlines()]
    assert [first, *rest] == list(reversed(created))
    later = client.get("/fhir/R4/$export")
    assert oldest not in {json.loads(line)["id"] for line in later.data.splitlines()}

def test_export_streams_ndjson_in_keyset_pages(make_app, monkeypatch):
    app = make_app(PROTOCOLS_FHIR_EXPORT_PAGE_SIZE=2)
    client = app.test_client()
    active = {_create(client)["id"] for _ in range(5)}
    retired = _create(client)["id"]
    _retire(client, retired)
    draft_only = _create(client, status="draft")["id"]

    calls: list[dict[str, Any]] = []
    real = versioning.list_effective

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(versioning, "list_effective", counting)
    response = client.get("/fhir/R4/$export")
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+ndjson"
    assert response.is_streamed
    chunks = iter(response.response)
    first = next(chunks)
    assert len(calls) == 1, "the first line must be sent before later pages are read"
    lines = [first, *chunks]
    resources = [json.loads(line) for line in b"".join(
        line if isinstance(line, bytes) else line.encode() for line in lines).splitlines()]
    for resource in resources:
        MedicationKnowledge.model_validate(resource)
    assert {r["id"] for r in resources} == active
    assert retired not in active and draft_only not in active
    assert [c["limit"] for c in calls] == [2, 2, 2]
    assert all(call["at"] == calls[0]["at"] for call in calls)  # one consistent snapshot instant

    _outcome(client.get("/fhir/R4/$export?_type=Patient"), 400)
    _outcome(client.get("/fhir/R4/$export?_since=2024-01-01T00:00:00Z"), 400)


# ------------------------------------------------------------------ a real FHIR client


@pytest.fixture
def live_server(app: Any) -> Iterator[str]:
    """The app on a real HTTP server (werkzeug, a thread) on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/fhir/R4"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_fhirpy_round_trips_search_read_and_vread(client, live_server, api_key):
    from fhirpy import SyncFHIRClient

    ketamine = {"name": "ketamine", "rxnorm_cui": "6130", "brand_names": ["Ketalar"], "dea_schedule": "CIII"}
    ids = {_create(client, drug=ketamine)["id"] for _ in range(3)}
    other = _create(client)["id"]
    target = sorted(ids)[0]
    _revise(client, target, summary="Revised dosing notes.")

    fhir_client = SyncFHIRClient(live_server, authorization=f"Bearer {api_key}")
    found = fhir_client.resources("MedicationKnowledge").search(code=f"{RXNORM}|6130").limit(2).fetch_all()
    assert sorted(r.id for r in found) == sorted(ids)  # three results over two pages
    assert other not in {r.id for r in found}

    resource = fhir_client.reference("MedicationKnowledge", target).to_resource()
    MedicationKnowledge.model_validate(resource.serialize())
    assert resource["meta"]["versionId"] == "2"
    assert resource["code"]["coding"][0]["code"] == "6130"

    first = fhir_client.execute(f"MedicationKnowledge/{target}/_history/1", method="get")
    MedicationKnowledge.model_validate(dict(first))
    assert first["meta"]["versionId"] == "1"
    assert first["id"] == target

    history = fhir_client.execute(f"MedicationKnowledge/{target}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_ids_and_codes_outside_their_grammar_match_nothing_on_every_database(client):
    pid = _create(client)["id"]
    body = _outcome(client.get(f"{MK}/bad%00id"), 404)
    assert body["issue"][0]["expression"] == ["MedicationKnowledge.id"]
    _outcome(client.get(f"{MK}/bad%00id/_history"), 404)
    _outcome(client.get(f"{MK}/bad%00id/_history/1"), 404)
    assert _search_ids(client, "_id=bad%00id") == []
    assert _search_ids(client, f"_id=bad%00id,{pid}") == [pid]
    assert _search_ids(client, "code=61%0030") == []


@pytest.mark.parametrize("kind", ["search", "history"])
def test_bundles_answer_if_none_match_until_their_content_changes(client, kind):
    """A Bundle's meta.lastUpdated is the moment it was assembled; its ETag must not be, or a client's
    cached copy never validates (every GET here honours If-None-Match)."""
    payload = _create(client)
    url = f"{MK}?_count=5" if kind == "search" else f"{MK}/{payload['id']}/_history"
    first, second = client.get(url), client.get(url)
    assert first.status_code == second.status_code == 200
    etag = first.headers["ETag"]
    assert etag.startswith('W/"') and second.headers["ETag"] == etag
    assert client.head(url).headers["ETag"] == etag
    cached = client.get(url, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.data == b"" and cached.headers["ETag"] == etag
    _revise(client, payload["id"], title="Changed title")
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


@pytest.mark.parametrize("path", [MK, f"{MK}/some-id", "/fhir/R4/metadata", "/fhir/R4/Patient/1"])
def test_options_and_405_name_the_same_methods(client, path):
    options = client.options(path)
    assert options.status_code == 204 and options.data == b"" and "Content-Type" not in options.headers
    assert options.headers["Allow"] == "GET, HEAD, OPTIONS"
    refused = client.put(path, json={"resourceType": "MedicationKnowledge"})
    assert refused.status_code == 405 and refused.headers["Allow"] == options.headers["Allow"]
    # Methods no rule lists fail in routing, before the blueprint is known: they got the REST error body
    # and an Allow naming the catch-all's writes (adversarial probe). HEAD is its GET without a body.
    for method in ("TRACE", "PROPFIND", "QUERY", "CONNECT"):
        other = client.open(path, method=method)
        assert _outcome(other, 405)["issue"][0]["code"] == "not-supported", method
        assert other.headers["Allow"] == options.headers["Allow"], method
    head, get = client.head(path), client.get(path)
    assert (head.status_code, head.data) == (get.status_code, b"")


def test_a_protocol_with_drafts_only_does_not_exist_over_fhir(client):
    """Its read is a 404; so is its history (an empty 200 Bundle told that an unpublished draft exists)."""
    draft_only = _create(client, status="draft")["id"]
    _outcome(client.get(f"{MK}/{draft_only}"), 404)
    body = _outcome(client.get(f"{MK}/{draft_only}/_history"), 404)
    assert "no published version" in body["issue"][0]["diagnostics"]
    _outcome(client.get(f"{MK}/{draft_only}/_history/1"), 404)
    published = _create(client)["id"]
    assert client.get(f"{MK}/{published}/_history").status_code == 200


# ------------------------------------------------------------------- found by an adversarial probe


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"])
def test_last_updated_past_the_dates_the_server_handles_is_400(client, value):
    """An instant that is not within years 1-9999 in UTC (it was a 500: an OverflowError)."""
    response = client.get(MK, query_string={"_lastUpdated": value})
    outcome = _outcome(response, 400)
    assert "_lastUpdated" in json.dumps(outcome)


@pytest.mark.parametrize(("value", "found"), [
    ("lt9999-12-31", True), ("le9999-12", True), ("ne9999", True), ("9999-12-31", False), ("ge9999-12-31", False),
    ("gt9999", False), ("eq9999-12-31T23:59:59Z", False), ("lt9999-12-31T23:59:59.999999Z", True),
    ("lt9999-12-31T23:59:59.9999999Z", True), ("ge9999-12-31T23:59:59.9999999Z", False),  # a review: a 400
])
def test_last_updated_in_the_year_9999_is_an_open_upper_bound(client, value, found):
    """Found by a probe: `lt9999-12-31` (a common open upper bound), `le9999-12` and `ne9999` were 400s, one
    in Python's own words ("year 10000 is out of range"): a range that starts in year 9999 ends with what
    the server stores."""
    pid = _create(client)["id"]
    bundle = _bundle(client.get(MK, query_string={"_id": pid, "_lastUpdated": value}))
    assert [e["resource"]["id"] for e in bundle.get("entry", [])] == ([pid] if found else [])


@pytest.mark.parametrize("offset", ["+25:00", "+01:99", "-99:00", "+14:01", "-15:00"])
def test_last_updated_offsets_beyond_fhirs_14_hours_are_400(client, offset):
    response = client.get(MK, query_string={"_lastUpdated": f"2024-01-01T10:00:00{offset}"})
    _outcome(response, 400)
    assert client.get(MK, query_string={"_lastUpdated": "ge2024-01-01T10:00:00+14:00"}).status_code == 200
    assert client.get(MK, query_string={"_lastUpdated": "ge2024-01-01T10:00:00-13:59"}).status_code == 200


@pytest.mark.parametrize("offset", ["+23:59", "+14:01", "-15:00", "+1400", "z"])
def test_since_offsets_beyond_fhirs_14_hours_are_400_as_for_last_updated(client, offset):
    """Found by an adversarial probe: ``_since`` took offsets up to ±23:59, where ``_lastUpdated`` and
    FHIR's ``instant`` stop at ±14:00. One offset pattern serves both, so a lowercase z, which an
    ``instant`` does not allow, is refused by both too."""
    pid = _create(client)["id"]
    body = _outcome(client.get(f"{MK}/{pid}/_history", query_string={"_since": f"2024-01-01T10:00:00{offset}"}), 400)
    assert "14:00" in body["issue"][0]["diagnostics"]
    for accepted in ("2024-01-01T10:00:00+14:00", "2024-01-01T10:00:00-13:59", "2024-01-01T10:00:00Z"):
        assert client.get(f"{MK}/{pid}/_history", query_string={"_since": accepted}).status_code == 200


@pytest.mark.parametrize(("value", "reason"), [("2026-12-05", "no time and zone"),
                                                ("2026-12-05T10:00:00", "no zone"), ("garbage", "not a date-time"),
                                                ("2026-12-05T10:00:00+0100", "the zone must be Z or +hh:mm/-hh:mm"),
                                                ("2026-12-05T10:00:00+5", "the zone must be Z or +hh:mm/-hh:mm")])
def test_since_without_a_zone_is_told_so_not_that_its_offset_is_too_far(client, value, reason):
    """Found by a documentation probe: ``_since=2026-12-05`` was refused "(offset beyond FHIR's ±14:00)"."""
    pid = _create(client)["id"]
    body = _outcome(client.get(f"{MK}/{pid}/_history", query_string={"_since": value}), 400)
    assert f"({reason})" in body["issue"][0]["diagnostics"] and "beyond" not in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(("accept", "answered"), [
    ("application/fhir+json;q=0.5, application/json;q=0.9", "application/json"),
    ("application/json, application/fhir+json;q=0.8", "application/json"),
    ("application/json;q=0.5, application/fhir+json;q=0.9", "application/fhir+json"),
    ("application/json, application/fhir+json", "application/fhir+json"),  # a tie: the server's own type
    ("application/*;q=0.9, application/json;q=0.2", "application/fhir+json"),
    # DSTU2's name, which _format takes too, is the R4 type (it was a 406 through Accept alone)
    ("application/json+fhir", "application/fhir+json"),
    ("application/json+fhir;q=0.9, application/json;q=0.5", "application/fhir+json"),
    ("application/json+fhir;q=0.2, application/json;q=0.5", "application/json"),
    ("application/json+fhir;q=0, application/fhir+json;q=0.8, application/json;q=0.5", "application/fhir+json"),
])
def test_the_answer_is_in_the_type_the_client_rates_highest(client, accept, answered):
    """Found by an adversarial probe: the first type the client did not refuse was chosen, so a client
    preferring application/json (q=0.9) to application/fhir+json (q=0.5) got fhir+json."""
    response = client.get("/fhir/R4/metadata", headers={"Accept": accept})
    assert response.status_code == 200 and response.mimetype == answered, (accept, response.mimetype)


def test_every_malformed_search_or_history_parameter_is_its_own_issue(client):
    """Found by a probe: the first malformed parameter was the only one named, so a client fixing
    ``_count`` learnt of its bad ``_cursor`` on the next request."""
    body = _outcome(client.get(f"{MK}?_count=abc&code=&_cursor=zzz&status=bogus"), 400)
    assert [issue["expression"] for issue in body["issue"]] == [["_count"], ["code"], ["_cursor"], ["status"]]
    assert all(issue["code"] == "invalid" and issue["diagnostics"] for issue in body["issue"])
    pid = _create(client)["id"]
    history = _outcome(client.get(f"{MK}/{pid}/_history?_count=-1&_since=yesterday&_cursor=zzz"), 400)
    assert [issue["expression"] for issue in history["issue"]] == [["_count"], ["_since"], ["_cursor"]]
    export = _outcome(client.get("/fhir/R4/$export?_outputFormat=csv&_type=Patient"), 400)
    assert [issue["expression"] for issue in export["issue"]] == [["_outputFormat"], ["_type"]]
    query = "_count=abc" + "&_count=1" * 300 + "".join(f"&status=s{n}" for n in range(30))
    repeated = _outcome(client.get(f"{MK}?{query}"), 400)
    assert len(repeated["issue"]) == 20  # "may appear once" once, and no more than 20 issues (found in review)
    assert sum("_count" in issue["expression"] for issue in repeated["issue"]) == 2
    assert "more malformed parameters, not listed" in repeated["issue"][-1]["diagnostics"]
    one = _outcome(client.get(f"{MK}?_count=abc"), 400)  # one malformed parameter: one issue, as before
    assert [issue["expression"] for issue in one["issue"]] == [["_count"]]


def test_format_overrides_accept(client):
    for accept in ("application/fhir+xml", "text/html"):
        response = client.get("/fhir/R4/metadata?_format=json", headers={"Accept": accept})
        assert response.status_code == 200, (accept, response.get_data(as_text=True)[:200])
        CapabilityStatement.model_validate(response.get_json())
        assert client.get("/fhir/R4/metadata", headers={"Accept": accept}).status_code == 406


def test_a_count_too_long_is_refused_with_a_message_that_says_why(client):
    """Found by an adversarial probe: _count=1000000 was refused as "not a non-negative integer"."""
    response = client.get("/fhir/R4/MedicationKnowledge?_count=1000000")
    assert response.status_code == 400
    assert "at most 6 digits" in json.dumps(response.get_json())


def test_every_fhir_answer_says_its_charset_is_utf8(client):
    """FHIR R4 (http.html) requires ``charset=utf-8`` on every request and response body: HTTP's default
    without one is ISO-8859-1 (found by a conformance probe)."""
    protocol = _create(client)
    pid = protocol["id"]
    for path, accept in (("/fhir/R4/metadata", "application/fhir+json"), ("/fhir/R4/metadata", "application/json"),
                         (f"/fhir/R4/MedicationKnowledge/{pid}", "application/fhir+json"),
                         (f"/fhir/R4/MedicationKnowledge/{pid}/_history/1", "application/fhir+json"),
                         (f"/fhir/R4/MedicationKnowledge/{pid}/_history", "application/fhir+json"),
                         ("/fhir/R4/MedicationKnowledge?code=6130", "application/fhir+json"),
                         ("/fhir/R4/MedicationKnowledge/nope-nope", "application/fhir+json"),
                         ("/fhir/R4/Patient/1", "application/fhir+json"),
                         ("/fhir/R4/$export", "application/fhir+ndjson")):
        response = client.get(path, headers={"Accept": accept})
        assert response.content_type.endswith("; charset=utf-8"), (path, response.status_code, response.content_type)
        assert response.status_code == (404 if "nope" in path or "Patient" in path else 200), path
