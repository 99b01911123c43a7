"""The versioning rules of issue 2, exercised through the HTTP API on the configured database."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.factories import protocol_payload


def create(client: Any, **overrides: Any) -> tuple[str, Any]:
    payload = protocol_payload(**overrides)
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 201, response.get_json()
    return payload["id"], response


def revise(client: Any, protocol_id: str, body: dict[str, Any], etag: str | None) -> Any:
    headers = {"If-Match": etag} if etag else {}
    return client.put(f"/v1/protocols/{protocol_id}", json=body, headers=headers)


def versions_of(client: Any, protocol_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    url: str | None = f"/v1/protocols/{protocol_id}/versions?page_size=100"
    while url:
        page = client.get(url).get_json()
        items.extend(page["items"])
        url = page["next"]
    return items


# ----------------------------------------------------------------------------- create


def test_create_returns_201_location_and_strong_etag(client):
    protocol_id, response = create(client)
    assert response.headers["Location"].endswith(f"/v1/protocols/{protocol_id}")
    etag = response.headers["ETag"]
    assert etag.startswith('"1-') and not etag.startswith("W/")
    body = response.get_json()
    assert body["id"] == protocol_id and body["version"] == 1 and body["status"] == "active"
    assert body["recorded_at"].endswith("Z") and body["effective_from"] == body["recorded_at"]


def test_create_existing_id_is_409_and_changes_nothing(client):
    protocol_id, _ = create(client)
    again = client.post("/v1/protocols", json=protocol_payload(protocol_id, title="Other"))
    assert again.status_code == 409
    assert again.get_json()["code"] == 409
    assert [v["version"] for v in versions_of(client, protocol_id)] == [1]


def test_retired_id_is_never_reused(client):
    protocol_id, response = create(client)
    client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": response.headers["ETag"]})
    assert client.post("/v1/protocols", json=protocol_payload(protocol_id)).status_code == 409


# ----------------------------------------------------------------------------- revise


def test_put_requires_if_match(client):
    protocol_id, response = create(client)
    body = response.get_json() | {"title": "Changed"}
    missing = revise(client, protocol_id, body, None)
    assert missing.status_code == 428
    assert missing.get_json()["current_version"] == 1
    assert len(versions_of(client, protocol_id)) == 1


def test_a_write_with_if_match_star_or_none_is_a_428_naming_the_header(client):
    """Found by an adversarial probe: PUT and DELETE with ``If-Match: *`` (a pattern openapi admits) were
    a 428 whose body named nothing the client sent; the header is now named in ``errors``."""
    protocol_id, response = create(client)
    body = response.get_json() | {"title": "Changed"}
    for answer in (revise(client, protocol_id, body, "*"),
                   client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": "*"})):
        assert answer.status_code == 428
        assert answer.get_json()["errors"] == {"If-Match": ["If-Match: * is not accepted; send the ETag of the "
                                                            "newest version"]}
        assert answer.get_json()["current_version"] == 1
    assert len(versions_of(client, protocol_id)) == 1
    missing = revise(client, protocol_id, body, None).get_json()["errors"]  # missing: named too (a review)
    assert missing == {"If-Match": ["this write requires an If-Match header with the ETag of the newest version"]}


def test_put_with_stale_etag_is_412_naming_newest(client):
    protocol_id, response = create(client)
    first_etag = response.headers["ETag"]
    second = revise(client, protocol_id, response.get_json() | {"title": "Second"}, first_etag)
    assert second.status_code == 201
    stale = revise(client, protocol_id, response.get_json() | {"title": "Third"}, first_etag)
    assert stale.status_code == 412
    body = stale.get_json()
    assert body["current_version"] == 2 and body["current_etag"] == second.headers["ETag"]
    assert list(body["errors"]) == ["If-Match"]  # the header at fault, named (a probe)
    assert [v["version"] for v in versions_of(client, protocol_id)] == [2, 1]


@pytest.mark.parametrize("header", ["*", 'W/"1-abc"', '"nonsense"'])
def test_put_with_wildcard_weak_or_wrong_etag_appends_nothing(client, header):
    protocol_id, response = create(client)
    result = revise(client, protocol_id, response.get_json() | {"title": "x"}, header)
    assert result.status_code in (412, 428)
    assert len(versions_of(client, protocol_id)) == 1


def test_malformed_if_match_is_400(client):
    protocol_id, response = create(client)
    result = revise(client, protocol_id, response.get_json(), "not-an-etag")
    assert result.status_code == 400
    assert "If-Match" in result.get_json()["errors"]
    for empty in ("", "   "):  # an empty list named no header (adversarial probe)
        headers = {"If-Match": empty}
        for answer in (client.put(f"/v1/protocols/{protocol_id}", json=response.get_json(), headers=headers),
                       client.delete(f"/v1/protocols/{protocol_id}", headers=headers)):
            assert answer.status_code == 400 and "If-Match" in answer.get_json()["errors"], answer.get_json()
    assert len(versions_of(client, protocol_id)) == 1


def test_put_appends_gapless_versions_with_new_etags(client):
    protocol_id, response = create(client)
    etag = response.headers["ETag"]
    body = response.get_json()
    seen = {etag}
    for n in range(2, 6):
        body = body | {"summary": f"revision {n}"}
        result = revise(client, protocol_id, body, etag)
        assert result.status_code == 201
        assert result.headers["Location"].endswith(f"/versions/{n}")
        etag = result.headers["ETag"]
        assert etag.startswith(f'"{n}-') and etag not in seen
        seen.add(etag)
    assert [v["version"] for v in versions_of(client, protocol_id)] == [5, 4, 3, 2, 1]


def test_round_trip_get_then_put_unchanged_creates_no_version(client):
    protocol_id, _ = create(client)
    got = client.get(f"/v1/protocols/{protocol_id}")
    result = revise(client, protocol_id, got.get_json(), got.headers["ETag"])
    assert result.status_code == 200
    assert result.headers["ETag"] == got.headers["ETag"]
    assert result.data == got.data
    assert len(versions_of(client, protocol_id)) == 1


def test_safe_retry_same_content_without_effective_from_creates_no_version(client):
    protocol_id, response = create(client)
    body = protocol_payload(protocol_id)
    body.pop("effective_from", None)
    result = revise(client, protocol_id, body | {"change_note": "retry"}, response.headers["ETag"])
    assert result.status_code == 200
    assert len(versions_of(client, protocol_id)) == 1


def test_a_retry_whose_first_answer_was_lost_gets_200_not_412(client):
    """The retry carries the ETag the write started from, which its own first attempt made stale. Its
    change is already there, so it gets the newest version with 200 (RFC 9110, 13.1.1) and appends
    nothing; a different body with that stale ETag is still a 412, and no If-Match still a 428."""
    protocol_id, response = create(client)
    started_from = response.headers["ETag"]
    body = response.get_json() | {"title": "Revised once"}
    first = revise(client, protocol_id, body, started_from)
    assert first.status_code == 201
    retried = revise(client, protocol_id, body, started_from)
    assert retried.status_code == 200, retried.get_json()
    assert retried.headers["ETag"] == first.headers["ETag"] and retried.data == first.data
    assert revise(client, protocol_id, body | {"title": "Something else"}, started_from).status_code == 412
    assert revise(client, protocol_id, body, None).status_code == 428
    assert [v["version"] for v in versions_of(client, protocol_id)] == [2, 1]


def all_at_once(count: int, request: Any) -> list[int]:
    """Run ``request(n)`` for n in range(count), each in its own thread, released together by a
    barrier; the status codes they got."""
    barrier = threading.Barrier(count)
    results: list[int] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        status = request(n)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_identical_writes_make_one_version_and_all_succeed(make_app):
    """Twenty copies of one request (a client's retries racing each other): one appends, the others
    find their change already made."""
    apps = [make_app() for _ in range(2)]
    client = apps[0].test_client()
    protocol_id, response = create(client)
    body = response.get_json() | {"summary": "the same change, sent many times"}
    results = all_at_once(20, lambda n: revise(apps[n % 2].test_client(), protocol_id, body,
                                               response.headers["ETag"]).status_code)
    assert sorted(results) == [200] * 19 + [201], results
    assert [v["version"] for v in versions_of(client, protocol_id)] == [2, 1]


@pytest.mark.parametrize("when", [None, "2030-01-01T00:00:00Z"])
def test_concurrent_identical_retirements_make_one_version_and_all_succeed(make_app, when):
    """Found by a probe: the same DELETE sent several times at once (a client timeout's retry in flight)
    got 412 for the losers on PostgreSQL, where a PUT's losers get 200 and SQLite's writers queue."""
    apps = [make_app() for _ in range(2)]
    client = apps[0].test_client()
    protocol_id, response = create(client, effective_from="2021-01-01T00:00:00Z")
    url = f"/v1/protocols/{protocol_id}" + (f"?effective_from={when}" if when else "")
    results = all_at_once(8, lambda n: apps[n % 2].test_client().delete(
        url, headers={"If-Match": response.headers["ETag"]}).status_code)
    assert results == [200] * 8, results
    assert [v["version"] for v in versions_of(client, protocol_id)] == [2, 1]


def test_retiring_again_with_the_etag_it_started_from_gets_200(client):
    protocol_id, response = create(client)
    retired = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": response.headers["ETag"]})
    assert retired.status_code == 200
    again = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": response.headers["ETag"]})
    assert again.status_code == 200 and again.headers["ETag"] == retired.headers["ETag"]
    assert [v["version"] for v in versions_of(client, protocol_id)] == [2, 1]


def test_body_id_differing_from_url_is_422(client):
    protocol_id, response = create(client)
    result = revise(client, protocol_id, response.get_json() | {"id": "another-id"}, response.headers["ETag"])
    assert result.status_code == 422
    assert "id" in result.get_json()["errors"]


def test_server_managed_fields_are_ignored_on_input(client):
    protocol_id, response = create(client)
    body = response.get_json() | {"version": 99, "recorded_at": "2000-01-01T00:00:00Z",
                                  "recorded_by": "mallory", "request_id": "x", "title": "New"}
    result = revise(client, protocol_id, body, response.headers["ETag"])
    assert result.status_code == 201
    stored = result.get_json()
    assert stored["version"] == 2 and stored["recorded_by"] != "mallory"
    assert stored["recorded_at"] != "2000-01-01T00:00:00Z"


def test_put_unknown_protocol_is_404(client):
    result = revise(client, "no-such-protocol", protocol_payload("no-such-protocol"), '"1-abc"')
    assert result.status_code == 404


# ----------------------------------------------------------------------------- retire


def test_delete_retires_by_appending_and_get_answers_410(client):
    protocol_id, response = create(client)
    missing = client.delete(f"/v1/protocols/{protocol_id}")
    assert missing.status_code == 428
    retired = client.delete(f"/v1/protocols/{protocol_id}?change_note=withdrawn",
                            headers={"If-Match": response.headers["ETag"]})
    assert retired.status_code == 200
    assert retired.get_json()["status"] == "retired" and retired.get_json()["version"] == 2
    gone = client.get(f"/v1/protocols/{protocol_id}")
    assert gone.status_code == 410
    assert gone.get_json()["version"] == 2 and gone.get_json()["change_note"] == "withdrawn"
    history = versions_of(client, protocol_id)
    assert [v["status"] for v in history] == ["retired", "active"]
    assert client.get(f"/v1/protocols/{protocol_id}/versions/1").get_json()["status"] == "active"


def test_retire_keeps_the_clinical_content(client):
    protocol_id, response = create(client)
    retired = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": response.headers["ETag"]})
    before, after = response.get_json(), retired.get_json()
    for field in ("title", "drug", "dosing_ranges", "fda_approval", "sources"):
        assert before[field] == after[field]


def test_delete_with_stale_etag_is_412(client):
    protocol_id, response = create(client)
    revise(client, protocol_id, response.get_json() | {"title": "v2"}, response.headers["ETag"])
    stale = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": response.headers["ETag"]})
    assert stale.status_code == 412 and list(stale.get_json()["errors"]) == ["If-Match"]
    assert client.get(f"/v1/protocols/{protocol_id}").status_code == 200


def test_put_after_retirement_reactivates_with_a_new_version(client):
    protocol_id, response = create(client)
    retired = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": response.headers["ETag"]})
    body = response.get_json() | {"status": "active"}
    stale_effective = revise(client, protocol_id, body, retired.headers["ETag"])
    # Re-sending the old effective_from puts the reactivation *before* the retirement in time:
    # the retirement stays in effect (the rule is "latest effective_from wins").
    assert stale_effective.status_code == 201
    assert client.get(f"/v1/protocols/{protocol_id}").status_code == 410
    body.pop("effective_from")
    back = revise(client, protocol_id, body | {"title": "Reinstated"}, stale_effective.headers["ETag"])
    assert back.status_code == 201 and back.get_json()["version"] == 4
    assert client.get(f"/v1/protocols/{protocol_id}").get_json()["title"] == "Reinstated"


# ----------------------------------------------------------------------------- effective / as-of


def test_as_of_before_between_and_after_versions(client):
    protocol_id, first = create(client, effective_from="2019-03-05T00:00:00Z", title="First label")
    second = revise(client, protocol_id, first.get_json() | {"title": "Second label",
                                                               "effective_from": "2020-07-31T00:00:00Z"},
                    first.headers["ETag"])
    third = revise(client, protocol_id, second.get_json() | {"title": "Third label",
                                                               "effective_from": "2025-01-21T00:00:00Z"},
                   second.headers["ETag"])
    assert third.status_code == 201

    def title_at(at: str) -> Any:
        result = client.get(f"/v1/protocols/{protocol_id}?as_of={at}")
        return result.status_code, (result.get_json() or {}).get("title")

    assert title_at("2019-01-01T00:00:00Z")[0] == 404
    assert title_at("2019-03-05T00:00:00Z") == (200, "First label")
    assert title_at("2019-06-01T00:00:00Z") == (200, "First label")
    assert title_at("2021-01-01T00:00:00%2B02:00") == (200, "Second label")
    assert title_at("2025-01-21T00:00:00Z") == (200, "Third label")
    assert client.get(f"/v1/protocols/{protocol_id}").get_json()["title"] == "Third label"


def test_no_version_in_effect_is_404_saying_so(client):
    protocol_id, _ = create(client, effective_from="2999-01-01T00:00:00Z")
    result = client.get(f"/v1/protocols/{protocol_id}")
    assert result.status_code == 404
    assert "no version in effect" in result.get_json()["message"]
    assert client.get("/v1/protocols/never-created").get_json()["message"].endswith("does not exist")


def test_drafts_and_future_versions_do_not_change_what_is_in_effect(client):
    protocol_id, first = create(client, title="In effect")
    draft = revise(client, protocol_id, first.get_json() | {"title": "Draft", "status": "draft"},
                   first.headers["ETag"])
    assert draft.status_code == 201
    future = revise(client, protocol_id, first.get_json() | {"title": "Future",
                                                               "effective_from": "2999-01-01T00:00:00Z"},
                    draft.headers["ETag"])
    assert future.status_code == 201
    current = client.get(f"/v1/protocols/{protocol_id}")
    assert current.get_json()["title"] == "In effect"
    assert current.headers["ETag"] == first.headers["ETag"]
    latest = client.get(f"/v1/protocols/{protocol_id}/versions/latest").get_json()
    assert latest["title"] == "Future" and latest["version"] == 3
    assert client.get(f"/v1/protocols/{protocol_id}?as_of=2999-06-01T00:00:00Z").get_json()["title"] == "Future"


def test_draft_only_protocol_is_not_in_effect(client):
    protocol_id, _ = create(client, status="draft")
    assert client.get(f"/v1/protocols/{protocol_id}").status_code == 404
    assert client.get(f"/v1/protocols/{protocol_id}/versions/latest").get_json()["status"] == "draft"


def test_equal_effective_from_tie_goes_to_the_higher_version(client):
    protocol_id, first = create(client, effective_from="2020-01-01T00:00:00Z", title="Lower")
    second = revise(client, protocol_id, first.get_json() | {"title": "Higher"}, first.headers["ETag"])
    assert second.get_json()["effective_from"] == "2020-01-01T00:00:00Z"
    assert client.get(f"/v1/protocols/{protocol_id}").get_json()["title"] == "Higher"


def test_backdated_version_takes_its_place_in_time(client):
    protocol_id, first = create(client, effective_from="2022-01-01T00:00:00Z", title="2022")
    backdated = revise(client, protocol_id, first.get_json() | {"title": "2021",
                                                                  "effective_from": "2021-01-01T00:00:00Z"},
                       first.headers["ETag"])
    assert backdated.status_code == 201
    assert client.get(f"/v1/protocols/{protocol_id}").get_json()["title"] == "2022"
    assert client.get(f"/v1/protocols/{protocol_id}?as_of=2021-06-01T00:00:00Z").get_json()["title"] == "2021"


# ----------------------------------------------------------------------------- reads, caching


def test_if_none_match_answers_304_on_every_get(client):
    protocol_id, response = create(client)
    etag = response.headers["ETag"]
    for path in (f"/v1/protocols/{protocol_id}", f"/v1/protocols/{protocol_id}/versions/1",
                 f"/v1/protocols/{protocol_id}/versions/latest"):
        result = client.get(path, headers={"If-None-Match": etag})
        assert result.status_code == 304, path
        assert result.headers["ETag"] == etag and result.data == b""
        assert client.get(path, headers={"If-None-Match": '"9-other"'}).status_code == 200


def test_version_by_number_is_exact_and_cacheable_forever(client):
    protocol_id, response = create(client)
    one = client.get(f"/v1/protocols/{protocol_id}/versions/1")
    assert one.data == response.data
    assert "immutable" in one.headers["Cache-Control"] and "private" in one.headers["Cache-Control"]
    revise(client, protocol_id, response.get_json() | {"title": "v2"}, response.headers["ETag"])
    assert client.get(f"/v1/protocols/{protocol_id}/versions/1").data == response.data
    assert client.get(f"/v1/protocols/{protocol_id}/versions/3").status_code == 404


def test_versions_list_pages_newest_first_with_links(client):
    protocol_id, response = create(client)
    etag, body = response.headers["ETag"], response.get_json()
    for n in range(2, 8):
        result = revise(client, protocol_id, body | {"summary": f"s{n}"}, etag)
        etag = result.headers["ETag"]
    first = client.get(f"/v1/protocols/{protocol_id}/versions?page_size=3")
    page = first.get_json()
    assert [v["version"] for v in page["items"]] == [7, 6, 5]
    assert page["prev"] is None and 'rel="next"' in first.headers["Link"]
    second = client.get(page["next"]).get_json()
    assert [v["version"] for v in second["items"]] == [4, 3, 2]
    back = client.get(second["prev"]).get_json()
    assert [v["version"] for v in back["items"]] == [7, 6, 5]
    third = client.get(second["next"]).get_json()
    assert [v["version"] for v in third["items"]] == [1] and third["next"] is None


def test_list_shows_protocols_in_effect_newest_first_and_paginates(client):
    ids = [create(client)[0] for _ in range(5)]
    draft_id, _ = create(client, status="draft")
    future_id, _ = create(client, effective_from="2999-01-01T00:00:00Z")
    retired_id, retired = create(client)
    client.delete(f"/v1/protocols/{retired_id}", headers={"If-Match": retired.headers["ETag"]})
    seen: list[str] = []
    url: str | None = "/v1/protocols?page_size=2"
    while url:
        page = client.get(url).get_json()
        assert len(page["items"]) <= 2 and page["page_size"] == 2
        seen.extend(item["id"] for item in page["items"])
        url = page["next"]
    assert seen == list(reversed(ids))
    assert draft_id not in seen and future_id not in seen and retired_id not in seen


def test_list_as_of_shows_what_was_in_effect_then(client):
    old_id, _ = create(client, effective_from="2019-01-01T00:00:00Z")
    new_id, _ = create(client, effective_from="2024-01-01T00:00:00Z")
    ids = [i["id"] for i in client.get("/v1/protocols?as_of=2020-01-01T00:00:00Z").get_json()["items"]]
    assert old_id in ids and new_id not in ids


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_puts_with_the_same_if_match_yield_exactly_one_version(make_app):
    apps = [make_app() for _ in range(4)]  # separate engines/pools, like separate workers
    protocol_id, response = create(apps[0].test_client())
    etag, body = response.headers["ETag"], response.get_json()
    writers = 8
    results = all_at_once(writers, lambda n: revise(apps[n % len(apps)].test_client(), protocol_id,
                                                    body | {"summary": f"writer {n}"}, etag).status_code)
    assert sorted(results) == [201] + [412] * (writers - 1)
    assert [v["version"] for v in versions_of(apps[0].test_client(), protocol_id)] == [2, 1]


def test_concurrent_creates_of_one_id_yield_one_201(make_app):
    apps = [make_app() for _ in range(4)]
    payload = protocol_payload()
    results = all_at_once(6, lambda n: apps[n % len(apps)].test_client().post("/v1/protocols",
                                                                             json=payload).status_code)
    assert sorted(results) == [201] + [409] * 5


def test_if_none_match_on_lists_answers_304(client):
    create(client)
    for path in ("/v1/protocols", "/v1/terminology/routes"):
        first = client.get(path)
        assert first.status_code == 200 and first.headers["ETag"].startswith('W/"')
        again = client.get(path, headers={"If-None-Match": first.headers["ETag"]})
        assert again.status_code == 304 and again.data == b""
    listing = client.get("/v1/protocols")
    create(client)
    assert client.get("/v1/protocols", headers={"If-None-Match": listing.headers["ETag"]}).status_code == 200



def test_every_get_evaluates_if_match_then_if_none_match(client):
    """RFC 9110 13.1.1: an origin server MUST evaluate a GET's If-Match, before If-None-Match (13.2.2).
    Reads ignored it (lists had werkzeug's make_conditional, which did, until a probe found it answering
    412 with the page as its body; then no read did). The comparison is strong: a list's weak ETag is
    matched only by *. If-None-Match lists the version reads ignore as malformed (an unquoted tag) match
    nothing anywhere."""
    protocol_id, _ = create(client)
    for path in ("/v1/protocols", f"/v1/protocols/{protocol_id}/versions", f"/v1/protocols/{protocol_id}",
                 f"/v1/protocols/{protocol_id}/versions/1", f"/v1/protocols/{protocol_id}/versions/latest"):
        plain = client.get(path)
        assert plain.status_code == 200
        etag = plain.headers["ETag"]
        strong = not etag.startswith("W/")
        assert strong is ("versions/" in path or path.endswith(protocol_id)), (path, etag)
        for method in ("GET", "HEAD"):
            send = client.get if method == "GET" else client.head
            case = (path, method)
            assert send(path, headers={"If-Match": "*"}).status_code == 200, case
            named = send(path, headers={"If-Match": f'"x", {etag}'})
            assert named.status_code == (200 if strong else 412), case
            refused = send(path, headers={"If-Match": '"nope"'})
            assert refused.status_code == 412, case
            # If-Match first: a matching If-None-Match does not turn the refusal into a 304 …
            assert send(path, headers={"If-Match": '"nope"', "If-None-Match": etag}).status_code == 412, case
            # … and a true If-Match leaves the 304 to If-None-Match.
            both = send(path, headers={"If-Match": "*", "If-None-Match": etag})
            assert both.status_code == 304 and both.data == b"", case
            malformed = send(path, headers={"If-Match": "garbage"})
            assert malformed.status_code == 400, case
            if method == "HEAD":
                assert refused.data == b"" and malformed.data == b"", case
                continue
            assert named.status_code != 200 or named.data == plain.data, case
            body = refused.get_json()
            assert body["code"] == 412 and list(body["errors"]) == ["If-Match"] and body["current_etag"] == etag, case
            # a version read names its version, as a write's 412 does (found by a probe); a list has none
            assert body.get("current_version") == (1 if strong else None), case
            assert refused.headers["Cache-Control"] == "no-store" and "ETag" not in refused.headers, case
            assert list(malformed.get_json()["errors"]) == ["If-Match"], case
        unquoted = etag.removeprefix("W/").strip('"')
        assert client.get(path, headers={"If-None-Match": unquoted}).status_code == 200, path
        assert client.get(path, headers={"If-None-Match": f'"x", , {etag},'}).status_code == 304, path


def test_a_read_pinned_by_if_match_is_refused_once_another_version_is_in_effect(client):
    """"Only if it is still this version": after a revision the old ETag is a 412 naming the version in
    effect, while the old version's own URL (immutable) still answers it."""
    protocol_id, created = create(client)
    old = created.headers["ETag"]
    revised = revise(client, protocol_id, created.get_json() | {"title": "Second"}, old)
    assert revised.status_code == 201
    refused = client.get(f"/v1/protocols/{protocol_id}", headers={"If-Match": old})
    assert refused.status_code == 412 and refused.get_json()["current_etag"] == revised.headers["ETag"]
    assert refused.get_json()["current_version"] == 2
    assert client.get(f"/v1/protocols/{protocol_id}", headers={"If-Match": revised.headers["ETag"]}).status_code == 200
    pinned = client.get(f"/v1/protocols/{protocol_id}/versions/1", headers={"If-Match": old})
    assert pinned.status_code == 200 and pinned.headers["ETag"] == old


def test_a_reads_412_keeps_the_headers_every_answer_carries(make_app):
    """The refusal replaces the view's response inside the after-request hooks; the hooks that run after
    it (request id, rate limit, CORS) still stamp it, so a browser client can read why it was refused."""
    origin = "https://ehr.example.org"
    app = make_app(PROTOCOLS_CORS_ORIGINS=[origin], PROTOCOLS_RATE_LIMIT="1000/hour")
    client = app.test_client()
    protocol_id, _ = create(client)
    for method in ("GET", "HEAD"):
        refused = client.open(f"/v1/protocols/{protocol_id}", method=method,
                              headers={"If-Match": '"nope"', "Origin": origin, "X-Request-ID": "pinned-read-1"})
        assert refused.status_code == 412, method
        assert refused.headers["X-Request-ID"] == "pinned-read-1"
        assert refused.headers["Access-Control-Allow-Origin"] == origin and "Origin" in refused.headers["Vary"]
        assert all(name in refused.headers for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"))
        assert refused.headers["Content-Type"] == "application/json"


def test_a_read_that_fails_ignores_if_match(client):
    """RFC 9110 13.2.1: preconditions are ignored where the answer would not be 2xx; a 404 stays a 404
    and a retired protocol's 410 stays a 410, whatever If-Match says."""
    protocol_id, created = create(client)
    retired = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": created.headers["ETag"]})
    assert retired.status_code == 200
    for if_match in ('"nope"', "garbage"):
        assert client.get("/v1/protocols/no-such-protocol", headers={"If-Match": if_match}).status_code == 404
        assert client.get(f"/v1/protocols/{protocol_id}", headers={"If-Match": if_match}).status_code == 410


def test_entity_tag_lists_may_hold_empty_elements(client):
    """RFC 9110 (5.6.1.2) has recipients accept empty list elements: ``, "x", , "<etag>"`` was a 400."""
    protocol_id, created = create(client)
    revised = revise(client, protocol_id, created.get_json() | {"title": "Second"},
                     f', "x", , {created.headers["ETag"]} ,')
    assert revised.status_code == 201, revised.get_json()
    for header in (", ,", '"a" "b"', '"a", b'):
        refused = revise(client, protocol_id, revised.get_json() | {"title": "Third"}, header)
        assert refused.status_code == 400 and "If-Match" in refused.get_json()["errors"], header
    assert [v["version"] for v in versions_of(client, protocol_id)] == [2, 1]

# ------------------------------------------- retirements a later version would undo (adversarial probe)


def _latest(client: Any, protocol_id: str) -> Any:
    return client.get(f"/v1/protocols/{protocol_id}/versions/latest")


def test_a_retirement_a_scheduled_version_would_undo_is_409_and_the_way_out_works(client):
    """Retired now with version 2 scheduled for 2030, the protocol came back by itself in 2030: the
    version in effect is the latest effective_from <= T (issue 2)."""
    protocol_id, created = create(client, title="v1 now")
    scheduled = revise(client, protocol_id, protocol_payload(protocol_id, title="v2 in 2030",
                                                             effective_from="2030-01-01T00:00:00Z"),
                       created.headers["ETag"])
    assert scheduled.status_code == 201
    refused = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": scheduled.headers["ETag"]})
    assert refused.status_code == 409, refused.get_json()
    body = refused.get_json()
    assert body["scheduled_version"] == 2 and body["scheduled_effective_from"] == "2030-01-01T00:00:00Z"
    assert "2030-01-01T00:00:00Z" in body["message"]
    assert _latest(client, protocol_id).get_json()["version"] == 2  # nothing appended
    # The way out the message names: retire at the scheduled instant (the later version wins the tie)...
    cancel = client.delete(f"/v1/protocols/{protocol_id}?effective_from=2030-01-01T00:00:00Z",
                           headers={"If-Match": scheduled.headers["ETag"]})
    assert cancel.status_code == 200 and cancel.get_json()["version"] == 3
    # ...then now: the protocol is active now (version 1), so this is no "already retired" no-op.
    now = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": cancel.headers["ETag"]})
    assert now.status_code == 200 and now.get_json()["version"] == 4
    # It repeats what was in effect when it took effect (version 1), not the never-effective version 2.
    assert now.get_json()["title"] == "v1 now"
    for as_of in (None, "2030-01-01T00:00:00Z", "2031-01-01T00:00:00Z"):
        response = client.get(f"/v1/protocols/{protocol_id}", query_string={"as_of": as_of} if as_of else {})
        assert response.status_code == 410, (as_of, response.get_json())
    again = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": now.headers["ETag"]})
    assert again.status_code == 200 and again.get_json()["version"] == 4  # retired now and for good


def test_a_retirement_dated_before_the_version_in_effect_is_409(client):
    """Retired as of 2020 while version 1 took effect later: 200, and the protocol stayed active."""
    protocol_id, created = create(client)
    refused = client.delete(f"/v1/protocols/{protocol_id}?effective_from=2020-01-01T00:00:00Z",
                            headers={"If-Match": created.headers["ETag"]})
    assert refused.status_code == 409 and refused.get_json()["scheduled_version"] == 1
    assert _latest(client, protocol_id).get_json()["version"] == 1
    assert client.get(f"/v1/protocols/{protocol_id}").status_code == 200


def test_a_retirement_after_every_scheduled_version_is_allowed_and_repeats_the_one_then_in_effect(client):
    protocol_id, created = create(client, title="v1 now")
    scheduled = revise(client, protocol_id, protocol_payload(protocol_id, title="v2 in 2030",
                                                             effective_from="2030-01-01T00:00:00Z"),
                       created.headers["ETag"])
    later = client.delete(f"/v1/protocols/{protocol_id}?effective_from=2031-01-01T00:00:00Z",
                          headers={"If-Match": scheduled.headers["ETag"]})
    assert later.status_code == 200 and later.get_json()["title"] == "v2 in 2030"
    assert client.get(f"/v1/protocols/{protocol_id}").status_code == 200
    assert client.get(f"/v1/protocols/{protocol_id}?as_of=2031-06-01T00:00:00Z").status_code == 410


def test_retiring_after_a_draft_written_since_the_retirement_appends_and_checks_if_match(client):
    """Found in review: retired (v2), then a draft (v3): DELETE with a bogus If-Match answered 200 with
    the draft as if it were the retirement."""
    protocol_id, created = create(client)
    retired = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": created.headers["ETag"]})
    draft = revise(client, protocol_id, protocol_payload(protocol_id, status="draft"), retired.headers["ETag"])
    assert draft.status_code == 201 and draft.get_json()["version"] == 3
    assert client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": '"bogus"'}).status_code == 412
    again = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": draft.headers["ETag"]})
    assert again.status_code == 200
    assert again.get_json()["status"] == "retired" and again.get_json()["version"] == 4


def test_a_put_with_status_retired_obeys_the_rule_delete_does(client):
    """Found by an adversarial probe: with version 2 scheduled for 2030, DELETE answered 409 but a PUT
    of status=retired (new title) answered 201, and the 2030 version still undid the retirement."""
    protocol_id, created = create(client, title="v1 now")
    scheduled = revise(client, protocol_id, protocol_payload(protocol_id, title="v2 in 2030",
                                                             effective_from="2030-01-01T00:00:00Z"),
                       created.headers["ETag"])
    etag = scheduled.headers["ETag"]
    retired_now = protocol_payload(protocol_id, title="retired by PUT", status="retired")
    assert revise(client, protocol_id, retired_now, '"stale"').status_code == 412  # If-Match first
    refused = revise(client, protocol_id, retired_now, etag)
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["scheduled_version"] == 2
    assert _latest(client, protocol_id).get_json()["version"] == 2  # nothing appended
    # A retirement the scheduled version cannot undo (at or after it) is written, as with DELETE; it
    # repeats the content in effect then (version 2's).
    in_2031 = protocol_payload(protocol_id, title="v2 in 2030", status="retired", effective_from="2031-01-01T00:00:00Z")
    at_2031 = revise(client, protocol_id, in_2031, etag)
    assert at_2031.status_code == 201 and at_2031.get_json()["status"] == "retired"
    assert client.get(f"/v1/protocols/{protocol_id}?as_of=2031-06-01T00:00:00Z").status_code == 410


def test_a_retirement_repeats_what_was_in_effect(client):
    """Found by an adversarial probe: a PUT of status=retired with new content (a 500-900 mg range)
    answered 201, and GET then answered 410 with content that was never in effect; DELETE of a protocol
    that only ever had a draft published the draft's content as the retirement."""
    protocol_id, created = create(client, title="in effect")
    etag = created.headers["ETag"]
    changed = revise(client, protocol_id, protocol_payload(protocol_id, title="NEVER IN EFFECT", status="retired"),
                     etag)
    assert changed.status_code == 422 and "status" in changed.get_json()["errors"], changed.get_json()
    assert _latest(client, protocol_id).get_json()["version"] == 1
    same = revise(client, protocol_id, protocol_payload(protocol_id, title="in effect", status="retired"), etag)
    assert same.status_code == 201 and same.get_json()["title"] == "in effect"
    gone = client.get(f"/v1/protocols/{protocol_id}")
    assert gone.status_code == 410 and gone.get_json()["title"] == "in effect"

    draft_id, draft = create(client, title="SECRET DRAFT", status="draft")
    for attempt in (lambda: client.delete(f"/v1/protocols/{draft_id}", headers={"If-Match": draft.headers["ETag"]}),
                    lambda: revise(client, draft_id, protocol_payload(draft_id, title="SECRET DRAFT",
                                                                      status="retired"), draft.headers["ETag"])):
        refused = attempt()
        assert refused.status_code == 409, refused.get_json()
        assert "no published version" in refused.get_json()["message"]
    assert _latest(client, draft_id).get_json()["version"] == 1
    assert client.get("/v1/protocols?status=retired&q=secret").get_json()["items"] == []

def test_cancelling_a_scheduled_version_retires_the_content_in_effect_before_it(client):
    """Found in review: retiring at a scheduled version's start (the README's way to cancel it) recorded
    the cancelled content (never in effect: the retirement wins the instant), and PUT status=retired
    with the content actually in effect was refused."""
    protocol_id, created = create(client, title="A", effective_from="2020-01-01T00:00:00Z")
    b_in_2040 = protocol_payload(protocol_id, title="B", effective_from="2040-01-01T00:00:00Z")
    scheduled = revise(client, protocol_id, b_in_2040, created.headers["ETag"])
    cancelled = client.delete(f"/v1/protocols/{protocol_id}?effective_from=2040-01-01T00:00:00Z",
                              headers={"If-Match": scheduled.headers["ETag"]})
    assert cancelled.status_code == 200 and cancelled.get_json()["title"] == "A", cancelled.get_json()
    assert client.get(f"/v1/protocols/{protocol_id}?as_of=2040-06-01T00:00:00Z").get_json()["title"] == "A"
    other_id, first = create(client, title="A", effective_from="2020-01-01T00:00:00Z")
    later = revise(client, other_id, protocol_payload(other_id, title="B", effective_from="2040-01-01T00:00:00Z"),
                   first.headers["ETag"])
    by_put = revise(client, other_id, protocol_payload(other_id, title="A", status="retired",
                                                       effective_from="2040-01-01T00:00:00Z"), later.headers["ETag"])
    assert by_put.status_code == 201, by_put.get_json()

@pytest.mark.parametrize("when", ["2024-01-01T00:00:00Z", "2030-01-01T00:00:00Z"])
def test_a_dated_retirement_retried_appends_nothing_whatever_if_match_it_carries(client, when):
    """Found by a probe: the retry of a dated DELETE whose answer was lost answered 412 with the If-Match
    the first attempt sent (a PUT retry answers 200), and with the new ETag appended a second, identical
    retirement. Now both answer 200 with the first retirement; a retirement at another instant, or one
    after a version written since, still appends."""
    protocol_id, created = create(client, effective_from="2021-01-01T00:00:00Z")
    url = f"/v1/protocols/{protocol_id}?effective_from={when}"
    first = client.delete(url, headers={"If-Match": created.headers["ETag"]})
    assert first.status_code == 200 and first.get_json()["version"] == 2
    for etag in (created.headers["ETag"], first.headers["ETag"]):
        retry = client.delete(url, headers={"If-Match": etag})
        assert retry.status_code == 200, retry.get_json()
        assert retry.get_json()["version"] == 2 and retry.headers["ETag"] == first.headers["ETag"]
    assert [v["version"] for v in versions_of(client, protocol_id)] == [2, 1]
    revived = revise(client, protocol_id, protocol_payload(protocol_id, title="Revived",
                                                           effective_from="2040-01-01T00:00:00Z"),
                     first.headers["ETag"])
    assert revived.status_code == 201
    after_revival = client.delete(f"/v1/protocols/{protocol_id}?effective_from=2041-01-01T00:00:00Z",
                                  headers={"If-Match": revived.headers["ETag"]})
    assert after_revival.status_code == 200 and after_revival.get_json()["version"] == 4
    assert client.delete(f"/v1/protocols/{protocol_id}?effective_from=2041-01-01T00:00:00Z",
                         headers={"If-Match": revived.headers["ETag"]}).get_json()["version"] == 4


def test_a_delete_with_a_body_is_refused_and_its_query_parameters_are_documented(client, app):
    """Found by an adversarial probe: DELETE with {"effective_from": "2040-..."} as a body retired the
    protocol now (the body was never read), and the contract listed only If-Match for DELETE, so a
    client generated from it had no way to schedule a retirement."""
    protocol_id, created = create(client)
    etag = created.headers["ETag"]
    for body, content_type in (('{"effective_from":"2040-01-01T00:00:00Z"}', "application/json"),
                               ("garbage", "text/plain")):
        refused = client.delete(f"/v1/protocols/{protocol_id}", data=body, content_type=content_type,
                                headers={"If-Match": etag})
        assert refused.status_code == 400 and refused.get_json()["errors"] == {
            "body": ["This operation takes no request body."]}
    assert _latest(client, protocol_id).get_json()["version"] == 1  # nothing retired
    operation = app.extensions["protocols_api"].spec.to_dict()["paths"]["/v1/protocols/{protocol_id}"]["delete"]
    assert {(p["name"], p["in"]) for p in operation["parameters"]} == {
        ("effective_from", "query"), ("change_note", "query"), ("If-Match", "header"),
        ("If-None-Match", "header")}
    scheduled = client.delete(f"/v1/protocols/{protocol_id}?effective_from=2040-01-01T00:00:00Z",
                              headers={"If-Match": etag})
    assert scheduled.status_code == 200 and scheduled.get_json()["effective_from"] == "2040-01-01T00:00:00Z"


def test_a_put_without_a_date_repeating_a_scheduled_version_takes_effect_now(client):
    """Found by an adversarial probe: with the newest version scheduled for 2030, a PUT of the same
    content without effective_from ("from now") answered 200 and nothing changed now. Retries of a
    dateless write already in effect stay no-ops."""
    protocol_id, created = create(client, title="v1")
    later = protocol_payload(protocol_id, title="v2", effective_from="2030-01-01T00:00:00Z")
    scheduled = revise(client, protocol_id, later, created.headers["ETag"])
    assert scheduled.status_code == 201
    now = revise(client, protocol_id, {**later, "effective_from": None}, scheduled.headers["ETag"])
    assert now.status_code == 201 and now.get_json()["version"] == 3
    assert client.get(f"/v1/protocols/{protocol_id}").get_json()["title"] == "v2"
    retry = revise(client, protocol_id, {**later, "effective_from": None}, scheduled.headers["ETag"])
    assert retry.status_code == 200 and retry.get_json()["version"] == 3


@pytest.mark.parametrize("outranking", ["retired", "active"])
def test_a_put_without_a_date_repeating_a_back_dated_newest_takes_effect_now(client, outranking):
    """Found by an adversarial probe: the newest version back-dated to 2021 is outranked by an older
    one starting in 2022 (a retirement, or another revision); a PUT of the newest's content without
    effective_from ("from now") answered 200 and the 2022 version stayed in effect."""
    protocol_id, created = create(client, title="A", effective_from="2020-01-01T00:00:00Z")
    if outranking == "retired":
        later = client.delete(f"/v1/protocols/{protocol_id}?effective_from=2022-01-01T00:00:00Z",
                              headers={"If-Match": created.headers["ETag"]})
    else:
        later = revise(client, protocol_id, protocol_payload(protocol_id, title="B",
                                                             effective_from="2022-01-01T00:00:00Z"),
                       created.headers["ETag"])
    assert later.status_code in (200, 201)
    back_dated = protocol_payload(protocol_id, title="A2", effective_from="2021-01-01T00:00:00Z")
    third = revise(client, protocol_id, back_dated, later.headers["ETag"])
    assert third.status_code == 201
    assert client.get(f"/v1/protocols/{protocol_id}").status_code == (410 if outranking == "retired" else 200)
    now = revise(client, protocol_id, {**back_dated, "effective_from": None}, third.headers["ETag"])
    assert now.status_code == 201 and now.get_json()["version"] == 4, now.get_json()
    current = client.get(f"/v1/protocols/{protocol_id}")
    assert current.status_code == 200 and current.get_json()["title"] == "A2"
    retry = revise(client, protocol_id, {**back_dated, "effective_from": None}, third.headers["ETag"])
    assert retry.status_code == 200 and retry.get_json()["version"] == 4

def test_a_protocol_cannot_be_created_retired(client):
    payload = protocol_payload(status="retired")
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 422 and "status" in response.get_json()["errors"]
    assert client.get(f"/v1/protocols/{payload['id']}/versions/latest").status_code == 404


def test_racing_dateless_retries_all_see_the_one_version(make_app):
    """Found in review: a dateless retry that started before the copy that won compared the winner's
    start with its own earlier 'now' and answered 412 (about one round in five); all copies must get
    201 once and 200 after."""
    apps = [make_app(), make_app()]
    clients = [app.test_client() for app in apps]
    for _ in range(5):
        protocol_id, created = create(clients[0])
        body = protocol_payload(protocol_id, title="the same revision, sent eight times")
        body.pop("effective_from", None)
        etag = created.headers["ETag"]
        statuses = all_at_once(8, lambda n, protocol_id=protocol_id, body=body, etag=etag: revise(
            apps[n % 2].test_client(), protocol_id, body, etag).status_code)
        assert sorted(statuses) == [200] * 7 + [201], statuses
        assert _latest(clients[0], protocol_id).get_json()["version"] == 2


def test_a_write_whose_if_none_match_is_false_is_412_and_appends_nothing(client):
    """Found by a contract probe: writes ignored If-None-Match, so If-Match: X with If-None-Match: X (or
    *) appended a version. Such a condition is false for an existing protocol's newest version, and a
    write whose condition is false is a 412 (RFC 9110 13.2.2); one naming another version holds."""
    protocol_id, response = create(client)
    etag = response.headers["ETag"]
    body = response.get_json() | {"title": "Guarded"}
    url = f"/v1/protocols/{protocol_id}"
    weak = "W/" + etag
    for none_match in (etag, "*", weak, f'"0-other", {etag}'):
        refused = client.put(url, json=body, headers={"If-Match": etag, "If-None-Match": none_match})
        assert refused.status_code == 412, (none_match, refused.get_json())
        assert refused.get_json()["current_etag"] == etag
        retired = client.delete(url, headers={"If-Match": etag, "If-None-Match": none_match})
        assert retired.status_code == 412, (none_match, retired.get_json())
        # the header at fault is named, machine-readably (a probe: only the message told them apart)
        assert list(refused.get_json()["errors"]) == list(retired.get_json()["errors"]) == ["If-None-Match"]
    malformed = client.put(url, json=body, headers={"If-Match": etag, "If-None-Match": "not-an-etag"})
    assert malformed.status_code == 400 and list(malformed.get_json()["errors"]) == ["If-None-Match"]
    assert [v["version"] for v in versions_of(client, protocol_id)] == [1]
    held = client.put(url, json=body, headers={"If-Match": etag, "If-None-Match": '"0-other"'})
    assert held.status_code == 201, held.get_json()
    newest = held.headers["ETag"]
    assert client.delete(url, headers={"If-Match": newest, "If-None-Match": etag}).status_code == 200


def test_a_create_reads_its_conditional_headers_and_refuses_if_match(client):
    """RFC 9110 13.1.1: an origin server MUST evaluate If-Match. POST ignored both headers, malformed lists
    included, which PUT and DELETE refuse (adversarial probe). A protocol being created has no version an
    If-Match could name, so any If-Match (even ``*``) is a 412 that writes nothing; If-None-Match is what
    a create already is (no protocol may have the id: 409 otherwise)."""
    for header, value, status in (("If-None-Match", "not-an-etag", 400), ("If-Match", "not-an-etag", 400),
                                  ("If-Match", '"1-0a1b2c3d4e5f6a7b"', 412), ("If-Match", "*", 412)):
        payload = protocol_payload()
        refused = client.post("/v1/protocols", json=payload, headers={header: value})
        assert refused.status_code == status, (header, value, refused.get_json())
        assert list(refused.get_json()["errors"]) == [header]
        assert client.get(f"/v1/protocols/{payload['id']}/versions/latest").status_code == 404
    for value in ("*", '"1-0a1b2c3d4e5f6a7b"'):
        payload = protocol_payload()
        assert client.post("/v1/protocols", json=payload, headers={"If-None-Match": value}).status_code == 201
        again = client.post("/v1/protocols", json=payload, headers={"If-None-Match": value})
        assert again.status_code == 409, again.get_json()


def test_a_write_on_a_version_recorded_ahead_of_this_servers_clock_is_a_503_and_writes_nothing(app, client, db):
    """Found by a probe: on top of a version recorded 4 minutes ahead of this server's clock (an import
    allowed 5; another instance's clock ahead; a clock stepped back), a dose-lowering correction written
    "from now" answered 201 and took effect 4 minutes later, the old maximum served until then; a DELETE
    took effect at once and was recorded 4 minutes later. Refused loudly, the clocks can be put right; a
    skew of milliseconds between instances still writes."""
    from datetime import timedelta

    from protocols import versioning
    from protocols.timeutil import utcnow
    from schemas.protocol import ProtocolCreateSchema, split_payload

    def stored_ahead(by: timedelta) -> tuple[str, str]:
        payload = protocol_payload()
        _, content = split_payload(ProtocolCreateSchema().load(payload))
        ahead = utcnow() + by
        stored = versioning.create(db, payload["id"], content, effective_from=ahead - timedelta(days=1), now=ahead)
        return payload["id"], stored.etag

    protocol_id, etag = stored_ahead(timedelta(minutes=4))
    body = client.get(f"/v1/protocols/{protocol_id}").get_json() | {"title": "Corrected"}
    refused = revise(client, protocol_id, body, etag)
    assert refused.status_code == 503, refused.get_json()
    assert "later than this server's clock" in refused.get_json()["message"]
    assert refused.get_json()["reason"] == "clock_behind"
    assert 200 <= int(refused.headers["Retry-After"]) <= 240
    retired = client.delete(f"/v1/protocols/{protocol_id}", headers={"If-Match": etag})
    assert retired.status_code == 503 and retired.headers["Retry-After"]
    assert [v["version"] for v in versions_of(client, protocol_id)] == [1]
    protocol_id, etag = stored_ahead(timedelta(milliseconds=300))
    body = client.get(f"/v1/protocols/{protocol_id}").get_json() | {"title": "Corrected"}
    assert revise(client, protocol_id, body, etag).status_code == 201


def test_a_404_says_for_a_machine_whether_the_protocol_or_version_exists_or_nothing_is_in_effect(client):
    """Found by a probe: "no such protocol" and "it exists, with nothing in effect at that time" (before its
    first version, or drafts only) differed only in their English message."""
    protocol_id, response = create(client)
    created = response.get_json()["effective_from"]
    cases = [
        (f"/v1/protocols/{protocol_id}-missing", "protocol_not_found"),
        (f"/v1/protocols/{protocol_id}/versions/99", "version_not_found"),
        (f"/v1/protocols/{protocol_id}?as_of=2000-01-01T00:00:00Z", "not_in_effect"),
    ]
    draft_id, _ = create(client, status="draft")
    cases.append((f"/v1/protocols/{draft_id}", "not_in_effect"))
    for path, reason in cases:
        answer = client.get(path)
        assert answer.status_code == 404 and answer.get_json()["reason"] == reason, (path, answer.get_json())
    assert client.get(f"/v1/protocols/{protocol_id}?as_of={created}").status_code == 200


@pytest.mark.postgres_only
def test_a_write_that_loses_a_race_after_its_head_read_names_if_match(app, client, monkeypatch):
    """Found in review: the 412 of a write whose head moved after it read it (another client's write
    committed in between; on PostgreSQL how most lost races end) named no header in errors. PostgreSQL
    only: SQLite's writers hold the write lock from their head read to their commit, so none can commit
    in between (the other client's write waits, and here, inside the request, times out)."""
    from protocols import versioning
    from schemas.protocol import ProtocolCreateSchema, split_payload

    protocol_id, response = create(client)
    etag = response.headers["ETag"]
    db = app.extensions["protocols_db"]
    monkeypatch.setattr(db.heads, "get", lambda _: None)  # another worker's head: no guess
    real_check = versioning._check_retirement
    done: list[int] = []

    def check_after_another_write(prepared: Any, fetch: Any) -> None:
        if not done:
            done.append(1)
            _, content = split_payload(ProtocolCreateSchema().load(protocol_payload(protocol_id, title="Other")))
            versioning.revise(db, protocol_id, content, if_match=[etag])  # another client's, committed
        real_check(prepared, fetch)

    monkeypatch.setattr(versioning, "_check_retirement", check_after_another_write)
    body = client.get(f"/v1/protocols/{protocol_id}").get_json() | {"title": "Mine"}
    raced = revise(client, protocol_id, body, etag)
    assert done and raced.status_code == 412, raced.get_json()
    assert "changed concurrently" in raced.get_json()["message"]
    assert list(raced.get_json()["errors"]) == ["If-Match"] and raced.get_json()["current_version"] == 2
