"""``GET /v1/changes``: every version in commit order, polled incrementally, never skipping a change.

The concurrency tests use real threads with their own connections. On PostgreSQL, writer T1 starts
first and is held open while writer T2 commits; the feed must show T2 first and T1 after it, and a
reader that already consumed T2 must still receive T1. On SQLite writers are serialized by
``BEGIN IMMEDIATE``, so T2 simply waits; the same reader invariants are checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text

from protocols import versioning
from protocols.db import Database
from protocols.models import Protocol, ProtocolVersion
from protocols.paging import encode_cursor
from tests.protocols.test_search import content_of

WAIT_SECONDS = 30  # upper bound for a thread to reach a sync point; never a timing assertion


class FeedReader:
    """An integration that stores the `next` URL and polls it, checking it never sees a gap."""

    def __init__(self, client: FlaskClient, page_size: int = 2) -> None:
        self.client = client
        self.url = f"/v1/changes?page_size={page_size}"
        self.consumed: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = []
        while True:
            response = self.client.get(self.url)
            assert response.status_code == 200, response.get_json()
            body = response.get_json()
            assert body["next"] and response.headers["Link"] == f'<{body["next"]}>; rel="next"'
            new += body["items"]
            self.url = body["next"]
            if not body["has_more"]:
                break
        seqs = [item["seq"] for item in self.consumed + new]
        assert seqs == list(range(1, len(seqs) + 1)), f"gap or repeat in the feed: {seqs}"
        self.consumed += new
        return new


def versions_of(items: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(item["protocol_id"], item["version"]) for item in items]


# ------------------------------------------------------------------------------------ basics


def test_feed_lists_every_version_in_commit_order(client: FlaskClient, db: Database) -> None:
    a = versioning.create(db, "feed-a", content_of("feed-a"))
    b = versioning.create(db, "feed-b", content_of("feed-b"))
    a2, _ = versioning.revise(db, "feed-a", content_of("feed-a", title="Revised"), if_match=[a.etag])
    versioning.retire(db, "feed-b", if_match=[b.etag])
    versioning.revise(db, "feed-a", content_of("feed-a", title="Draft"), if_match=[a2.etag], status="draft")

    items = FeedReader(client, page_size=100).poll()
    assert [(i["protocol_id"], i["version"], i["action"], i["status"]) for i in items] == [
        ("feed-a", 1, "created", "active"),
        ("feed-b", 1, "created", "active"),
        ("feed-a", 2, "revised", "active"),
        ("feed-b", 2, "retired", "retired"),
        ("feed-a", 3, "revised", "draft"),
    ]
    first = items[0]
    assert set(first) == {"seq", "action", "protocol_id", "version", "status", "effective_from", "recorded_at",
                          "recorded_by", "change_note", "etag", "href"}
    served = client.get(first["href"])
    assert served.status_code == 200 and served.headers["ETag"] == first["etag"] == a.etag
    assert first["recorded_at"].endswith("Z")


def test_polling_next_returns_only_new_changes(client: FlaskClient, db: Database) -> None:
    reader = FeedReader(client)
    assert reader.poll() == []
    end = reader.url
    assert client.get(end).get_json()["items"] == []  # an empty page keeps its position
    assert client.get(end).get_json()["next"] == end
    versioning.create(db, "feed-c", content_of("feed-c"))
    for index in range(3):
        pid = f"feed-n{index}"
        versioning.create(db, pid, content_of(pid))
    assert versions_of(reader.poll()) == [("feed-c", 1), ("feed-n0", 1), ("feed-n1", 1), ("feed-n2", 1)]
    assert reader.poll() == []


def test_feed_can_follow_one_protocol(client: FlaskClient, db: Database) -> None:
    a = versioning.create(db, "feed-a", content_of("feed-a"))
    versioning.create(db, "feed-b", content_of("feed-b"))
    versioning.retire(db, "feed-a", if_match=[a.etag])
    body = client.get("/v1/changes", query_string={"protocol_id": "feed-a"}).get_json()
    assert versions_of(body["items"]) == [("feed-a", 1), ("feed-a", 2)]
    assert "protocol_id=feed-a" in body["next"]


@pytest.mark.parametrize(("params", "field"), [
    ({"after": "garbage"}, "after"),
    ({"after": "eyJ0IjoicHJvdG9jb2xzIiwiayI6MSwiZCI6Im4ifQ"}, "after"),  # a /v1/protocols cursor
    ({"after": encode_cursor("changes", 2**70, "n")}, "after"),  # would overflow a BIGINT
    ({"after": encode_cursor("changes", -1, "n")}, "after"),
    ({"after": encode_cursor("changes", 5, "p")}, "after"),  # the feed only moves forward
    ({"page_size": "101"}, "page_size"),
    ({"cursor": "x"}, "cursor"),
    ({"protocol_id": "Not A Slug"}, "protocol_id"),
])
def test_bad_feed_parameters_are_422(client: FlaskClient, params: dict[str, str], field: str) -> None:
    response = client.get("/v1/changes", query_string=params)
    assert response.status_code == 422
    assert field in response.get_json()["errors"]


# ------------------------------------------------------------------- positions of another feed


def _next_after(client: FlaskClient, url: str) -> str:
    body = client.get(url).get_json()
    return str(body["next"])


def test_a_position_beyond_the_newest_change_is_409_with_a_first_link(client: FlaskClient, db: Database) -> None:
    """The feed accepted any position up to 2**63 and answered an empty page: a client holding one
    (from a database restored from an older copy, or edited) skipped every version numbered up to it,
    silently (found by a probe). Cursors without a feed id, as issued before feeds were named, still
    page when the position was issued here."""
    for pid in ("beyond-a", "beyond-b"):
        versioning.create(db, pid, content_of(pid))
    beyond = client.get("/v1/changes", query_string={"after": encode_cursor("changes", 3, "n"), "page_size": 5})
    assert beyond.status_code == 409
    body = beyond.get_json()
    assert list(body["errors"]) == ["after"] and "beyond the newest change (2)" in body["errors"]["after"][0]
    assert body["first"].endswith("/v1/changes?page_size=5")
    restart = client.get(body["first"]).get_json()
    assert versions_of(restart["items"]) == [("beyond-a", 1), ("beyond-b", 1)]
    old_style = client.get("/v1/changes", query_string={"after": encode_cursor("changes", 1, "n")})
    assert old_style.status_code == 200 and versions_of(old_style.get_json()["items"]) == [("beyond-b", 1)]
    at_the_end = client.get("/v1/changes", query_string={"after": encode_cursor("changes", 2, "n")})
    assert at_the_end.status_code == 200 and at_the_end.get_json()["items"] == []


def test_a_cursor_names_its_feed_and_a_new_feed_id_refuses_earlier_cursors(
        app: Any, client: FlaskClient, db: Database) -> None:
    """After a database is restored from a copy, positions clients took after the copy was made number
    other versions: `flask protocols new-feed-id` makes every earlier cursor a 409, so no client skips
    them. Audited."""
    from protocols import audit

    versioning.create(db, "feed-id-a", content_of("feed-id-a"))
    held = _next_after(client, "/v1/changes")
    versioning.create(db, "feed-id-b", content_of("feed-id-b"))
    assert versions_of(client.get(held).get_json()["items"]) == [("feed-id-b", 1)]
    result = app.test_cli_runner().invoke(args=["protocols", "new-feed-id"])
    assert result.exit_code == 0 and "cursors issued before are refused" in result.output, result.output
    refused = client.get(held)
    assert refused.status_code == 409
    assert "another changes feed" in refused.get_json()["errors"]["after"][0]
    assert versions_of(client.get(refused.get_json()["first"]).get_json()["items"]) == [
        ("feed-id-a", 1), ("feed-id-b", 1)]
    fresh = _next_after(client, "/v1/changes")
    assert client.get(fresh).status_code == 200
    events = audit.query(db, limit=10, action="changes.new_feed_id").items
    assert [event.outcome for event in events] == [audit.ALLOWED]


def test_a_cursor_with_a_field_the_service_never_writes_is_422(client: FlaskClient, db: Database) -> None:
    versioning.create(db, "feed-edit", content_of("feed-edit"))
    good = client.get("/v1/changes").get_json()["next"].split("after=")[1]
    assert client.get("/v1/changes", query_string={"after": good}).status_code == 200
    for edited in (encode_cursor("changes", 1, "n", x="1"), encode_cursor("changes", 1, "n", f=7)):  # type: ignore[arg-type]
        response = client.get("/v1/changes", query_string={"after": edited})
        assert response.status_code == 422 and list(response.get_json()["errors"]) == ["after"], edited


# ------------------------------------------------------------------------------- concurrency


class Writer(threading.Thread):
    """Runs one service call on its own thread (and so its own pooled connection)."""

    def __init__(self, name: str, call: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.call = call
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.call()
        except BaseException as exc:  # re-raised in the test thread by finish()
            self.error = exc

    def finish(self) -> None:
        self.join(WAIT_SECONDS)
        assert not self.is_alive(), f"{self.name} did not finish"
        if self.error is not None:
            raise self.error


class Gate:
    """Holds writer ``T1`` (a revision of ``feed-a``) inside its write, before or after it takes its
    feed seq, until :meth:`open`.

    SQLite: T1's transaction calls ``versioning._next_seq``, which is wrapped. PostgreSQL: T1's
    revision is one statement (writers' lock, head, counter, rows). Before the seq: T1 has read its
    clock and is held before it sends that statement (``db.reads.fetch_one`` is wrapped), where a
    writer that reads its clock later can still take the writers' lock first. (A database lock on
    feed-a's ``protocols`` row held T1 there until the statement took the writers' lock before the
    head, which every write transaction also does: then T1 sat on the writers' lock, as no writer
    does, and T2 could not commit.) After the seq: a trigger on ``protocol_versions`` makes T1's
    version insert (which runs after the counter ``UPDATE``) wait for an advisory lock this test
    holds, so T1 sits on its uncommitted seq and the counter lock."""

    ADVISORY_KEY = 4_242_001

    def __init__(self, monkeypatch: pytest.MonkeyPatch, db: Database, backend: str, *, after_seq: bool) -> None:
        self.db, self.backend, self.after_seq = db, backend, after_seq
        self.reached = threading.Event()
        self.opened = threading.Event()
        self.holder: Any = None
        if backend == "postgres" and after_seq:
            self._hold_in_postgres()
            return
        if backend == "postgres":
            send = db.reads.fetch_one

            def held_before_sending(sql: str, params: Any) -> Any:
                if threading.current_thread().name == "T1" and sql.startswith("WITH writers"):
                    self._hold()
                return send(sql, params)

            monkeypatch.setattr(db.reads, "fetch_one", held_before_sending)
            return
        original = versioning._next_seq

        def gated(session: Any) -> int:
            if threading.current_thread().name != "T1":
                return original(session)
            if not after_seq:
                self._hold()
            value = original(session)
            if after_seq:
                self._hold()
            return value

        monkeypatch.setattr(versioning, "_next_seq", gated)

    def _hold(self) -> None:
        self.reached.set()
        assert self.opened.wait(WAIT_SECONDS), "gate never opened"

    def _hold_in_postgres(self) -> None:
        self.holder = self.db.engine.connect()
        if self.after_seq:  # the only database gate left (see the class docstring)
            with self.db.engine.begin() as conn:
                conn.execute(text(
                    "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                    f" IF NEW.protocol_id = 'feed-a' THEN PERFORM pg_advisory_xact_lock_shared({self.ADVISORY_KEY});"
                    " END IF; RETURN NEW; END $$"))
                conn.execute(text("CREATE TRIGGER test_gate BEFORE INSERT ON protocol_versions"
                                  " FOR EACH ROW EXECUTE FUNCTION test_gate()"))
            self.holder.execute(text(f"SELECT pg_advisory_lock({self.ADVISORY_KEY})"))
            self.holder.commit()

    def wait_reached(self) -> None:
        if self.backend == "postgres" and self.after_seq:
            _wait_for_lock_waiters(self.db, 1)
            return
        assert self.reached.wait(WAIT_SECONDS), "T1 never reached the gate"

    def open(self) -> None:
        self.opened.set()
        if self.holder is None:
            return
        holder, self.holder = self.holder, None
        holder.execute(text(f"SELECT pg_advisory_unlock({self.ADVISORY_KEY})"))
        holder.commit()
        holder.close()

    def remove(self) -> None:
        self.open()
        if self.backend == "postgres" and self.after_seq:
            with self.db.engine.begin() as conn:
                conn.execute(text("DROP TRIGGER IF EXISTS test_gate ON protocol_versions"))
                conn.execute(text("DROP FUNCTION IF EXISTS test_gate()"))


@pytest.fixture
def opened_gates() -> Iterator[list[Gate]]:
    gates: list[Gate] = []
    yield gates
    for gate in gates:  # never leave a writer blocked (or a test trigger behind), even on failure
        gate.remove()


def _wait_for_lock_waiters(db: Database, count: int) -> None:
    """PostgreSQL: block until ``count`` backends of this database wait on a lock."""
    deadline = time.monotonic() + WAIT_SECONDS
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND wait_event_type = 'Lock'")
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            if conn.execute(query).scalar_one() >= count:
                return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} writers ever waited on a lock")


def test_transaction_started_first_but_committed_last_is_not_missed(
        client: FlaskClient, db: Database, backend: str, monkeypatch: pytest.MonkeyPatch,
        opened_gates: list[Gate]) -> None:
    a = versioning.create(db, "feed-a", content_of("feed-a"))
    reader = FeedReader(client)
    assert versions_of(reader.poll()) == [("feed-a", 1)]

    gate = Gate(monkeypatch, db, backend, after_seq=False)
    opened_gates.append(gate)
    t1 = Writer("T1", lambda: versioning.revise(db, "feed-a", content_of("feed-a", title="T1 edit"),
                                                if_match=[a.etag]))
    t1.start()
    # T1 has read its clock and has not taken a feed seq yet: on SQLite inside its transaction; on
    # PostgreSQL before it sends its one statement, which takes the writers' lock first (no writer holds
    # a transaction open there without that lock), so what this shows there is that the feed follows
    # the seq (commit order), not recorded_at.
    gate.wait_reached()
    t2 = Writer("T2", lambda: versioning.create(db, "feed-b", content_of("feed-b")))
    t2.start()
    if backend == "postgres":
        t2.finish()  # T2 started after T1 and commits before it
        assert versions_of(reader.poll()) == [("feed-b", 1)]
    gate.open()
    t1.finish()
    t2.finish()

    later = reader.poll()
    if backend == "postgres":
        assert versions_of(later) == [("feed-a", 2)]  # committed after the reader moved past feed-b
        t1_item, t2_item = reader.consumed[2], reader.consumed[1]
        assert t1_item["recorded_at"] < t2_item["recorded_at"]  # started first ...
        assert t1_item["seq"] > t2_item["seq"]  # ... committed last: seq follows commit order
    else:
        assert versions_of(later) == [("feed-a", 2), ("feed-b", 1)]
    _assert_reader_saw_everything(db, reader)


def test_a_pending_seq_is_never_exposed_as_a_gap(
        client: FlaskClient, db: Database, backend: str, monkeypatch: pytest.MonkeyPatch,
        opened_gates: list[Gate]) -> None:
    a = versioning.create(db, "feed-a", content_of("feed-a"))
    reader = FeedReader(client)
    reader.poll()

    gate = Gate(monkeypatch, db, backend, after_seq=True)
    opened_gates.append(gate)
    t1 = Writer("T1", lambda: versioning.revise(db, "feed-a", content_of("feed-a", title="T1 edit"),
                                                if_match=[a.etag]))
    t1.start()
    gate.wait_reached()  # T1 holds seq 2 (and the counter lock), uncommitted
    t2 = Writer("T2", lambda: versioning.create(db, "feed-b", content_of("feed-b")))
    t2.start()
    if backend == "postgres":
        _wait_for_lock_waiters(db, 2)  # T1 on the gate, T2 queued behind T1 for the next seq
    assert reader.poll() == []  # neither seq 2 (pending) nor anything after it is visible
    gate.open()
    t1.finish()
    t2.finish()
    assert versions_of(reader.poll()) == [("feed-a", 2), ("feed-b", 1)]
    _assert_reader_saw_everything(db, reader)


def _assert_reader_saw_everything(db: Database, reader: FeedReader) -> None:
    with db.read() as session:
        stored = session.execute(select(ProtocolVersion.seq, ProtocolVersion.protocol_id, ProtocolVersion.version)
                                 .order_by(ProtocolVersion.seq)).all()
    assert [(i["seq"], i["protocol_id"], i["version"]) for i in reader.consumed] == [tuple(r) for r in stored]


def test_creates_take_their_listing_position_in_feed_order(
        db: Database, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Export writes versions in feed order and import numbers protocols as they arrive, so the
    listing (by protocol seq) survives a restore only if creates take their protocol seq in feed
    order. T1 is held inside its create before its protocols row is inserted (PostgreSQL: a trigger
    waits for an advisory lock this test holds; SQLite: a wrapped insert); T2 creates meanwhile.
    On PostgreSQL T1 took its protocol seq from the sequence first and T2 committed (and took its feed
    position) first: the restored listing swapped them. Now T2 must wait for T1. (On SQLite BEGIN
    IMMEDIATE already runs one writer at a time: that leg holds the invariant, the PostgreSQL leg
    guards the fix.)"""
    key = 4_242_002
    holder = db.engine.connect()
    release = threading.Event()
    if backend == "postgres":
        with db.engine.begin() as conn:
            conn.execute(text("CREATE FUNCTION test_create_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                              f" IF NEW.id = 'order-a' THEN PERFORM pg_advisory_xact_lock_shared({key});"
                              " END IF; RETURN NEW; END $$"))
            conn.execute(text("CREATE TRIGGER test_create_gate BEFORE INSERT ON protocols"
                              " FOR EACH ROW EXECUTE FUNCTION test_create_gate()"))
        holder.execute(text(f"SELECT pg_advisory_lock({key})"))
        holder.commit()
    else:
        reached = threading.Event()
        original = versioning._insert_protocol

        def gated(conn: Any, protocol_id: str, created_at: Any) -> int | None:
            if protocol_id == "order-a":
                reached.set()
                assert release.wait(WAIT_SECONDS), "never released"
            return original(conn, protocol_id, created_at)

        monkeypatch.setattr(versioning, "_insert_protocol", gated)
    try:
        t1 = Writer("T1", lambda: versioning.create(db, "order-a", content_of("order-a")))
        t1.start()
        if backend == "postgres":
            _wait_for_lock_waiters(db, 1)
        else:
            assert reached.wait(WAIT_SECONDS)
        t2 = Writer("T2", lambda: versioning.create(db, "order-b", content_of("order-b")))
        t2.start()
        if backend == "postgres":
            _wait_for_lock_waiters(db, 2)  # T2 waits for T1's feed position before taking its own
        release.set()
        if backend == "postgres":
            holder.execute(text(f"SELECT pg_advisory_unlock({key})"))
            holder.commit()
        t1.finish()
        t2.finish()
    finally:
        release.set()
        holder.close()
        if backend == "postgres":
            with db.engine.begin() as conn:
                conn.execute(text("DROP TRIGGER IF EXISTS test_create_gate ON protocols"))
                conn.execute(text("DROP FUNCTION IF EXISTS test_create_gate()"))
    with db.read() as session:
        listing = session.scalars(select(Protocol.id).order_by(Protocol.seq)).all()
        feed = session.scalars(select(ProtocolVersion.protocol_id).where(ProtocolVersion.version == 1)
                               .order_by(ProtocolVersion.seq)).all()
    assert listing == feed == ["order-a", "order-b"]
