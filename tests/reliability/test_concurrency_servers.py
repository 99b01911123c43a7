"""Concurrency on a real server: gunicorn with 3 worker processes, many client threads.

Runs against the test run's database (SQLite file in WAL mode, or the throwaway PostgreSQL
database). What must hold however the requests interleave:

* revising one protocol with If-Match retry loops: every 2xx appended exactly one version, the
  versions are gapless, each is the content its writer sent, every loser got 412 (or, on SQLite under
  lock pressure, 503 with Retry-After) and nothing else; the audit trail has one allowed write event
  per version;
* creating the same id from many clients: exactly one 201, every other answer 409;
* never a 500, never "database is locked" (or any SQL) in a body.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from api.config import MAX_BODY_BYTES
from tests.factories import protocol_payload
from tests.reliability.servers import Server, gunicorn, record_figures

WRITERS = 8
REVISIONS_PER_WRITER = 4
MAX_ATTEMPTS = 200
CREATORS = 12
LEAKS = ("database is locked", "Traceback", "sqlalchemy", "psycopg", "sqlite3")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def server_database(test_databases: Any) -> str:
    """The module's own database: every test here works on protocol ids of its own, so one server
    (3 workers take ~10 s to start and warm up) serves them all."""
    return test_databases.private_url()


@pytest.fixture(scope="module")
def server(server_database: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with gunicorn(server_database, tmp_path_factory.mktemp("gunicorn"), workers=3) as running:
        yield running


def _no_leak(response: requests.Response) -> None:
    assert response.status_code != 500, response.text
    for marker in LEAKS:
        assert marker not in response.text, response.text


def _revise_until_done(server: Server, protocol_id: str, writer: int, outcomes: list[tuple[str, Any]]) -> None:
    """One client: REVISIONS_PER_WRITER successful revisions, each in an If-Match retry loop."""
    session = server.session()
    done = 0
    for _attempt in range(MAX_ATTEMPTS):
        if done == REVISIONS_PER_WRITER:
            return
        latest = session.get(f"{server.url}/v1/protocols/{protocol_id}/versions/latest", timeout=30)
        _no_leak(latest)
        if latest.status_code == 503:
            assert latest.headers.get("Retry-After")
            outcomes.append(("503", None))
            time.sleep(0.05)
            continue
        assert latest.status_code == 200, latest.text
        title = f"writer {writer} revision {done} {time.monotonic_ns()}"
        body = protocol_payload(protocol_id, title=title)
        response = session.put(f"{server.url}/v1/protocols/{protocol_id}", json=body,
                               headers={"If-Match": latest.headers["ETag"]}, timeout=30)
        _no_leak(response)
        if response.status_code == 201:
            got = response.json()
            outcomes.append(("201", (got["version"], title, response.headers["ETag"])))
            done += 1
        elif response.status_code == 412:
            # Every 412 names the newest version: the one a lost race inside the guarded append gave
            # (most lost races on PostgreSQL) named none, leaving a retrying client nothing to retry with.
            refused = response.json()
            assert isinstance(refused.get("current_version"), int) and refused.get("current_etag"), refused
            outcomes.append(("412", None))
        elif response.status_code == 503:
            assert response.headers.get("Retry-After") and response.json()["code"] == 503
            outcomes.append(("503", None))
            time.sleep(0.05)
        else:
            outcomes.append((str(response.status_code), response.text))
    raise AssertionError(f"writer {writer} did not finish in {MAX_ATTEMPTS} attempts")


def test_concurrent_revisions_lose_nothing_and_duplicate_nothing(server: Server, backend: str,
                                                                 server_database: str) -> None:
    session = server.session()
    protocol_id = "concurrent-revisions"
    created = session.post(f"{server.url}/v1/protocols", json=protocol_payload(protocol_id), timeout=30)
    assert created.status_code == 201, created.text

    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def writer(number: int) -> None:
        mine: list[tuple[str, Any]] = []
        try:
            _revise_until_done(server, protocol_id, number, mine)
        finally:
            with lock:
                outcomes.extend(mine)

    with ThreadPoolExecutor(WRITERS) as pool:
        for future in [pool.submit(writer, n) for n in range(WRITERS)]:
            future.result()

    kinds = Counter(kind for kind, _ in outcomes)
    assert set(kinds) <= {"201", "412", "503"}, [o for o in outcomes if o[0] not in ("201", "412", "503")]
    successes = [detail for kind, detail in outcomes if kind == "201"]
    assert len(successes) == WRITERS * REVISIONS_PER_WRITER
    versions_written = sorted(version for version, _, _ in successes)
    assert versions_written == list(range(2, 2 + len(successes))), "a version was duplicated or skipped"

    stored = []
    url: str | None = f"{server.url}/v1/protocols/{protocol_id}/versions?page_size=100"
    while url:
        page = session.get(url, timeout=30).json()
        stored.extend(page["items"])
        url = page["next"]
    assert [v["version"] for v in stored] == list(range(len(successes) + 1, 0, -1))  # gapless
    by_version = {v["version"]: v for v in stored}
    for version, title, etag in successes:  # each 2xx is exactly the version its writer sent
        assert by_version[version]["title"] == title
        check = session.get(f"{server.url}/v1/protocols/{protocol_id}/versions/{version}", timeout=30)
        assert check.headers["ETag"] == etag

    audit_counts = _audit_counts(server_database, protocol_id)
    if audit_counts is not None:  # one allowed event per version written, one denied per 412
        assert audit_counts["protocol.create/allowed/201"] == 1, audit_counts
        assert audit_counts["protocol.revise/allowed/201"] == len(successes), audit_counts
        assert audit_counts["protocol.revise/denied/412"] == kinds["412"], audit_counts
    if backend == "postgres":
        assert kinds["412"] > 0, "the writers never actually raced"
    record_figures("concurrency", backend, concurrent_writers=WRITERS, gunicorn_workers=3,
                   successful_revisions=len(successes), precondition_failures=kinds["412"],
                   busy_503=kinds["503"], lost_versions=0, duplicated_versions=0)


def _audit_counts(database_url: str, protocol_id: str) -> Counter[str] | None:
    """Audit events about this protocol by ``action/outcome`` (None when there is no audit trail)."""
    try:
        from protocols import audit
    except ImportError:
        return None
    from protocols.db import make_database

    db = make_database(database_url)
    counts: Counter[str] = Counter()
    try:
        after = None
        while True:
            page = audit.query(db, limit=500, target=protocol_id, after_seq=after)
            counts.update(f"{e.action}/{e.outcome}/{e.status_code}" for e in page.items)
            if not page.has_more:
                break
            after = page.items[-1].seq
    finally:
        db.dispose()
    return counts


def test_concurrent_creates_of_one_id_yield_exactly_one_201(server: Server, backend: str) -> None:
    barrier = threading.Barrier(CREATORS)

    def create(number: int) -> requests.Response:
        session = server.session()
        payload = protocol_payload("same-id-race", title=f"creator {number}")
        barrier.wait(timeout=30)
        for _ in range(50):
            response = session.post(f"{server.url}/v1/protocols", json=payload, timeout=30)
            _no_leak(response)
            if response.status_code != 503:
                return response
            assert response.headers.get("Retry-After")
            time.sleep(0.05)
        raise AssertionError("still busy after 50 tries")

    with ThreadPoolExecutor(CREATORS) as pool:
        responses = list(pool.map(create, range(CREATORS)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: CREATORS - 1}, statuses
    winner = next(r for r in responses if r.status_code == 201).json()
    session = server.session()
    versions = session.get(f"{server.url}/v1/protocols/same-id-race/versions", timeout=30).json()["items"]
    assert [v["version"] for v in versions] == [1] and versions[0]["title"] == winner["title"]
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == 409 and "already exists" in response.json()["message"]
    record_figures("concurrency", backend, concurrent_creators=CREATORS, creates_won=1,
                   creates_conflicted=CREATORS - 1)


def test_server_banner_headers_and_header_injection_under_gunicorn(server: Server) -> None:
    session = server.session()
    for response in (session.get(f"{server.url}/v1/protocols", timeout=10),
                     session.get(f"{server.url}/v1/protocols/missing-protocol", timeout=10),
                     requests.get(f"{server.url}/v1/protocols", timeout=10)):
        server_header = response.headers.get("Server", "")
        assert not any(ch.isdigit() for ch in server_header), f"version banner: {server_header}"
        assert response.headers.get("X-Content-Type-Options") == "nosniff"
        cache = response.headers.get("Cache-Control", "")
        assert "private" in cache or "no-store" in cache
    # CRLF in a header, as raw bytes on the socket (clients refuse to send CR/LF inside a value).
    host, port = server.url.removeprefix("http://").split(":")
    request = (f"GET /v1/protocols/missing-protocol HTTP/1.1\r\nHost: {host}\r\n"
               f"Authorization: Bearer {server.key}\r\n"
               "X-Request-ID: abc\rSet-Cookie: stolen=1\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = int(head.split(" ", 2)[1])
    assert status in (400, 404), head
    assert "stolen" not in head and "Set-Cookie" not in head


def test_a_chunked_upload_over_the_body_limit_is_refused_by_the_real_server(server: Server) -> None:
    """gunicorn hands a chunked body on without a length; the app must still refuse it whole when it is
    longer than the limit, not read up to the limit and store the valid document found there."""
    payload = protocol_payload("chunked-over-limit")
    document = json.dumps(payload).encode()
    at_limit = document + b" " * (MAX_BODY_BYTES - len(document))
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/v1/protocols", body=iter([at_limit, b" GARBAGE {{{{" * 500]),
                           headers={"Content-Type": "application/json", "Authorization": f"Bearer {server.key}"},
                           encode_chunked=True)
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413 and body["code"] == 413, body
    session = server.session()
    assert session.get(f"{server.url}/v1/protocols/chunked-over-limit", timeout=10).status_code == 404


def _raw_exchange(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    status_line, headers, body = _raw_answer(server, request)
    return int(status_line.split(" ", 2)[1]), headers, body


def _raw_answer(server: Server, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes as they are (clients refuse to send these requests) and read the whole answer."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    return status_line, headers, body


REFUSED_BY_GUNICORN = [
    ("request-line-too-long", b"GET /v1/protocols/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
     "request_line"),
    ("too-many-headers", b"GET /v1/protocols HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-N%d: 1\r\n" % n for n in range(120)) + b"\r\n", 431, "headers"),
    ("header-too-large", b"GET /v1/protocols HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431,
     "headers"),
    ("malformed-request-line", b"GARBAGE\r\n\r\n", 400, "request_line"),
    ("malformed-method", b"G@T /v1/protocols HTTP/1.1\r\nHost: x\r\n\r\n", 400, "method"),
    ("malformed-version", b"GET /v1/protocols HTTP/9.x\r\nHost: x\r\n\r\n", 400, "http_version"),
    # a name that is no token is not a key of errors either
    ("malformed-header-name", b"GET /v1/protocols HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400,
     "headers"),
    ("malformed-content-length", b"POST /v1/protocols HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
     "Content-Length"),  # as the app names headers; gunicorn upper-cases them (a documentation probe)
    # the header whose line ends in a bare LF, by gunicorn's name for it
    ("bare-lf", b"GET /v1/protocols HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400, "Host"),
    ("unsupported-coding", b"POST /v1/protocols HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n",
     501, "Transfer-Encoding"),
    # named as the docs spell it, not X-Request-Id (a review)
    ("nul-in-request-id", b"GET /v1/protocols HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x00b\r\n\r\n", 400,
     "X-Request-ID"),
]


def test_requests_gunicorn_refuses_itself_get_the_json_error_body(server: Server) -> None:
    """gunicorn answers these before the app runs; its HTML page is replaced by the app's error shape
    (api/server_errors.py), which integrations parse for every error. One server for every case."""
    for name, request_bytes, status, where in REFUSED_BY_GUNICORN:
        got, headers, body = _raw_exchange(server, request_bytes)
        assert got == status, (name, headers, body)
        assert headers["content-type"] == "application/json", name
        assert int(headers["content-length"]) == len(body), name
        assert headers["x-content-type-options"] == "nosniff", name
        document = json.loads(body)
        assert document["code"] == status and document["status"] and document["message"], name
        assert document["request_id"] == headers["x-request-id"], name
        assert len(document["message"]) <= 200, name  # a bounded description, not an echo of the 9 KB line
        assert b"<html" not in body.lower(), name
        # Like the app's own error bodies, the part of the request at fault is named (found by a probe)
        assert document["errors"] == {where: [document["message"]]}, (name, document)
        status_line, _, _ = _raw_answer(server, request_bytes)  # a 501 read "Bad Request" (a probe)
        assert (status_line == "HTTP/1.1 501 Not Implemented") if status == 501 else \
            status_line.startswith(f"HTTP/1.1 {status} "), (name, status_line)
