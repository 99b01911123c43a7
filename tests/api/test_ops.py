"""Operational basics: request ids, JSON logs without secrets, health/readiness, 503-then-recover,
body-size and page-size limits, per-key rate limits (in-process and shared through Redis)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from api.config import from_env
from api.ratelimit import Limit, RateLimiter, parse_limit
from protocols import keys
from tests.factories import protocol_payload

REDIS_URL = os.environ.get("PROTOCOLS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ----------------------------------------------------------------------------- request ids


def test_every_response_carries_a_request_id(client, anon_client):
    responses = [client.get("/v1/protocols"), anon_client.get("/v1/protocols"), client.get("/v1/nowhere"),
                 anon_client.get("/v1/health"), client.post("/v1/protocols", data="x", content_type="text/plain")]
    ids = [r.headers["X-Request-ID"] for r in responses]
    assert all(ids) and len(set(ids)) == len(ids)
    assert client.get("/v1/protocols", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"


# --------------------------------------------------------------------------------- logging


def test_request_logs_are_json_lines_with_id_and_never_key_material(client, anon_client, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    created = client.post("/v1/admin/keys", json={"name": "logged", "scopes": ["protocols:read"]}).get_json()
    secret = created["key"]
    anon_client.get("/v1/protocols", headers={**bearer(secret), "X-Request-ID": "log-check-1"})
    bogus = "tpk_" + uuid.uuid4().hex * 2
    anon_client.get("/v1/protocols", headers=bearer(bogus))
    client.delete(f"/v1/admin/keys/{created['id']}")
    anon_client.get("/v1/protocols", headers=bearer(secret))
    listing = client.get("/v1/protocols")
    assert client.get("/v1/protocols", headers={"If-None-Match": listing.headers["ETag"]}).status_code == 304
    test_key = client.application.config["TEST_API_KEY"]

    stderr = capfd.readouterr().err
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    mine = [entry for entry in lines if entry.get("request_id") == "log-check-1"]
    assert mine and mine[0]["method"] == "GET" and mine[0]["path"] == "/v1/protocols"
    assert mine[0]["status"] == 200 and mine[0]["actor"] == "logged" and mine[0]["duration_ms"] >= 0
    statuses = [entry["status"] for entry in lines if entry.get("logger") == "api.access"]
    assert statuses == [201, 200, 401, 200, 401, 200, 304]  # a list's 304 was logged as 200 (probe)
    for haystack in (stderr, caplog.text):
        for material in (secret, bogus, test_key, secret[4:], "Bearer", "Authorization"):
            assert material not in haystack


# ---------------------------------------------------------------------------------- health


def test_liveness_and_readiness(anon_client):
    assert anon_client.get("/v1/health").get_json() == {"status": "ok"}
    ready = anon_client.get("/v1/health/ready")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "database": "ok", "migrations": "current"}


@pytest.mark.parametrize(("rows", "advice"), [
    (["0005"], "run `flask protocols migrate`"),
    # Found by an operations probe: a newer release's revision was told to migrate (which fails, saying
    # so), and two rows in alembic_version read as "database unreachable".
    (["9999"], "this release does not know that revision; the database was migrated by a newer one"),
    (["0005", "0006"], "The database records more than one schema revision"),
], ids=["behind", "newer", "two-rows"])
def test_readiness_is_503_when_migrations_are_not_current(anon_client, db, rows, advice):
    with db.engine.begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("DELETE FROM alembic_version"))
        for row in rows:
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:row)"), {"row": row})
    try:
        response = anon_client.get("/v1/health/ready")
        assert response.status_code == 503 and response.headers["Retry-After"]
        body = response.get_json()
        assert body["migrations"] == "not current" and body["database"] == "ok"
        assert advice in body["message"], body["message"]
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM alembic_version"))
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:head)"), {"head": head})
    assert anon_client.get("/v1/health/ready").status_code == 200


# ---------------------------------------------------------------- database outage and recovery


class TcpProxy:
    """A byte pump on 127.0.0.1 in front of PostgreSQL that the test can cut and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            listener, self._listener = self._listener, None
        for sock in [*sockets, *([listener] if listener else [])]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == 503 and body["request_id"] == response.headers["X-Request-ID"]
    assert int(response.headers["Retry-After"]) > 0
    assert "Traceback" not in response.get_data(as_text=True)


def test_database_outage_is_503_then_recovers_without_restart(make_app, database_url, backend):
    """PostgreSQL: a TCP proxy in front of the server is cut and restored. SQLite: the database file
    cannot be opened, then can again. Either way: 503 + Retry-After during, normal service after."""
    if backend == "postgres":
        postgres_outage(make_app, database_url)
    else:
        sqlite_outage(make_app())


def postgres_outage(make_app, database_url: str) -> None:
    url = make_url(database_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    try:
        app = make_app(PROTOCOLS_DATABASE_URL=url.set(port=proxy.port).render_as_string(hide_password=False))
        client = app.test_client()
        payload = protocol_payload()
        assert client.post("/v1/protocols", json=payload).status_code == 201
        proxy.stop()  # the database "goes away": pooled connections die, new ones are refused
        assert_unavailable(client.get(f"/v1/protocols/{payload['id']}"))
        assert_unavailable(client.post("/v1/protocols", json=protocol_payload(id="during-outage")))
        ready = client.get("/v1/health/ready")
        assert ready.status_code == 503 and ready.get_json()["database"] == "unreachable"
        assert client.get("/v1/health").status_code == 200  # liveness is not the database's business
        proxy.start()  # same port: the database is back
        assert client.get(f"/v1/protocols/{payload['id']}").status_code == 200
        assert client.get("/v1/health/ready").status_code == 200
        # the server kills the app's sessions (failover, admin action; waiting until they are gone):
        # the pool's checkout sees the closed sockets and opens new connections
        with make_app().extensions["protocols_db"].engine.connect() as conn:
            killed = conn.execute(text(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
        assert killed >= 1
        assert client.get(f"/v1/protocols/{payload['id']}").status_code == 200
        assert client.post("/v1/protocols", json=protocol_payload(id="after-failover")).status_code == 201
    finally:
        proxy.stop()


def sqlite_outage(app) -> None:
    client = app.test_client()
    db = app.extensions["protocols_db"]
    path = Path(db.engine.url.database or "")
    assert client.get("/v1/protocols").status_code == 200
    db.dispose()  # drop pooled handles: the next request must open the file again
    moved = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    for p in moved:
        p.rename(p.with_name(p.name + ".away"))
    path.mkdir()  # a directory where the database file was: it cannot be opened
    try:
        assert_unavailable(client.get("/v1/protocols"))
        assert_unavailable(client.post("/v1/protocols", json=protocol_payload()))
        assert client.get("/v1/health/ready").status_code == 503
    finally:
        path.rmdir()
        for p in moved:
            p.with_name(p.name + ".away").rename(p)
    assert client.get("/v1/protocols").status_code == 200
    assert client.post("/v1/protocols", json=protocol_payload()).status_code == 201


# ------------------------------------------------------------------------------------ limits


def test_oversized_body_is_413_in_the_json_error_shape(client, app):
    limit = app.config["MAX_CONTENT_LENGTH"]
    payload = protocol_payload(summary="x" * (limit + 10))
    response = client.post("/v1/protocols", json=payload)
    assert response.status_code == 413
    body = response.get_json()
    assert body["code"] == 413 and body["request_id"] == response.headers["X-Request-ID"]


def test_page_size_is_capped(client):
    response = client.get("/v1/protocols?page_size=101")
    assert response.status_code == 422 and "page_size" in response.get_json()["errors"]


def test_rate_limit_answers_429_with_headers_per_key(make_app, make_key):
    app = make_app(PROTOCOLS_RATE_LIMIT="3/day")
    client = app.test_client()
    remaining = [client.get("/v1/protocols").headers["RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    limited = client.get("/v1/protocols")
    assert limited.status_code == 429
    assert limited.get_json()["code"] == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.headers["RateLimit-Limit"] == "3" and limited.headers["RateLimit-Remaining"] == "0"
    assert limited.headers["RateLimit-Reset"] == limited.headers["Retry-After"]
    other = client.get("/v1/protocols", headers=bearer(make_key(["protocols:read"])))
    assert other.status_code == 200  # the budget is per key
    assert client.get("/v1/health").status_code == 200  # probes are never limited


def test_rate_limit_is_shared_across_workers_through_redis(make_app):
    workers = [make_app(PROTOCOLS_RATE_LIMIT="3/day", PROTOCOLS_REDIS_URL=REDIS_URL) for _ in range(2)]
    clients = [w.test_client() for w in workers]
    statuses = [clients[n % 2].get("/v1/protocols").status_code for n in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    redis_client = workers[0].extensions["protocols_ratelimiter"].redis.client
    key = keys.authenticate(workers[0].extensions["protocols_db"], workers[0].config["TEST_API_KEY"])
    assert key is not None
    key_id = key.id
    counters = list(redis_client.scan_iter(f"protocols:ratelimit:key:{key_id}:*"))
    assert [int(redis_client.get(c)) for c in counters] == [5]  # one counter, fed by both workers
    redis_client.delete(*counters)


def test_rate_limit_falls_back_in_process_when_redis_is_down(caplog):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    limiter = RateLimiter(Limit(2, 60), f"redis://127.0.0.1:{closed_port}/0")
    verdicts = [limiter.hit("key:x", now=120.0).allowed for _ in range(3)]
    assert verdicts == [True, True, False]
    assert "unreachable" in caplog.text


def test_parse_limit():
    assert parse_limit("600/minute") == Limit(600, 60)
    assert parse_limit("5 / Seconds") == Limit(5, 1)
    assert parse_limit("off") is None
    for bad in ("fast", "0/minute", "10/fortnight", "0", "none", "", "  "):
        with pytest.raises(ValueError):
            parse_limit(bad)


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_rate_limit_in_the_environment_is_the_default_not_off(monkeypatch, blank):
    """Found by a probe: ``PROTOCOLS_RATE_LIMIT=`` (a compose file's empty value) turned limiting off."""
    monkeypatch.setenv("PROTOCOLS_RATE_LIMIT", blank)
    assert parse_limit(from_env()["PROTOCOLS_RATE_LIMIT"]) == Limit(3000, 60)


def test_anonymous_readers_are_limited_by_address(make_app):
    app = make_app(PROTOCOLS_RATE_LIMIT="2/day", PROTOCOLS_ANONYMOUS_READS=True)
    anon = app.test_client()
    anon.environ_base.pop("HTTP_AUTHORIZATION")
    assert [anon.get("/v1/protocols").status_code for _ in range(3)] == [200, 200, 429]


def test_an_ipv6_reader_is_counted_by_its_slash_64(make_app):
    """Found by a probe: anonymous IPv6 readers were counted per address, and a host holds a whole /64,
    so it could rotate to a fresh budget with every request. An IPv4-mapped address is its IPv4."""
    app = make_app(PROTOCOLS_RATE_LIMIT="2/day", PROTOCOLS_ANONYMOUS_READS=True)
    anon = app.test_client()
    anon.environ_base.pop("HTTP_AUTHORIZATION")

    def status(address: str) -> int:
        return anon.get("/v1/protocols", environ_base={"REMOTE_ADDR": address}).status_code

    assert [status(f"2001:db8:1:2::{n:x}") for n in (1, 2, 0xffff)] == [200, 200, 429]
    assert status("2001:db8:1:3::1") == 200  # another /64
    assert [status(a) for a in ("::ffff:192.0.2.7", "192.0.2.7", "::ffff:c000:207")] == [200, 200, 429]


@pytest.mark.parametrize(("address", "counted_as"), [
    ("2001:db8:1:2::7", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("64:ff9b::192.0.2.8", "192.0.2.8"),  # NAT64 (RFC 6052): one budget per IPv4 client, not one for all
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),  # Teredo: the client's own IPv4 address
    ("::192.0.2.9", "::c000:209"), ("::1", "::1"),  # ::/96 is no one client's /64
    ("fe80::1%eth0", "fe80::1"), ("fe80::2", "fe80::2"),  # link-local /64s are every link's
    ("not-an-address", "not-an-address"),
])
def test_client_networks_separate_ipv4_clients_carried_in_ipv6(address, counted_as):
    """Found in review of the /64 budgets: NAT64, Teredo, IPv4-compatible and link-local addresses
    put unrelated clients in one /64."""
    from api.ratelimit import client_network

    assert client_network(address) == counted_as


def test_make_run_mints_a_local_write_key():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    run_target = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    # a fresh name per run: live keys have distinct names, and make run may be run again
    assert ("keys create --name local-dev-$$(date +%Y%m%d-%H%M%S) --scope protocols:read "
            "--scope protocols:write") in run_target


def test_refused_requests_count_against_the_caller_and_stop_adding_audit_rows(make_app, make_key):
    """Found by an adversarial probe: 401/403 answers were never rate-limited, so a caller without any
    key could add denied-write audit rows (which nothing may delete) without limit."""
    from protocols import audit

    app = make_app(PROTOCOLS_RATE_LIMIT="3/day")
    anonymous = app.test_client()
    anonymous.environ_base.pop("HTTP_AUTHORIZATION", None)
    app.config["TEST_API_KEY"] = None
    reader = bearer(make_key(["protocols:read"]))
    def attempts(headers: dict[str, str]) -> list[int]:
        return [anonymous.post("/v1/protocols", json={}, headers=headers).status_code for _ in range(5)]

    assert attempts({}) == [401, 401, 401, 429, 429]  # counted against the client address
    assert attempts({"Authorization": "Bearer tpk_nope"}) == [429] * 5  # an unknown key: the same address
    assert attempts(reader) == [403, 403, 403, 429, 429]  # a key without the scope: its own budget
    other = make_app(PROTOCOLS_RATE_LIMIT="3/day").test_client()  # a malformed header (found in review)
    other.environ_base.pop("HTTP_AUTHORIZATION", None)
    assert [other.post("/v1/protocols", json={}, headers={"Authorization": "Basic eA=="}).status_code
            for _ in range(5)] == [401, 401, 401, 429, 429]
    limited = anonymous.post("/v1/protocols", json={})
    assert limited.status_code == 429 and limited.headers["Retry-After"]
    denied = audit.query(app.extensions["protocols_db"], limit=100, outcome=audit.DENIED).items
    assert len(denied) == 9  # 3 from the address (no key or an unknown one), 3 from the read key, 3 malformed


def test_behind_a_trusted_proxy_anonymous_readers_are_counted_per_client(make_app):
    """Found by an adversarial probe: REMOTE_ADDR stayed the proxy's, so all anonymous readers behind it
    shared one budget. The read fast path and the Flask views count the same address."""
    payload = protocol_payload()

    def statuses(app, forwarded_for: str, path: str) -> list[int]:
        client = app.test_client()
        client.environ_base.pop("HTTP_AUTHORIZATION", None)
        return [client.get(path, headers={"X-Forwarded-For": forwarded_for}).status_code for _ in range(3)]

    trusted = make_app(PROTOCOLS_RATE_LIMIT="2/day", PROTOCOLS_ANONYMOUS_READS=True,
                       PROTOCOLS_FORWARDED_ALLOW_IPS="127.0.0.1")
    assert trusted.test_client().post("/v1/protocols", json=payload).status_code == 201
    for path in ("/v1/protocols", f"/v1/protocols/{payload['id']}"):  # the Flask view, the fast path
        app = make_app(PROTOCOLS_RATE_LIMIT="2/day", PROTOCOLS_ANONYMOUS_READS=True,
                       PROTOCOLS_FORWARDED_ALLOW_IPS="127.0.0.1")
        assert statuses(app, "198.51.100.7, 203.0.113.5", path) == [200, 200, 429]
        assert statuses(app, "203.0.113.6", path) == [200, 200, 429], path  # another client, its own budget
        # A peer that is not a trusted proxy cannot choose the address it is counted by.
        untrusted = make_app(PROTOCOLS_RATE_LIMIT="2/day", PROTOCOLS_ANONYMOUS_READS=True,
                             PROTOCOLS_FORWARDED_ALLOW_IPS="10.0.0.1")
        assert statuses(untrusted, "203.0.113.5", path) == [200, 200, 429]
        assert statuses(untrusted, "203.0.113.6", path) == [429, 429, 429], path


def test_the_in_process_counter_drops_past_windows_once_per_window():
    """Found by an adversarial probe: past 10,000 callers in one window the in-process counter (no
    Redis, or Redis down) rebuilt its whole table under the lock on every request."""
    from api.ratelimit import MemoryCounter

    counter = MemoryCounter()
    for index in range(10_002):  # the hit after the 10,000th drops past windows (none yet) once
        counter.hit(f"addr:{index}", 7, 60)
    table = counter._counts
    for index in range(100):
        assert counter.hit(f"addr:more-{index}", 7, 60) == 1
    assert counter._counts is table  # no rebuild again in this window
    assert counter.hit("addr:0", 8, 60) == 1  # next window: past ones dropped, once
    assert len(counter._counts) == 1 and counter.hit("addr:1", 8, 60) == 1
    assert counter.hit("addr:0", 8, 60) == 2


def test_a_database_not_migrated_yet_is_a_503_on_both_databases(blank_database_url, caplog):
    """Found by an operations probe: servers started before ``flask protocols migrate`` (a rollout) answered
    every data request on PostgreSQL with a 500 and a traceback (undefined table), where SQLite gave a 503.
    Both give the 503 with ``Retry-After``, reads by the fast path and by Flask, writes too; the readiness
    probe says the migrations are not current."""
    from api import create_app

    app = create_app({"PROTOCOLS_DATABASE_URL": blank_database_url, "TESTING": True,
                      "PROTOCOLS_ANONYMOUS_READS": True})
    try:
        client = app.test_client()
        for method, path, body in (("GET", "/v1/protocols/ketamine", None), ("GET", "/v1/protocols", None),
                                   ("GET", "/v1/changes", None), ("GET", "/fhir/R4/MedicationKnowledge", None),
                                   ("POST", "/v1/protocols", protocol_payload("new-one"))):
            # a key is looked up in the database (without one a write is a 401 before any query)
            headers = {"Authorization": f"Bearer tpk_{'A' * 43}"} if method == "POST" else {}
            response = client.open(path, method=method, json=body, headers=headers)
            assert response.status_code == 503 and response.headers["Retry-After"], (path, response.get_data())
        ready = client.get("/v1/health/ready")
        assert ready.status_code == 503 and ready.get_json()["migrations"] == "not current"
        # the log says which table was missing (a review: "ProgrammingError" alone did not)
        assert any("protocol" in r.getMessage() and "database unavailable" in r.getMessage()
                   and ("does not exist" in r.getMessage() or "no such table" in r.getMessage())
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        app.extensions["protocols_db"].dispose()


def test_a_migration_that_fails_on_the_database_is_not_told_to_run_the_migration():
    """Found by an operations probe: a migration refused by the database (a lock timeout, an unreachable
    server) said "… its schema migrated (`flask protocols migrate`)?", the command that had just failed.
    Other commands keep that advice."""
    from api import create_app

    app = create_app({"PROTOCOLS_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere", "TESTING": True})
    try:
        runner = app.test_cli_runner()
        migrating = runner.invoke(args=["protocols", "migrate"])
        assert migrating.exit_code == 1 and "Traceback" not in migrating.output
        assert "run it again once that session is done" in migrating.output
        assert "flask protocols migrate" not in migrating.output
        checking = runner.invoke(args=["protocols", "check"])
        assert checking.exit_code == 1 and "its schema migrated (`flask protocols migrate`)?" in checking.output
    finally:
        app.extensions["protocols_db"].dispose()
