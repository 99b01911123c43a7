"""Faults: the database goes away during writes, a worker dies mid-request, a backup is restored.

* Database outage under write load — PostgreSQL: the app reaches the database through a TCP proxy
  on 127.0.0.1 that the test cuts (listener and established connections) and restores; the shared
  cluster is never stopped. SQLite: another process holds the write lock longer than the busy
  timeout. Requests meanwhile get 503 JSON with ``Retry-After``; afterwards every acknowledged write
  is there, no version is partial, and service resumes by itself.
* ``SIGKILL`` of the worker that is inside a write transaction: nothing of it is stored, the other
  workers keep serving, the next write gets the next version number.
* ``flask protocols export`` then ``import`` into an empty database reproduces every version
  byte for byte (same ETags).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from protocols import migrate
from protocols.db import normalize_url
from tests.factories import protocol_payload
from tests.reliability.locks import lock_held
from tests.reliability.servers import Server, TcpProxy, gunicorn, mint_key, record_figures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

LOAD_CLIENTS = 4
OUTAGE_S = 6.0  # > the SQLite busy timeout (5 s)
RECOVERY_TIMEOUT_S = 30.0


# ------------------------------------------------------------------------------------ helpers


def integrity_problems(database_url: str) -> list[str]:
    """Every way a version could be partial or missing, checked directly in the database."""
    engine = create_engine(normalize_url(database_url))
    problems: list[str] = []
    try:
        with engine.connect() as conn:
            heads: dict[str, int] = dict(conn.execute(text("SELECT id, latest_version FROM protocols")).all())
            rows = conn.execute(text(
                "SELECT protocol_id, version, etag, document FROM protocol_versions ORDER BY protocol_id, version"
            )).all()
            periods = conn.execute(text("SELECT DISTINCT protocol_id FROM effective_periods")).scalars().all()
    finally:
        engine.dispose()
    versions: dict[str, list[int]] = {}
    for protocol_id, version, etag, document in rows:
        versions.setdefault(protocol_id, []).append(version)
        doc = json.loads(document)
        if doc["id"] != protocol_id or doc["version"] != version or not etag.startswith(f'"{version}-'):
            problems.append(f"{protocol_id} v{version}: document or ETag does not match its row")
    for protocol_id, latest in heads.items():
        if versions.get(protocol_id) != list(range(1, latest + 1)):
            problems.append(f"{protocol_id}: head says {latest}, versions are {versions.get(protocol_id)}")
    problems += [f"{pid}: versions without a head" for pid in set(versions) - set(heads)]
    problems += [f"{pid}: effective period without a protocol" for pid in set(periods) - set(heads)]
    return problems


class WriteLoad:
    """Clients creating and revising protocols until stopped; records what the server acknowledged."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stop = threading.Event()
        self.acknowledged: list[tuple[str, int, str]] = []  # (protocol id, version, etag)
        self.statuses: dict[int, int] = {}
        self.unavailable_bodies: list[dict[str, Any]] = []
        self.transport_errors = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(LOAD_CLIENTS)]

    def __enter__(self) -> WriteLoad:
        for thread in self.threads:
            thread.start()
        return self

    def wait_for_acknowledged(self, count: int, timeout_s: float = 30.0) -> int:
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.acknowledged)

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _note(self, response: requests.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
            if response.status_code == 503:
                self.unavailable_bodies.append({"body": response.json(), "retry_after": response.headers.get(
                    "Retry-After"), "type": response.headers.get("Content-Type")})

    def _run(self, number: int) -> None:
        session = self.server.session()
        etags: dict[str, str] = {}
        while not self.stop.is_set():
            try:
                if not etags or len(etags) < 3:
                    protocol_id = f"load-{number}-{uuid.uuid4().hex[:8]}"
                    response = session.post(f"{self.server.url}/v1/protocols", json=protocol_payload(protocol_id),
                                            timeout=20)
                else:
                    protocol_id = sorted(etags)[int(time.monotonic() * 1000) % len(etags)]
                    response = session.put(f"{self.server.url}/v1/protocols/{protocol_id}",
                                           json=protocol_payload(protocol_id, title=uuid.uuid4().hex),
                                           headers={"If-Match": etags[protocol_id]}, timeout=20)
            except requests.RequestException:
                with self.lock:
                    self.transport_errors += 1
                time.sleep(0.05)
                continue
            self._note(response)
            if response.status_code == 201:
                body = response.json()
                etags[protocol_id] = response.headers["ETag"]
                with self.lock:
                    self.acknowledged.append((protocol_id, body["version"], response.headers["ETag"]))
            elif response.status_code in (412, 409):
                etags.pop(protocol_id, None)  # the outcome of an interrupted write is unknown: move on
            elif response.status_code == 503:
                time.sleep(0.05)


def wait_until_writable(server: Server) -> float:
    """Seconds until a write succeeds again (the service must resume without any help)."""
    start = time.monotonic()
    session = server.session()
    while time.monotonic() - start < RECOVERY_TIMEOUT_S:
        with contextlib.suppress(requests.RequestException):
            response = session.post(f"{server.url}/v1/protocols", json=protocol_payload(), timeout=10)
            if response.status_code == 201:
                return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"service did not resume within {RECOVERY_TIMEOUT_S}s:\n{server.log()}")


def assert_acknowledged_writes_exist(server: Server, acknowledged: list[tuple[str, int, str]]) -> None:
    session = server.session()
    for protocol_id, version, etag in acknowledged:
        response = session.get(f"{server.url}/v1/protocols/{protocol_id}/versions/{version}", timeout=10)
        assert response.status_code == 200 and response.headers["ETag"] == etag, (protocol_id, version)


def assert_unavailable_answers_are_clean(load: WriteLoad) -> None:
    for answer in load.unavailable_bodies:
        assert answer["retry_after"] and answer["type"].startswith("application/json"), answer
        assert answer["body"]["code"] == 503
        assert "locked" not in answer["body"]["message"] and "sql" not in answer["body"]["message"].lower()


# ------------------------------------------------------------------------------ database outage


@contextlib.contextmanager
def proxied_postgres(database_url: str) -> Iterator[tuple[str, TcpProxy]]:
    url = make_url(normalize_url(database_url))
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    try:
        yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
    finally:
        proxy.close()


def test_database_outage_during_writes_loses_nothing_and_recovers(database_url: str, backend: str,
                                                                  tmp_path: Path) -> None:
    if backend == "postgres":
        with proxied_postgres(database_url) as (proxied_url, proxy), \
                gunicorn(proxied_url, tmp_path, workers=3, env={"PROTOCOLS_DB_POOL_SIZE": "2"},
                         key=mint_key(database_url)) as server, WriteLoad(server) as load:
            before_outage = load.wait_for_acknowledged(5)
            proxy.cut()  # the database vanishes, mid-conversation for pooled connections
            time.sleep(OUTAGE_S)
            proxy.restore()
            recovered_in = wait_until_writable(server)
            time.sleep(1.0)
            load.stop.set()
        faults = proxy.cuts
    else:
        with gunicorn(database_url, tmp_path, workers=3) as server, WriteLoad(server) as load:
            before_outage = load.wait_for_acknowledged(5)
            path = make_url(database_url).database
            assert path
            holder = sqlite3.connect(path, timeout=10, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            time.sleep(OUTAGE_S)
            holder.execute("ROLLBACK")
            holder.close()
            recovered_in = wait_until_writable(server)
            time.sleep(1.0)
            load.stop.set()
        faults = 1
    with gunicorn(database_url, tmp_path, workers=1) as checker:
        assert_acknowledged_writes_exist(checker, load.acknowledged)
    assert before_outage > 0 and len(load.acknowledged) > before_outage, "no load before and after"
    assert load.statuses.get(503, 0) > 0, f"the outage was not observed: {load.statuses}"
    assert set(load.statuses) <= {201, 409, 412, 503}, (load.statuses, server.log())
    assert_unavailable_answers_are_clean(load)
    assert integrity_problems(database_url) == []
    record_figures("faults", backend, database_outages=faults, outage_seconds=OUTAGE_S,
                   writes_acknowledged=len(load.acknowledged), answers_503=load.statuses.get(503, 0),
                   recovered_in_seconds=round(recovered_in, 2), partial_versions=0, lost_versions=0)


# ----------------------------------------------------------------------------- worker SIGKILL


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _worker_serving(server: Server, client_port: int) -> int | None:
    """The worker pid holding the server side of the TCP connection from ``client_port``."""
    wanted = f"{client_port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[2].rsplit(":", 1)[1] == wanted:
                    inodes.add(fields[9])
    for pid in server.worker_pids():
        with contextlib.suppress(OSError):
            if _socket_inodes(pid) & inodes:
                return pid
    return None


def _wait_until_nothing_waits_on_a_lock(database_url: str) -> None:
    engine = create_engine(normalize_url(database_url))
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                 " AND wait_event_type = 'Lock'")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(query).scalar_one() == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("the killed worker's statement still waits for the lock")
    finally:
        engine.dispose()


def test_worker_killed_mid_write_leaves_no_partial_version(database_url: str, backend: str,
                                                           tmp_path: Path) -> None:
    with gunicorn(database_url, tmp_path, workers=3, timeout_s=30) as server:
        session = server.session()
        created = session.post(f"{server.url}/v1/protocols", json=protocol_payload("killed-mid-write"), timeout=10)
        assert created.status_code == 201
        etag = created.headers["ETag"]
        host, port = server.url.removeprefix("http://").split(":")
        with lock_held(database_url, backend):  # the write stops inside the database
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.connect()
            client_port = connection.sock.getsockname()[1]
            body = json.dumps(protocol_payload("killed-mid-write", title="never stored"))
            connection.request("PUT", "/v1/protocols/killed-mid-write", body=body, headers={
                "Content-Type": "application/json", "If-Match": etag, "Authorization": f"Bearer {server.key}"})
            victim = None
            deadline = time.monotonic() + 10
            while victim is None and time.monotonic() < deadline:
                victim = _worker_serving(server, client_port)
                time.sleep(0.05)
            assert victim is not None, "could not find the worker serving the write"
            time.sleep(0.5)  # let it reach the database and wait inside its transaction
            os.kill(victim, signal.SIGKILL)
            with pytest.raises((http.client.HTTPException, OSError)):
                connection.getresponse().read()  # the client sees the connection die, no answer
            connection.close()
            # the other workers keep serving while the database is still locked
            read = session.get(f"{server.url}/v1/protocols/killed-mid-write", timeout=10)
            assert read.status_code == 200 and read.headers["ETag"] == etag
            if backend == "postgres":
                # The dead worker's statement still waits for the lock: the server must notice its
                # client is gone and abandon it (protocols.db.CLIENT_CHECK_INTERVAL_MS) before the
                # lock is released, or it would commit a version no one was told about.
                _wait_until_nothing_waits_on_a_lock(database_url)
        # A killed worker stays the master's child (a zombie) until the master reaps it, which under
        # load took longer than the steps above (a flaky failure in CI): wait for it, within a bound.
        deadline = time.monotonic() + 15
        while victim in server.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert victim not in server.worker_pids()
        versions = session.get(f"{server.url}/v1/protocols/killed-mid-write/versions", timeout=10).json()["items"]
        assert [v["version"] for v in versions] == [1]
        revised = session.put(f"{server.url}/v1/protocols/killed-mid-write",
                              json=protocol_payload("killed-mid-write", title="after the crash"),
                              headers={"If-Match": etag}, timeout=10)
        assert revised.status_code == 201 and revised.json()["version"] == 2, revised.text
        deadline = time.monotonic() + 15
        while len(server.worker_pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(server.worker_pids()) == 3, "gunicorn did not replace the killed worker"
    assert integrity_problems(database_url) == []
    record_figures("faults", backend, workers_killed_mid_write=1)


# ----------------------------------------------------------------------------- backup/restore


@pytest.fixture
def empty_database_url(blank_database_url: str) -> str:
    """A second empty, migrated database of the same kind (dropped afterwards on PostgreSQL)."""
    migrate.upgrade(blank_database_url)
    return blank_database_url


def _all_versions(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT protocol_id, version, status, etag, document FROM protocol_versions "
                "ORDER BY protocol_id, version"))]
    finally:
        engine.dispose()


def test_export_then_import_reproduces_every_version_and_etag(client: Any, make_app: Any, backend: str,
                                                              empty_database_url: str, tmp_path: Path) -> None:
    app = client.application
    if "export" not in app.cli.commands["protocols"].commands:
        pytest.fail("flask protocols export/import do not exist yet")
    for number in range(5):
        payload = protocol_payload(f"backup-{number}", title=f"Protokoll Nr. {number} — ünïcödé ✓")
        payload["dosing_ranges"][0].update(dose_min=0.35, dose_max=84.0000001)
        created = client.post("/v1/protocols", json=payload)
        assert created.status_code == 201, created.get_json()
        etag = created.headers["ETag"]
        for revision in range(number):
            status = "draft" if revision == 1 else "active"
            response = client.put(f"/v1/protocols/backup-{number}", headers={"If-Match": etag},
                                  json=payload | {"title": f"rev {revision}", "status": status,
                                                  "effective_from": "2021-06-01T00:00:00Z"})
            assert response.status_code == 201, response.get_json()
            etag = response.headers["ETag"]
        if number == 4:
            assert client.delete("/v1/protocols/backup-4", headers={"If-Match": etag}).status_code == 200

    dump = tmp_path / "backup.ndjson"
    result = app.test_cli_runner().invoke(args=["protocols", "export", str(dump)])
    assert result.exit_code == 0, result.output
    from api import create_app

    target = create_app({"PROTOCOLS_DATABASE_URL": empty_database_url, "TESTING": True})
    try:
        result = target.test_cli_runner().invoke(args=["protocols", "import", str(dump)])
        assert result.exit_code == 0, result.output
    finally:
        target.extensions["protocols_db"].dispose()

    source = _all_versions(app.config["PROTOCOLS_DATABASE_URL"])
    restored = _all_versions(empty_database_url)
    assert len(source) == 5 + 10 + 1
    assert restored == source  # every protocol, every version, byte-identical documents and ETags
    assert integrity_problems(empty_database_url) == []
    record_figures("faults", backend, backup_versions_restored=len(restored), backup_differences=0)
