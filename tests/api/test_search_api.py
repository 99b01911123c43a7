"""``GET /v1/protocols`` over HTTP: filters, text search, 422s that name the parameter, cursor pages."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient

from api.http import QUERY_FIELD, decode_cursor_with
from protocols import search, versioning
from protocols.db import Database
from protocols.paging import encode_cursor
from protocols.terminology import ICD10CM, SNOMED
from schemas.query import MAX_PAGE_SIZE
from tests.factories import protocol_payload
from tests.protocols.test_search import ANESTHESIA, CORPUS, IM, IV, P1, P2, P3, P4, P5, content_of, load_corpus


@pytest.fixture
def corpus(db: Database) -> Database:
    load_corpus(db)
    return db


def get(client: FlaskClient, url: str, **params: Any) -> Any:
    response = client.get(url, query_string=params or None)
    assert response.status_code == 200, response.get_json()
    return response


def listed(client: FlaskClient, **params: Any) -> list[str]:
    body = get(client, "/v1/protocols", page_size=MAX_PAGE_SIZE, **params).get_json()
    assert body["next"] is None
    return [item["id"] for item in body["items"]]


def walk(client: FlaskClient, url: str, between: Any = None) -> list[str]:
    """Follow ``next`` links to the end (optionally writing between fetches)."""
    seen: list[str] = []
    while url:
        body = get(client, url).get_json()
        seen += [item["id"] for item in body["items"]]
        url = body["next"]
        if url and between:
            between()
    return seen


@pytest.mark.parametrize(("params", "expected"), [
    ({}, [P5, P4, P3, P2, P1]),
    ({"drug": "SPRAVATO"}, [P2, P1]),
    ({"drug": "ketalar"}, [P3]),
    ({"rxnorm_cui": "6130"}, [P5, P4, P3]),
    ({"route": IM}, [P3]),
    ({"indication": "F33"}, [P4, P1]),
    ({"indication": "g90"}, [P5]),
    ({"indication": ANESTHESIA, "indication_system": SNOMED}, [P3]),
    ({"indication_system": ICD10CM}, [P5, P4, P2, P1]),
    ({"fda_status": "off_label"}, [P5, P4]),
    ({"dea_schedule": "CIII", "rems_required": "true"}, [P2, P1]),
    ({"rems_required": "false", "route": IV}, [P5, P4, P3]),
    ({"q": "depress"}, [P2, P1, P4]),
    ({"q": "depress", "drug": "ketamine"}, [P4]),
    ({"q": "Ésketamine"}, [P2, P1]),
    ({"as_of": "2020-01-01T00:00:00Z"}, []),
    ({"as_of": "2025-01-06T09:01:30+00:00"}, [P2, P1]),
    ({"updated_since": "2025-01-06T09:02:30Z"}, [P5, P4]),
    ({"status": "retired"}, []),
    ({"status": "draft"}, []),
])
def test_filters_over_http(client: FlaskClient, corpus: Database, params: dict[str, Any],
                           expected: list[str]) -> None:
    assert listed(client, **params) == expected


def test_retired_and_draft_listings(client: FlaskClient, corpus: Database) -> None:
    versioning.retire(corpus, P5, if_match=[versioning.latest(corpus, P5).etag])
    versioning.revise(corpus, P1, content_of(P1, title="Draft rewrite"), status="draft",
                      if_match=[versioning.latest(corpus, P1).etag])
    assert listed(client) == [P4, P3, P2, P1]
    assert listed(client, status="retired") == [P5]
    retired = get(client, "/v1/protocols", status="retired").get_json()["items"][0]
    assert (retired["status"], retired["version"]) == ("retired", 2)
    drafts = get(client, "/v1/protocols", status="draft").get_json()["items"]
    assert [(d["id"], d["status"], d["title"]) for d in drafts] == [(P1, "draft", "Draft rewrite")]


@pytest.mark.parametrize(("params", "field"), [
    ({"colour": "red"}, "colour"),
    ({"drug_name": "ketamine"}, "drug_name"),
    ({"route": "nasal"}, "route"),
    ({"rxnorm_cui": "0123"}, "rxnorm_cui"),
    ({"indication": "F3"}, "indication"),
    ({"indication": "depression"}, "indication"),
    ({"indication": ANESTHESIA, "indication_system": ICD10CM}, "indication"),
    ({"indication_system": "http://example.org/codes"}, "indication_system"),
    ({"fda_status": "maybe"}, "fda_status"),
    ({"dea_schedule": "C3"}, "dea_schedule"),
    ({"rems_required": "yes"}, "rems_required"),
    ({"status": "deleted"}, "status"),
    ({"q": ""}, "q"),
    ({"q": "?!  --"}, "q"),
    ({"q": " ".join(f"w{i}" for i in range(17))}, "q"),
    ({"as_of": "yesterday"}, "as_of"),
    ({"as_of": "2025-01-01T00:00:00"}, "as_of"),  # no offset: ambiguous
    ({"updated_since": "2025-01-01"}, "updated_since"),
    ({"count": "1"}, "count"),
    ({"page_size": str(MAX_PAGE_SIZE + 1)}, "page_size"),
    ({"page_size": "0"}, "page_size"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"q": "ketamine", "cursor": encode_cursor("protocols:ranked", [2**70, 1], "n")}, "cursor"),
    ({"q": "ketamine", "cursor": encode_cursor("protocols:ranked", [8], "n")}, "cursor"),
    ({"q": "ketamine", "cursor": encode_cursor("protocols:ranked", [8, True], "n")}, "cursor"),
])
def test_bad_parameters_are_422_naming_the_parameter(client: FlaskClient, params: dict[str, str],
                                                    field: str) -> None:
    response = client.get("/v1/protocols", query_string=params)
    assert response.status_code == 422
    body = response.get_json()
    assert field in body["errors"], body
    assert body["code"] == 422 and body["request_id"]


def test_a_cursor_from_another_listing_is_422(client: FlaskClient, corpus: Database) -> None:
    plain_next = get(client, "/v1/protocols", page_size=2).get_json()["next"]
    cursor = parse_qs(urlsplit(plain_next).query)["cursor"][0]
    response = client.get("/v1/protocols", query_string={"q": "ketamine", "cursor": cursor})
    assert response.status_code == 422 and "cursor" in response.get_json()["errors"]
    ranked_next = get(client, "/v1/protocols", q="in", page_size=1).get_json()["next"]
    ranked_cursor = parse_qs(urlsplit(ranked_next).query)["cursor"][0]
    response = client.get("/v1/protocols", query_string={"cursor": ranked_cursor})
    assert response.status_code == 422 and "cursor" in response.get_json()["errors"]


def test_pages_carry_links_in_header_and_body(client: FlaskClient, corpus: Database) -> None:
    first = get(client, "/v1/protocols", page_size=2, drug="ketamine")
    body = first.get_json()
    assert [i["id"] for i in body["items"]] == [P5, P4]
    assert body["page_size"] == 2 and body["prev"] is None and "count" not in body
    assert first.headers["Link"] == f'<{body["next"]}>; rel="next"'
    assert parse_qs(urlsplit(body["next"]).query)["drug"] == ["ketamine"]  # filters survive paging

    second = get(client, body["next"])
    body2 = second.get_json()
    assert [i["id"] for i in body2["items"]] == [P3]
    assert body2["next"] is None
    assert second.headers["Link"] == f'<{body2["prev"]}>; rel="prev"'
    back = get(client, body2["prev"]).get_json()
    assert [i["id"] for i in back["items"]] == [P5, P4]


def test_count_is_opt_in(client: FlaskClient, corpus: Database) -> None:
    body = get(client, "/v1/protocols", page_size=1, count="true", q="depress").get_json()
    assert body["count"] == 3 and len(body["items"]) == 1
    assert "count" not in get(client, "/v1/protocols", count="false").get_json()


@pytest.mark.parametrize("params", [{}, {"q": "in"}, {"route": IV}], ids=["newest-first", "ranked", "filtered"])
def test_cursor_pages_stable_under_concurrent_inserts(client: FlaskClient, corpus: Database,
                                                      params: dict[str, str]) -> None:
    """Insert protocols that match the listing between page fetches: no repeats, no skips."""
    expected = listed(client, **params)
    counter = iter(range(1000))

    def insert() -> None:
        for _ in range(2):
            pid = f"p-inserted-{next(counter)}"
            versioning.create(corpus, pid, content_of(pid, **CORPUS[P4]))

    start = "/v1/protocols?" + "&".join(f"{k}={v}" for k, v in {**params, "page_size": 1}.items())
    seen = walk(client, start, between=insert)
    assert len(seen) == len(set(seen)), "a protocol was served twice"
    assert [pid for pid in seen if pid in CORPUS] == expected, "a protocol was skipped or reordered"
    assert next(counter) > 2  # writes really happened between the fetches


def test_page_size_is_capped_and_documented(client: FlaskClient, app: Any) -> None:
    spec = client.get("/openapi.json").get_json()
    parameters = spec["paths"]["/v1/protocols"]["get"]["parameters"]
    page_size = next(p for p in parameters if p["name"] == "page_size")
    assert page_size["schema"]["maximum"] == MAX_PAGE_SIZE
    names = {p["name"] for p in parameters}
    assert {"drug", "rxnorm_cui", "route", "indication", "indication_system", "fda_status", "dea_schedule",
            "rems_required", "status", "q", "as_of", "updated_since", "count", "cursor"} <= names
    assert re.search(r"max \d+", page_size["description"])


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_revision_that_changes_a_rank_between_fetches_neither_skips_nor_repeats(
        client: FlaskClient, db: Database, direction: str) -> None:
    """Ranked pages follow (rank, sequence); a revision changes the rank. Here the word moves into or
    out of a protocol's title between two fetches, so on a live view that protocol would jump over
    the cursor (skipped when it rises behind the cursor, repeated when it falls from the page seen)."""
    word = "zygomorphic"
    ids = [f"rank-move-{n}" for n in range(3)]
    for pid in ids:
        title = f"{word} protocol {pid}" if direction == "down" else f"protocol {pid}"
        versioning.create(db, pid, content_of(pid, title=title, summary=f"Mentions {word} in passing."))
    first = get(client, "/v1/protocols", q=word, page_size=1).get_json()
    next_url = first["next"]
    assert "as_of=" in next_url and "as_of=" in get(client, next_url).get_json()["next"]
    # Move the protocol that comes last on a live view (oldest) or the one just seen (newest).
    moved = ids[0] if direction == "up" else first["items"][0]["id"]
    newest = versioning.latest(db, moved)
    title = f"{word} protocol {moved}" if direction == "up" else f"protocol {moved}"
    versioning.revise(db, moved, content_of(moved, title=title, summary=f"Mentions {word} in passing."),
                      if_match=[newest.etag])
    seen = [first["items"][0]["id"], *walk(client, next_url)]
    assert sorted(seen) == sorted(ids), seen  # each exactly once
    assert moved in listed(client, q=word)  # a fresh search sees the revision


def test_words_with_new_tai_lue_vowel_signs_match_alike_on_both_databases(client: FlaskClient) -> None:
    """"a" + U+19B0 + "b" was one word to Python (and so to PostgreSQL) and two to SQLite's FTS5, which
    re-tokenizes what it is given: on SQLite count=true and backward pages held protocols the walk
    does not rank, and missed others (adversarial probe). The signs separate words on both now."""

    rows = (("ntl-real-1", "Newtailue one", "a\u19b0b"), ("ntl-real-2", "Newtailue two", "a\u19b0b"),
            ("ntl-fake", "Newtailue apple", "nothing"))
    for pid, title, summary in rows:
        assert client.post("/v1/protocols", json=protocol_payload(pid, title=title, summary=summary)).status_code == 201
    first = get(client, "/v1/protocols", q="a\u19b0 newtai", page_size=1, count="true").get_json()
    forward = walk(client, "/v1/protocols?q=a%E1%A6%B0+newtai&page_size=1")
    back: list[str] = []
    body = first
    while body["next"]:
        body = get(client, body["next"]).get_json()
    while body:
        back[:0] = [item["id"] for item in body["items"]]
        body = get(client, body["prev"]).get_json() if body["prev"] else None
    assert first["count"] == len(forward) == 3 and back == forward, (first["count"], forward, back)
    assert sorted(listed(client, q="b")) == ["ntl-real-1", "ntl-real-2"]  # "b" is a word of its own on both


@pytest.mark.parametrize("direction", ["up", "down"])
def test_a_back_dated_write_between_ranked_pages_is_refused_not_skipped_or_repeated(
        client: FlaskClient, db: Database, direction: str) -> None:
    """Found by an adversarial probe: links pin the search's moment but not its history. A revision
    recorded between two fetches with an effective_from before that moment changes which version is in
    effect *at* it, so the protocol's rank moved across the cursor and the walk skipped it (rank rose)
    or repeated it (rank fell). Such a walk now ends in a 409 naming the cursor, with a link to the
    search's first page; a revision that takes effect after the moment does not disturb it."""
    from datetime import UTC, datetime

    word = "quokkanol"
    ids = [f"back-dated-{n}" for n in range(3)]
    start = datetime(2020, 1, 1, tzinfo=UTC)
    for pid in ids:
        title = f"{word} protocol {pid}" if direction == "down" else f"protocol {pid}"
        versioning.create(db, pid, content_of(pid, title=title, summary=f"Mentions {word} in passing."),
                          effective_from=start)
    first = get(client, "/v1/protocols", q=word, page_size=1).get_json()
    # A revision effective now (after the pinned moment) leaves the walk alone.
    untouched = ids[1]
    versioning.revise(db, untouched, content_of(untouched, title=f"protocol {untouched} (retitled)",
                                                summary=f"Mentions {word} in passing."),
                      if_match=[versioning.latest(db, untouched).etag])
    second = get(client, first["next"]).get_json()
    moved = ids[0] if direction == "up" else first["items"][0]["id"]
    title = f"{word} protocol {moved}" if direction == "up" else f"protocol {moved}"
    versioning.revise(db, moved, content_of(moved, title=title, summary=f"Mentions {word} in passing."),
                      if_match=[versioning.latest(db, moved).etag], effective_from=datetime(2021, 1, 1, tzinfo=UTC))
    refused = client.get(second["next"] or second["prev"])
    assert refused.status_code == 409, refused.get_json()
    body = refused.get_json()
    assert list(body["errors"]) == ["cursor"] and "cursor=" not in body["first"] and f"q={word}" in body["first"]
    # The server pinned as_of, so the restart reads now, not the stale moment (found by a probe of the fix).
    assert "as_of=" not in body["first"]
    assert sorted(walk(client, body["first"])) == sorted(ids)  # the fresh walk sees each once


def test_a_ranked_page_is_read_in_the_snapshot_its_check_saw(client: FlaskClient, db: Database,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a code review: the check that history did not move under a walk and the page it protects
    were read in two transactions, so a back-dated version committed between them moved ranks on the page
    served (the protocol it raised above the cursor was skipped), and only the next page was refused. The
    check and the page are one snapshot now: the page is the one the check vouched for, and the next page
    is refused."""
    from datetime import UTC, datetime

    from protocols import search as search_module

    word = "wombatine"
    ids = [f"snapshot-{n}" for n in range(3)]
    for pid in ids:
        versioning.create(db, pid, content_of(pid, title=f"protocol {pid}", summary=f"Mentions {word}."),
                          effective_from=datetime(2020, 1, 1, tzinfo=UTC))
    order = walk(client, f"/v1/protocols?q={word}&page_size=1")
    first = get(client, "/v1/protocols", q=word, page_size=1).get_json()
    assert [item["id"] for item in first["items"]] == order[:1]
    moved = order[1]  # raised above the cursor by a back-dated title: the walk would skip it
    walked = search_module._walked_page
    written: list[str] = []

    def write_then_walk(*args: Any, **kwargs: Any) -> Any:
        if not written:
            written.append(moved)
            versioning.revise(db, moved, content_of(moved, title=f"{word} protocol {moved}",
                                                    summary=f"Mentions {word}."),
                              if_match=[versioning.latest(db, moved).etag],
                              effective_from=datetime(2021, 1, 1, tzinfo=UTC))
        return walked(*args, **kwargs)

    monkeypatch.setattr(search_module, "_walked_page", write_then_walk)
    second = get(client, first["next"]).get_json()
    assert written == [moved] and [item["id"] for item in second["items"]] == [moved]
    monkeypatch.undo()
    assert client.get(second["next"]).status_code == 409


def test_a_ranked_walk_is_refused_only_when_what_it_reads_can_have_changed(client: FlaskClient, db: Database) -> None:
    """Found by a probe of the fix: a back-dated draft (never in effect) refused walks it could not
    disturb. And a walk with the client's own as_of restarts at that as_of."""
    from datetime import UTC, datetime

    word = "capybarine"
    start = datetime(2020, 1, 1, tzinfo=UTC)
    for n in range(3):
        versioning.create(db, f"draft-walk-{n}", content_of(f"draft-walk-{n}", summary=f"Mentions {word}."),
                          effective_from=start)
    first = get(client, "/v1/protocols", q=word, page_size=1).get_json()
    pid = first["items"][0]["id"]
    versioning.revise(db, pid, content_of(pid, title=f"{word} draft"), if_match=[versioning.latest(db, pid).etag],
                      status="draft", effective_from=datetime(2021, 1, 1, tzinfo=UTC))
    assert len([first["items"][0]["id"], *walk(client, first["next"])]) == 3
    # A walk of drafts reads them by recording time: a draft recorded by its (later) as_of moves it, so
    # that walk is refused (found by a probe of the fix; ignoring drafts skipped the moved one).
    for other in {f"draft-walk-{n}" for n in range(3)} - {pid}:
        versioning.revise(db, other, content_of(other, title=f"{word} draft {other}"),
                          if_match=[versioning.latest(db, other).etag], status="draft")
    drafts = get(client, "/v1/protocols", q=word, page_size=1, status="draft", as_of="2030-01-01T00:00:00Z")
    assert drafts.get_json()["next"]
    versioning.revise(db, pid, content_of(pid, title=f"{word} {word} {word} draft"),
                      if_match=[versioning.latest(db, pid).etag], status="draft")
    assert client.get(drafts.get_json()["next"]).status_code == 409
    # ... whatever the new version's effective_from: a draft dated after the walk's as_of is still read
    # by it (an adversarial probe: dated 2031, it was listed twice with no 409).
    again = get(client, "/v1/protocols", q=word, page_size=1, status="draft", as_of="2030-01-01T00:00:00Z")
    shown = again.get_json()["items"][0]["id"]
    versioning.revise(db, shown, content_of(shown, title=f"draft {shown} without the word"),
                      if_match=[versioning.latest(db, shown).etag], status="draft",
                      effective_from=datetime(2031, 1, 1, tzinfo=UTC))
    assert client.get(again.get_json()["next"]).status_code == 409
    own = "2030-01-01T00:00:00Z"
    mine = get(client, "/v1/protocols", q=word, page_size=1, as_of=own).get_json()
    versioning.revise(db, pid, content_of(pid, title=f"{word} now"), if_match=[versioning.latest(db, pid).etag])
    refused = client.get(mine["next"])
    assert refused.status_code == 409 and "as_of=2030-01-01" in refused.get_json()["first"]


def test_a_ranked_cursor_issued_without_a_feed_position_still_pages(client: FlaskClient, db: Database) -> None:
    """Cursors issued before ranked cursors carried the first page's feed position are two keys long
    (rank, sequence); they still page, without the changed-history check; three keys do, and four or a
    negative position are refused as any forged cursor is."""
    word = "wombatine"
    for n in range(3):
        versioning.create(db, f"old-cursor-{n}", content_of(f"old-cursor-{n}", summary=f"Mentions {word}."))
    first = get(client, "/v1/protocols", q=word, page_size=1).get_json()
    new_token = parse_qs(urlsplit(first["next"]).query)["cursor"][0]
    key, _, _ = decode_cursor_with("protocols:ranked", new_token, extra=(QUERY_FIELD,))
    assert len(key) == 4  # rank, sequence, feed position, whether the server pinned as_of
    as_of = parse_qs(urlsplit(first["next"]).query)["as_of"][0]
    old = get(client, "/v1/protocols", q=word, page_size=1, as_of=as_of,
              cursor=encode_cursor("protocols:ranked", key[:2], "n")).get_json()
    current = get(client, first["next"]).get_json()
    assert [item["id"] for item in old["items"]] == [item["id"] for item in current["items"]]
    for forged in ([*key, 1], [*key[:2], -1]):
        response = client.get("/v1/protocols", query_string={"q": word, "cursor": encode_cursor(
            "protocols:ranked", forged, "n")})
        assert response.status_code == 422 and list(response.get_json()["errors"]) == ["cursor"]


def test_a_page_emptied_by_retirements_keeps_a_way_on(client: FlaskClient, db: Database) -> None:
    """Found by a probe: a page left empty by writes since its cursor was issued had neither next nor
    prev. Following prev from page 2 after page 1's protocol was retired said the list had ended while
    two protocols were still listed; a forward page emptied the same way lost its prev."""
    ids = [f"emptied-{n}" for n in range(3)]
    for pid in ids:
        versioning.create(db, pid, content_of(pid))
    first = get(client, "/v1/protocols", page_size=1).get_json()
    second = get(client, first["next"]).get_json()
    assert [i["id"] for i in first["items"] + second["items"]] == ["emptied-2", "emptied-1"]
    versioning.retire(db, "emptied-2", if_match=[versioning.latest(db, "emptied-2").etag])
    back = get(client, second["prev"]).get_json()
    assert back["items"] == [] and back["prev"] is None and "cursor=" not in back["next"]
    assert walk(client, back["next"]) == ["emptied-1", "emptied-0"]
    third = get(client, second["next"]).get_json()
    assert [i["id"] for i in third["items"]] == ["emptied-0"]
    versioning.retire(db, "emptied-0", if_match=[versioning.latest(db, "emptied-0").etag])
    onward = get(client, third["next"] or second["next"]).get_json()
    assert onward["items"] == [] and onward["next"] is None
    # Back from the emptied page: the page that ends with emptied-1, the key it was read after (a cursor
    # at that key, items strictly before it, skipped emptied-1 though it was still listed; probe).
    before_it = get(client, onward["prev"]).get_json()
    assert [i["id"] for i in before_it["items"]] == ["emptied-1"] and before_it["prev"] is None


def test_walking_back_from_a_page_emptied_by_retirements_skips_no_protocol(client: FlaskClient,
                                                                           db: Database) -> None:
    """Found by an adversarial probe: pages [3, 2] and [1, 0] of four protocols; 1 and 0 retired; the
    second page, fetched again, is empty, and its prev led to [3] alone: 2 was on neither page."""
    ids = [f"walk-back-{n}" for n in range(4)]
    for pid in ids:
        versioning.create(db, pid, content_of(pid))
    first = get(client, "/v1/protocols", page_size=2).get_json()
    second = get(client, first["next"]).get_json()
    assert [i["id"] for i in first["items"] + second["items"]] == ids[::-1]
    for pid in ids[:2]:
        versioning.retire(db, pid, if_match=[versioning.latest(db, pid).etag])
    emptied = get(client, first["next"]).get_json()
    assert emptied["items"] == [] and emptied["next"] is None
    back = get(client, emptied["prev"]).get_json()
    assert [i["id"] for i in back["items"]] == ["walk-back-3", "walk-back-2"] and back["prev"] is None


def test_a_page_and_its_count_are_read_at_one_instant(client, monkeypatch):
    """Found by a probe: the page and its count each read "now" for themselves, so a page read just
    before a scheduled protocol took effect came with the count of just after (30 items, count 29).
    A clock that moves on at each read stands in for the time between the two statements."""
    switch = datetime(2030, 1, 1)  # naive UTC, as utcnow() returns
    existing = client.post("/v1/protocols", json=protocol_payload(effective_from="2020-01-01T00:00:00Z"))
    assert existing.status_code == 201, existing.get_json()
    scheduled = client.post("/v1/protocols", json=protocol_payload(effective_from="2030-01-01T00:00:00Z"))
    assert scheduled.status_code == 201, scheduled.get_json()
    for args in ({"count": "true"}, {"count": "true", "drug": "esketamine"}):
        clock = iter([switch - timedelta(milliseconds=1)] + [switch + timedelta(milliseconds=n) for n in range(1, 50)])
        monkeypatch.setattr(search, "utcnow", lambda clock=clock: next(clock))
        body = client.get("/v1/protocols", query_string=args).get_json()
        assert body["count"] == len(body["items"]) == 1, (args, body["count"], body["items"])


def test_a_malformed_indication_is_named_for_the_system_asked(client: FlaskClient) -> None:
    """Found by an adversarial probe: ``indication=F33&indication_system=<SNOMED CT>`` was refused with a
    message about ICD-10-CM codes."""
    snomed = client.get("/v1/protocols", query_string={"indication": "F33", "indication_system": SNOMED})
    assert snomed.status_code == 422
    assert snomed.get_json()["errors"] == {"indication": ["'F33' is not a well-formed SNOMED CT concept id "
                                                          "(e.g. 370143000)"]}
    either = client.get("/v1/protocols", query_string={"indication": "F3"}).get_json()["errors"]["indication"][0]
    assert "ICD-10-CM code" in either and "SNOMED CT concept id" in either


def test_a_ranked_walk_of_drafts_is_not_refused_by_versions_recorded_after_its_moment(
        client: FlaskClient, db: Database) -> None:
    """The draft walk's check reads recording times (an adversarial probe): a version recorded after the
    walk's pinned moment cannot move what it reads, so it does not refuse the walk (found in review: no
    test showed that side)."""
    from datetime import UTC, datetime

    word = "wombatine"
    ids = [f"draft-late-{n}" for n in range(3)]
    for pid in ids:
        versioning.create(db, pid, content_of(pid, summary=f"Mentions {word}."), status="draft",
                          effective_from=datetime(2020, 1, 1, tzinfo=UTC))
    first = get(client, "/v1/protocols", q=word, page_size=1, status="draft").get_json()  # pinned to now
    shown = first["items"][0]["id"]
    versioning.revise(db, shown, content_of(shown, title=f"{word} {word} draft"),
                      if_match=[versioning.latest(db, shown).etag], status="draft")
    rest = client.get(first["next"])
    assert rest.status_code == 200, rest.get_json()
    assert sorted([shown, *walk(client, first["next"])]) == sorted(ids)


def test_a_cursor_is_refused_by_another_query(client: FlaskClient, db: Database) -> None:
    """Found by a probe: a ``drug=ketamine`` cursor read with ``drug=esketamine``, or a search's cursor with
    another ``q`` or ``as_of``, was a 200 that skipped most of the other query's results. A cursor belongs
    to the query of the page that issued it (a 422 naming ``cursor`` otherwise); page size and count may
    change, the order of the parameters does not matter, and the whole walk still reads every item once."""
    for n in range(4):
        versioning.create(db, f"bound-{n}", content_of(f"bound-{n}", summary="Mentions quokkaine and wallabine."))
    for params in ({"page_size": 1}, {"page_size": 1, "q": "quokkaine"}, {"page_size": 1, "q": "quokkaine",
                                                                          "as_of": "2099-01-01T00:00:00Z"}):
        first = get(client, "/v1/protocols", **params).get_json()
        query = parse_qs(urlsplit(first["next"]).query)
        cursor = query.pop("cursor")[0]
        own = {name: values[0] for name, values in query.items()}
        assert get(client, "/v1/protocols", **{**own, "page_size": 3, "count": "true", "cursor": cursor}).status_code \
            == 200
        for other in ({"drug": "esketamine"}, {"q": "wallabine"}, {"as_of": "2098-01-01T00:00:00Z"}):
            response = client.get("/v1/protocols", query_string={**own, **other, "cursor": cursor})
            assert response.status_code == 422, (params, other)
            assert list(response.get_json()["errors"]) == ["cursor"]
            if ("q" in other) == ("q" in params):  # the same kind of listing (a ranked one's cursor is another kind)
                assert "issued for another query" in response.get_json()["errors"]["cursor"][0]
    seen, url = [], "/v1/protocols?page_size=1&q=quokkaine"
    while url:
        page = client.get(url).get_json()
        seen += [item["id"] for item in page["items"]]
        url = page["next"]
    assert sorted(seen) == [f"bound-{n}" for n in range(4)]
