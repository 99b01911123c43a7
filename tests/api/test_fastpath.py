"""The read fast path (api/fastpath.py) answers exactly what the Flask view answers.

Two apps on the same database, one with the fast path and one without, receive the same requests;
status, headers and body must be identical (the request id aside when the caller sent none, since
each app mints its own). A counter on the Flask app behind the fast path proves which requests the
fast path served itself and which it handed on.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.exc import OperationalError

from api.fastpath import ReadFastPath
from api.proxy import TrustedProxy
from protocols import keys, versioning
from tests.factories import protocol_payload, unique_id

NOW = datetime.now(UTC)


class CountingWsgi:
    """Stands between the fast path and Flask: counts the requests handed on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.inner(environ, start_response)


@pytest.fixture
def pair(make_app: Any) -> tuple[Flask, Flask, CountingWsgi]:
    config = {"PROTOCOLS_ANONYMOUS_READS": True, "PROTOCOLS_RATE_LIMIT": "1000/hour"}
    fast, slow = make_app(**config), make_app(**config, PROTOCOLS_READ_FAST_PATH=False)
    # Both stacks start with the trusted-proxy layer (api/proxy.py); the fast path comes next.
    assert isinstance(fast.wsgi_app, TrustedProxy) and isinstance(slow.wsgi_app, TrustedProxy)
    fast_path = fast.wsgi_app.app
    assert isinstance(fast_path, ReadFastPath) and not isinstance(slow.wsgi_app.app, ReadFastPath)
    counter = CountingWsgi(fast_path.wsgi_app)
    fast_path.wsgi_app = counter
    return fast, slow, counter


@pytest.fixture
def catalog(make_app: Any) -> dict[str, Any]:
    setup = make_app()  # its own rate-limit counters: the apps under test start from zero
    client = setup.test_client()
    ids = {name: unique_id(name) for name in ("current", "revised", "retired", "future")}
    for name in ("current", "revised", "retired"):
        assert client.post("/v1/protocols", json=protocol_payload(ids[name])).status_code == 201
    etag = client.get(f"/v1/protocols/{ids['revised']}").headers["ETag"]
    revised = protocol_payload(ids["revised"], title="Revised title")
    assert client.put(f"/v1/protocols/{ids['revised']}", json=revised,
                      headers={"If-Match": etag}).status_code == 201
    etag = client.get(f"/v1/protocols/{ids['retired']}").headers["ETag"]
    assert client.delete(f"/v1/protocols/{ids['retired']}", headers={"If-Match": etag}).status_code == 200
    future = protocol_payload(ids["future"], effective_from=(NOW + timedelta(days=30)).isoformat())
    assert client.post("/v1/protocols", json=future).status_code == 201
    db = setup.extensions["protocols_db"]
    revoked_info, revoked = keys.create_key(db, "revoked", ["protocols:read"])
    keys.revoke_key(db, revoked_info.id)
    _, expired = keys.create_key(db, "expired", ["protocols:read"], expires_at=NOW + timedelta(milliseconds=1),
                                 now=NOW)
    return {
        "ids": ids,
        "etag": client.get(f"/v1/protocols/{ids['current']}").headers["ETag"],
        "keys": {
            "all": setup.config["TEST_API_KEY"],
            "read": keys.create_key(db, "reader", ["protocols:read"])[1],
            "write_only": keys.create_key(db, "writer", ["protocols:write"])[1],
            "revoked": revoked,
            "expired": expired,
        },
    }


def _send(app: Flask, method: str, path: str, headers: dict[str, str]) -> Any:
    return FlaskClient(app, app.response_class).open(path, method=method, headers=headers)


def _same(fast: Any, slow: Any, sent_request_id: bool) -> None:
    assert fast.status_code == slow.status_code
    fast_body, slow_body = fast.get_data(), slow.get_data()
    if not sent_request_id:  # error bodies name the request id each app minted
        fast_body = fast_body.replace(fast.headers["X-Request-ID"].encode(), b"<id>")
        slow_body = slow_body.replace(slow.headers["X-Request-ID"].encode(), b"<id>")
    assert fast_body == slow_body
    fast_headers, slow_headers = dict(fast.headers), dict(slow.headers)
    assert sorted(fast_headers) == sorted(slow_headers)
    assert len(fast.headers) == len(slow.headers)
    for name in ("RateLimit-Reset",):  # seconds to the window's end: may tick between the two calls
        if name in fast_headers:
            assert abs(int(fast_headers.pop(name)) - int(slow_headers.pop(name))) <= 1
    if not sent_request_id:
        assert fast_headers.pop("X-Request-ID") and slow_headers.pop("X-Request-ID")
    assert fast_headers == slow_headers


def _cases(catalog: dict[str, Any]) -> list[tuple[str, str, dict[str, str], bool]]:
    ids, etag, k = catalog["ids"], catalog["etag"], catalog["keys"]
    current = f"/v1/protocols/{ids['current']}"
    cases: list[tuple[str, str, dict[str, str], bool]] = []  # (method, path, headers, served fast)
    for method in ("GET", "HEAD"):
        for inm in (None, etag, f"W/{etag}", "*", '"nope"', f'"x", {etag}', "garbage,,", ""):
            headers = {} if inm is None else {"If-None-Match": inm}
            cases.append((method, current, headers, True))
        cases.append((method, f"/v1/protocols/{ids['revised']}", {}, True))
        cases.append((method, f"/v1/protocols/{ids['revised']}", {"If-None-Match": etag}, True))  # not its ETag
        cases.append((method, current, {"Authorization": f"Bearer {k['all']}"}, True))
        cases.append((method, current, {"Authorization": f"bearer  {k['read']} "}, True))
        cases.append((method, current, {"X-Request-ID": "caller-id-1"}, True))
        cases.append((method, current, {"X-Request-ID": "bad id with spaces"}, True))
        # handed on to Flask
        cases.append((method, f"/v1/protocols/{ids['retired']}", {}, False))
        cases.append((method, f"/v1/protocols/{ids['retired']}", {"If-None-Match": "*"}, False))
        cases.append((method, f"/v1/protocols/{ids['future']}", {}, False))
        cases.append((method, f"/v1/protocols/{ids['future']}", {"If-None-Match": "*"}, False))
        cases.append((method, "/v1/protocols/no-such-protocol", {}, False))
        cases.append((method, f"{current}?as_of=2020-01-01T00:00:00Z", {}, False))
        cases.append((method, f"{current}?unknown=1", {}, False))
        cases.append((method, f"{current}/", {}, False))
        cases.append((method, "/v1/protocols/x%00y", {}, False))
        cases.append((method, "/v1/protocols/caf%C3%A9", {}, False))
        cases.append((method, current, {"Origin": "https://ehr.example"}, False))
        for if_match in (etag, '"nope"', "*", f"W/{etag}", "garbage"):  # a precondition Flask evaluates
            cases.append((method, current, {"If-Match": if_match}, False))
        cases.append((method, current, {"If-Match": etag, "If-None-Match": etag}, False))
        for bad in (f"Bearer {k['write_only']}", f"Bearer {k['revoked']}", f"Bearer {k['expired']}",
                    "Bearer tpk_unknown", "Basic abc", "Bearer", f"Bearer {k['read']} extra"):
            cases.append((method, current, {"Authorization": bad}, False))
    return cases


#: What the If-Match cases of :func:`_cases` must answer (after the fast path handed them to Flask).
_IF_MATCH_STATUS = {'"nope"': 412, "*": 200, "garbage": 400}


def test_fast_path_answers_exactly_like_the_flask_view(pair, catalog) -> None:
    fast, slow, counter = pair
    for method, path, headers, served_fast in _cases(catalog):
        before = counter.calls
        fast_response = _send(fast, method, path, headers)
        slow_response = _send(slow, method, path, headers)
        case = f"{method} {path} {headers}"
        if "If-Match" in headers and "If-None-Match" not in headers:
            expected = _IF_MATCH_STATUS.get(headers["If-Match"], 200 if headers["If-Match"] == catalog["etag"] else 412)
            assert fast_response.status_code == expected, case
        elif "If-Match" in headers:
            assert fast_response.status_code == 304, case
        assert (counter.calls == before) is served_fast, f"fast path {'skipped' if served_fast else 'taken'}: {case}"
        try:
            _same(fast_response, slow_response, headers.get("X-Request-ID") == "caller-id-1")
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from exc


def test_anonymous_reads_off_are_401_through_flask(make_app, catalog) -> None:
    app = make_app(PROTOCOLS_ANONYMOUS_READS=False)
    response = _send(app, "GET", f"/v1/protocols/{catalog['ids']['current']}", {})
    assert response.status_code == 401 and "WWW-Authenticate" in response.headers


def test_rate_limited_callers_get_the_same_429_and_are_counted_once(make_app, catalog, monkeypatch) -> None:
    import time
    import types

    from api import ratelimit

    # The limiter's clock is pinned: the seconds left in the window (Retry-After, the 429 body) ticked
    # between the two apps' answers when a second ended in between (seen once in a full run).
    pinned = time.time()
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(time=lambda: pinned))
    fast = make_app(PROTOCOLS_RATE_LIMIT="3/hour", PROTOCOLS_ANONYMOUS_READS=True)
    slow = make_app(PROTOCOLS_RATE_LIMIT="3/hour", PROTOCOLS_ANONYMOUS_READS=True, PROTOCOLS_READ_FAST_PATH=False)
    path = f"/v1/protocols/{catalog['ids']['current']}"
    key = {"Authorization": f"Bearer {catalog['keys']['read']}"}
    for expected in (200, 200, 200, 429, 429):
        responses = [_send(app, "GET", path, key) for app in (fast, slow)]
        assert [r.status_code for r in responses] == [expected, expected]
        _same(responses[0], responses[1], sent_request_id=False)
    assert responses[0].headers["RateLimit-Remaining"] == "0" and "Retry-After" in responses[0].headers


def test_fast_path_logs_one_request_line(pair, catalog, caplog) -> None:
    fast = pair[0]
    path = f"/v1/protocols/{catalog['ids']['current']}"
    with caplog.at_level(logging.INFO, logger="api.access"):
        response = _send(fast, "GET", path, {"Authorization": f"Bearer {catalog['keys']['read']}",
                                             "X-Request-ID": "trace-42"})
    assert response.status_code == 200
    lines = [r for r in caplog.records if r.name == "api.access"]
    assert len(lines) == 1
    line = lines[0].__dict__
    assert (line["request_id"], line["method"], line["path"], line["status"], line["actor"]) == (
        "trace-42", "GET", path, 200, "reader")
    assert isinstance(line["duration_ms"], float)


def test_a_matching_conditional_get_does_not_read_the_document(pair, catalog) -> None:
    """A 304 needs the ETag of the version in effect, not its bytes (which PostgreSQL keeps
    compressed in TOAST): one narrow SELECT. A mismatch reads the full version as a plain GET does."""
    fast = pair[0]
    db = fast.extensions["protocols_db"]
    statements: list[str] = []
    fetch_one = db.reads.fetch_one

    def recording(sql: str, params: Any) -> Any:
        statements.append(sql)
        return fetch_one(sql, params)

    db.reads.fetch_one = recording
    try:
        path = f"/v1/protocols/{catalog['ids']['current']}"
        assert _send(fast, "GET", path, {"If-None-Match": catalog["etag"]}).status_code == 304
        assert len(statements) == 1 and "etag" in statements[0] and "document" not in statements[0]
        statements.clear()
        assert _send(fast, "GET", path, {"If-None-Match": '"stale"'}).status_code == 200
        assert len(statements) == 2 and "document" in statements[1]
    finally:
        del db.reads.fetch_one


class Failing:
    """Stands in for a module function: raises ``error`` on the first ``times`` calls (every call when
    None), then calls the real function; counts the calls."""

    def __init__(self, real: Any, error: Exception, times: int | None = None) -> None:
        self.real, self.error, self.times, self.calls = real, error, times, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.times is None or self.calls <= self.times:
            raise self.error
        return self.real(*args, **kwargs)


def _timeout() -> OperationalError:
    return OperationalError("SELECT ...", {}, Exception("canceling statement due to lock timeout"))


def test_a_database_timeout_gets_flasks_503_from_the_fast_path_without_a_second_attempt(
        pair, catalog, monkeypatch) -> None:
    """A lock or connect timeout would only repeat on a second attempt (and double the caller's wait):
    the fast path answers it with exactly the 503 the Flask view gives, and asks the database once."""
    fast, slow, counter = pair
    current = f"/v1/protocols/{catalog['ids']['current']}"
    key = {"Authorization": f"Bearer {catalog['keys']['read']}"}
    # (what fails, request): the fast path calls the first function named, the Flask view the last.
    cases = [((versioning, ["effective"]), "GET", {}), ((versioning, ["effective"]), "HEAD", {}),
             ((versioning, ["effective"]), "GET", key),  # after the key and the rate limit: their headers too
             ((versioning, ["effective_etag", "effective"]), "GET", {"If-None-Match": catalog["etag"]}),
             # before the rate limit: no RateLimit headers (Flask's hook looks the key up whatever its
             # state, to name a revoked one in the audit trail; authenticate does that lookup too)
             ((keys, ["authenticate", "identify"]), "GET", key)]
    for (module, names), method, headers in cases:
        with monkeypatch.context() as patch:
            failing = [Failing(getattr(module, name), _timeout()) for name in names]
            for name, stand_in in zip(names, failing, strict=True):
                patch.setattr(module, name, stand_in)
            before = counter.calls
            fast_response = _send(fast, method, current, headers)
            assert (sum(f.calls for f in failing), counter.calls - before) == (1, 0), f"{names} {method} {headers}"
            slow_response = _send(slow, method, current, headers)
        assert fast_response.status_code == 503 and fast_response.headers["Retry-After"]
        assert ("RateLimit-Limit" in fast_response.headers) is (module is not keys)
        _same(fast_response, slow_response, sent_request_id=False)


def test_an_error_from_a_dead_connection_is_tried_again_through_flask(pair, catalog, monkeypatch) -> None:
    fast, _, counter = pair
    lost = OperationalError("SELECT ...", {}, Exception("server closed the connection unexpectedly"),
                            connection_invalidated=True)
    failing = Failing(versioning.effective, lost, times=1)
    monkeypatch.setattr(versioning, "effective", failing)
    before = counter.calls
    response = _send(fast, "GET", f"/v1/protocols/{catalog['ids']['current']}", {})
    assert response.status_code == 200 and response.headers["ETag"] == catalog["etag"]
    assert (failing.calls, counter.calls - before) == (2, 1)  # the fast path's attempt, then Flask's


def test_a_get_with_a_body_is_left_to_flask_and_answered_alike(pair, catalog) -> None:
    """Found in review: GET with a body answered 200 on the fast path and 400 through Flask, which
    refuses a body on operations that take none."""
    fast, slow, counter = pair
    path = f"/v1/protocols/{catalog['ids']['current']}"
    before = counter.calls
    answers = [FlaskClient(app, app.response_class).get(path, data=b'{"x": 1}', content_type="application/json")
               for app in (fast, slow)]
    assert counter.calls == before + 1  # handed on to Flask
    assert [a.status_code for a in answers] == [400, 400]
    assert answers[0].get_json()["errors"] == answers[1].get_json()["errors"] == {
        "body": ["This operation takes no request body."]}
