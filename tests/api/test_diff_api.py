"""History over HTTP: version listing (since/until/cursor) and the version diff endpoint."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import jsonpatch
import pytest
from flask.testing import FlaskClient

from protocols import diff, versioning
from protocols.db import Database
from tests.protocols.test_search import IV, content_of, route

PID = "esketamine-history"
T0 = datetime(2025, 3, 1, 12, 0, 0)


def _dose(content: dict[str, Any], **changes: Any) -> dict[str, Any]:
    content["dosing_ranges"][0].update(changes)
    return content


@pytest.fixture
def history(db: Database) -> list[versioning.StoredVersion]:
    """Five versions recorded an hour apart: dose up, unit change, route added, retired."""
    v1 = versioning.create(db, PID, content_of(PID), now=T0)
    versions = [v1]
    edits = [
        _dose(content_of(PID), dose_max=112),
        _dose(content_of(PID), dose_min=0.2, dose_max=1, unit="mg/kg", max_per_period=None),
        {**content_of(PID, routes=[*content_of(PID)["routes"], route(IV)])},
    ]
    for hour, content in enumerate(edits, start=1):
        stored, created = versioning.revise(db, PID, content, if_match=[versions[-1].etag],
                                            now=T0 + timedelta(hours=hour))
        assert created
        versions.append(stored)
    retired, _ = versioning.retire(db, PID, if_match=[versions[-1].etag], now=T0 + timedelta(hours=4))
    versions.append(retired)
    return versions


def get_json(client: FlaskClient, url: str, status: int = 200, **params: Any) -> Any:
    response = client.get(url, query_string=params or None)
    assert response.status_code == status, response.get_json()
    return response.get_json()


# ------------------------------------------------------------------------------ version history


def test_versions_newest_first_with_cursor_pages(client: FlaskClient, history: list[Any]) -> None:
    url = f"/v1/protocols/{PID}/versions"
    first = client.get(url, query_string={"page_size": 2})
    body = first.get_json()
    assert [v["version"] for v in body["items"]] == [5, 4]
    assert body["prev"] is None and first.headers["Link"] == f'<{body["next"]}>; rel="next"'
    second = get_json(client, body["next"])
    assert [v["version"] for v in second["items"]] == [3, 2]
    third = get_json(client, second["next"])
    assert [v["version"] for v in third["items"]] == [1] and third["next"] is None
    assert [v["version"] for v in get_json(client, third["prev"])["items"]] == [3, 2]


def test_versions_since_and_until_bound_recorded_at(client: FlaskClient, history: list[Any]) -> None:
    url = f"/v1/protocols/{PID}/versions"
    since = get_json(client, url, since="2025-03-01T14:00:00Z")
    assert [v["version"] for v in since["items"]] == [5, 4, 3]  # inclusive
    until = get_json(client, url, until="2025-03-01T14:00:00Z")
    assert [v["version"] for v in until["items"]] == [2, 1]  # exclusive
    window = get_json(client, url, since="2025-03-01T13:00:00+01:00", until="2025-03-01T15:30:00+02:00")
    assert [v["version"] for v in window["items"]] == [2, 1]  # offsets honoured: 12:00 to 13:30 UTC
    paged = get_json(client, url, since="2025-03-01T13:00:00Z", page_size=2)
    assert [v["version"] for v in paged["items"]] == [5, 4]
    assert "since=2025-03-01T13" in paged["next"]
    assert [v["version"] for v in get_json(client, paged["next"])["items"]] == [3, 2]


@pytest.mark.parametrize("params", [{"since": "yesterday"}, {"until": "2025-03-01"}, {"page_size": "0"},
                                    {"cursor": "junk"}, {"after": "1"}])
def test_version_listing_rejects_bad_parameters(client: FlaskClient, history: list[Any],
                                                params: dict[str, str]) -> None:
    body = get_json(client, f"/v1/protocols/{PID}/versions", 422, **params)
    assert set(params) <= set(body["errors"])


def test_versions_of_an_unknown_protocol_is_404(client: FlaskClient, db: Database) -> None:
    get_json(client, "/v1/protocols/no-such-protocol/versions", 404)


# -------------------------------------------------------------------------------------- diffs


def test_diff_patch_turns_version_a_into_b(client: FlaskClient, history: list[Any]) -> None:
    for a, b in [(1, 2), (2, 3), (1, 5), (5, 1), (3, 3)]:
        body = get_json(client, f"/v1/protocols/{PID}/versions/{a}/diff/{b}")
        doc_a = get_json(client, f"/v1/protocols/{PID}/versions/{a}")
        doc_b = get_json(client, f"/v1/protocols/{PID}/versions/{b}")
        assert (body["protocol_id"], body["from_version"], body["to_version"]) == (PID, a, b)
        assert jsonpatch.apply_patch(doc_a, body["patch"]) == doc_b


def test_diff_reports_clinical_changes_with_severity(client: FlaskClient, history: list[Any]) -> None:
    def kinds(a: int, b: int) -> list[tuple[str, str]]:
        body = get_json(client, f"/v1/protocols/{PID}/versions/{a}/diff/{b}")
        return [(c["type"], c["severity"]) for c in body["changes"]]

    assert kinds(1, 2) == [("dose_max_increased", "major"), ("effective_from_changed", "minor")]
    assert kinds(2, 1) == [("dose_max_decreased", "major"), ("effective_from_changed", "minor")]
    assert kinds(2, 3) == [("unit_changed", "major"), ("max_per_period_changed", "major"),
                           ("effective_from_changed", "minor")]
    assert kinds(3, 4)[0] == ("route_added", "major")
    assert kinds(4, 5)[0] == ("status_changed", "major")
    body = get_json(client, f"/v1/protocols/{PID}/versions/1/diff/2")
    change = body["changes"][0]
    assert change == {"type": "dose_max_increased", "severity": "major", "path": "/dosing_ranges/0/dose_max",
                      "before": 84, "after": 112, "route": "46713006", "phase": "induction",
                      "description": change["description"]}
    assert "84" in change["description"] and "112" in change["description"]
    assert body["highest_severity"] == "major"
    assert body["counts"] == {"major": 1, "moderate": 0, "minor": 1}
    same = get_json(client, f"/v1/protocols/{PID}/versions/3/diff/3")
    assert same["patch"] == [] and same["changes"] == [] and same["highest_severity"] is None


def test_diff_revalidates_and_its_etag_is_its_representations(client: FlaskClient, history: list[Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an adversarial probe: the diff's strong ETag was a hash of the two versions' ETags and
    its answer was cached as immutable for a year, but a release that compares versions differently
    (a unit change once read "not comparable") answers the same pair with other changes: a client kept
    the old answer, and its revalidation was a 304. The ETag is now the hash of the answer's bytes, and
    the answer is revalidated (no-cache)."""
    url = f"/v1/protocols/{PID}/versions/1/diff/2"
    first = client.get(url)
    assert first.headers["Cache-Control"] == "private, no-cache"
    etag = first.headers["ETag"]
    assert etag == diff.diff_etag(first.data)
    real = diff.diff_documents

    def reworded(old: Any, new: Any) -> Any:  # the same two versions, compared by a later release
        result = real(old, new)
        result.changes[0] = replace(result.changes[0], description=result.changes[0].description + " (reworded)")
        return result

    monkeypatch.setattr(diff, "diff_documents", reworded)
    later = client.get(url, headers={"If-None-Match": etag})
    assert later.status_code == 200 and later.headers["ETag"] != etag and b"(reworded)" in later.data
    monkeypatch.setattr(diff, "diff_documents", real)
    assert client.get(f"/v1/protocols/{PID}/versions/2/diff/1").headers["ETag"] != etag
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["ETag"] == etag and not again.data


@pytest.mark.parametrize("url", ["/v1/protocols/{pid}/versions/1/diff/9", "/v1/protocols/{pid}/versions/0/diff/1",
                                 "/v1/protocols/unknown-protocol/versions/1/diff/2"])
def test_diff_of_missing_versions_is_404(client: FlaskClient, history: list[Any], url: str) -> None:
    body = get_json(client, url.format(pid=PID), 404)
    assert body["code"] == 404 and body["message"]


def test_diff_path_must_be_integers(client: FlaskClient, history: list[Any]) -> None:
    assert client.get(f"/v1/protocols/{PID}/versions/one/diff/2").status_code == 404
    assert client.get(f"/v1/protocols/{PID}/versions/1/diff/-2").status_code == 404


def _stages(texts: tuple[str, str], doses: tuple[tuple[int, int], tuple[int, int]]) -> list[dict[str, Any]]:
    return [{"route": "46713006", "phase": "maintenance", "dose_min": low, "dose_max": high, "unit": "mg",
             "frequency": {"count": 1, "period": "P1W", "text": text}, "duration": None, "max_per_period": None,
             "instructions": None} for text, (low, high) in zip(texts, doses, strict=True)]


def test_diff_names_doses_moved_between_reworded_stages_and_ranges_matched_away(client: FlaskClient,
                                                                                  db: Database) -> None:
    """Found in review, over HTTP: both stages' texts reworded in the revision that swapped their doses
    read as two rewordings (moderate). Version 2 names the four dose changes (major); version 3 gives both
    stages one label while swapping the doses back, which nothing can pair by stage, so each position is
    named dosing_range_rematched (major; in the schema's enum), with the two ranges as before and after."""
    pid = "esketamine-stages"
    old = ("once weekly, weeks 5-8", "once weekly, week 9 onwards")
    versions = [versioning.create(db, pid, content_of(pid, dosing_ranges=_stages(old, ((56, 84), (28, 56)))), now=T0)]
    revisions = [(("once weekly, weeks 5 to 8", "once weekly, from week 9"), ((28, 56), (56, 84))),
                 (("once weekly", "once weekly"), ((56, 84), (28, 56)))]
    for hour, (texts, doses) in enumerate(revisions, start=1):
        stored, created = versioning.revise(db, pid, content_of(pid, dosing_ranges=_stages(texts, doses)),
                                            if_match=[versions[-1].etag], now=T0 + timedelta(hours=hour))
        assert created
        versions.append(stored)
    body = get_json(client, f"/v1/protocols/{pid}/versions/1/diff/2")
    assert body["highest_severity"] == "major" and body["counts"]["major"] == 4
    assert [(c["type"], c["path"]) for c in body["changes"] if c["severity"] == "major"] == [
        ("dose_min_decreased", "/dosing_ranges/0/dose_min"), ("dose_max_decreased", "/dosing_ranges/0/dose_max"),
        ("dose_min_increased", "/dosing_ranges/1/dose_min"), ("dose_max_increased", "/dosing_ranges/1/dose_max")]
    body = get_json(client, f"/v1/protocols/{pid}/versions/2/diff/3")
    v2 = get_json(client, f"/v1/protocols/{pid}/versions/2")
    v3 = get_json(client, f"/v1/protocols/{pid}/versions/3")
    rematched = [c for c in body["changes"] if c["severity"] == "major"]
    assert [(c["type"], c["path"], c["before"], c["after"]) for c in rematched] == [
        ("dosing_range_rematched", f"/dosing_ranges/{i}", v2["dosing_ranges"][i], v3["dosing_ranges"][i])
        for i in (0, 1)]
    assert body["highest_severity"] == "major"
