"""The append path's cost and shape: statements per append, and effective periods kept incrementally.

Counting statements is deterministic (timing is not, on a shared machine): the bounds below are the
round-trip budget of docs/performance.md's PUT target. On PostgreSQL a revision is one SELECT (head,
newest version, content hash) and one statement of data-modifying CTEs (head, change counter,
version, full text, search terms, periods, audit event) on the thread's autocommit connection: that
statement is its own transaction. On top of a head the process wrote itself, the statement alone
(the guessed head, checked by the statement: protocols.db.RecentHeads). Creates and retirements
run in an explicit transaction on both databases.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text

from protocols import audit, versioning
from protocols.db import Database
from protocols.errors import PreconditionFailed, RetirementUndone
from protocols.models import AuditEvent, EffectivePeriod, ProtocolVersion
from protocols.timeutil import utcnow
from tests.protocols.test_search import content_of

#: Cursor executions per create/retire inside the write transaction (BEGIN IMMEDIATE counts on SQLite;
#: since migration 0005 SQLite also writes the version's field-tagged posting lists: 12).
MAX_STATEMENTS = {"postgres": 3, "sqlite": 13}  # SQLite: a retirement reads what would undo it


@contextmanager
def counting(db: Database) -> Iterator[dict[str, list[str]]]:
    """Statements through the engine (with its commits and rollbacks) and through ``db.reads``, the
    per-thread autocommit connections (``"autocommit"``: each statement there is a transaction)."""
    seen: dict[str, list[str]] = {"statements": [], "commits": [], "rollbacks": [], "autocommit": []}
    fetch_one = db.reads.fetch_one

    def on_fetch_one(sql: str, params: Any) -> Any:
        seen["autocommit"].append(" ".join(sql.split()[:4]))
        return fetch_one(sql, params)

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen["statements"].append(" ".join(statement.split()[:4]))

    def on_commit(_conn: Any) -> None:
        seen["commits"].append("commit")

    def on_rollback(_conn: Any) -> None:
        seen["rollbacks"].append("rollback")

    event.listen(db.engine, "before_cursor_execute", on_execute)
    event.listen(db.engine, "commit", on_commit)
    event.listen(db.engine, "rollback", on_rollback)
    db.reads.fetch_one = on_fetch_one  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del db.reads.fetch_one
        event.remove(db.engine, "before_cursor_execute", on_execute)
        event.remove(db.engine, "commit", on_commit)
        event.remove(db.engine, "rollback", on_rollback)


AUDITED = versioning.WriteContext(actor="curator", request_id="req-1",
                                  audit=audit.Pending(action="protocol.revise", status_code=201, detail="{}"))


@pytest.mark.parametrize("status", ["active", "draft", "retired"])
def test_one_append_stays_within_the_statement_budget(db: Database, backend: str, status: str) -> None:
    first = versioning.create(db, "budget", content_of("budget"))
    # A retirement repeats the content it retires; the others change the title.
    content = content_of("budget") if status == "retired" else content_of("budget", title="Revised")
    with counting(db) as seen:
        stored, created = versioning.revise(db, "budget", content, if_match=[first.etag], status=status,
                                            ctx=AUDITED)
    assert created and stored.version == 2
    if backend == "postgres":
        # The head read, then one statement that writes every row (audit included) and commits alone;
        # a retirement also asks whether a later active version would undo it (as DELETE does) and
        # which content it retires, in one SELECT.
        undoing = ["SELECT (SELECT u.version FROM"] if status == "retired" else []
        assert seen["autocommit"] == ["SELECT v.protocol_id, v.version, v.status,", *undoing,
                                      "WITH writers AS (SELECT"], seen
        assert seen["statements"] == [] and seen["commits"] == [] and seen["rollbacks"] == [], seen
    else:
        assert len(seen["statements"]) <= MAX_STATEMENTS[backend], seen["statements"]
        assert seen["commits"] == ["commit"] and seen["rollbacks"] == []  # one transaction, audit included
    with db.read() as session:
        events = session.execute(select(AuditEvent.action, AuditEvent.target, AuditEvent.occurred_at,
                                        AuditEvent.request_id)).all()
    assert events == [("protocol.revise", "budget", stored.recorded_at, "req-1")]


def test_create_and_retire_stay_within_the_statement_budget(db: Database, backend: str) -> None:
    with counting(db) as seen:
        created = versioning.create(db, "budget", content_of("budget"), ctx=AUDITED)
    assert len(seen["statements"]) <= MAX_STATEMENTS[backend] and len(seen["commits"]) == 1, seen
    with counting(db) as seen:
        retired, appended = versioning.retire(db, "budget", if_match=[created.etag], ctx=AUDITED)
    assert appended and retired.status == "retired"
    assert len(seen["statements"]) <= MAX_STATEMENTS[backend] and len(seen["commits"]) == 1, seen


def test_unchanged_content_is_reads_and_no_write(db: Database, backend: str) -> None:
    """Unchanged content writes nothing. A dated repeat is answered from the head alone; a dateless one
    ("from now") also asks whether a published version starting after the newest outranks it now."""
    first = versioning.create(db, "same", content_of("same"))
    with counting(db) as seen:
        stored, created = versioning.revise(db, "same", content_of("same"), if_match=[first.etag], ctx=AUDITED,
                                            effective_from=first.effective_from)
    assert not created and stored == first
    reads = [s for s in seen["statements"] + seen["autocommit"] if not s.startswith("BEGIN")]
    assert len(reads) == 1 and reads[0].startswith("SELECT"), seen
    with counting(db) as seen:
        stored, created = versioning.revise(db, "same", content_of("same"), if_match=[first.etag], ctx=AUDITED)
    assert not created and stored == first
    reads = [s for s in seen["statements"] + seen["autocommit"] if not s.startswith("BEGIN")]
    assert len(reads) == 2 and all(read.startswith("SELECT") for read in reads), seen
    with db.read() as session:
        assert session.execute(select(AuditEvent.seq)).all() == []  # nothing changed, nothing audited


def _row_counts(db: Database) -> dict[str, int]:
    tables = ("protocol_versions", "protocol_fts", "search_terms", "effective_periods", "audit_events")
    with db.engine.connect() as conn:
        counts = {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in tables}
        counts["counter"] = int(conn.execute(text("SELECT value FROM change_counter")).scalar_one())
        return counts


def test_an_append_whose_head_moved_writes_nothing(db: Database, backend: str) -> None:
    """The head guard is what makes If-Match hold inside the database: an append prepared against
    version 1 after version 2 was committed must write no row at all (not even the audit row or a
    feed seq) and report the conflict. On PostgreSQL the append statement commits by itself, so this
    rests on every row of it depending on the guarded head; on SQLite on the transaction's rollback."""
    first = versioning.create(db, "moved", content_of("moved"))
    versioning.revise(db, "moved", content_of("moved", title="Second"), if_match=[first.etag])
    before = _row_counts(db)
    prepared = versioning._prepare("moved", 2, content_of("moved", title="Stale"), status="active",
                                   effective_from=first.effective_from, change_note=None, ctx=AUDITED,
                                   now=first.recorded_at)
    protocol_seq = _reference_protocol_seq(db, "moved")
    if backend == "postgres":
        sql = versioning._pg_raw(db.engine.dialect, (True, prepared.in_effect, prepared.audited, True))
        params = {**prepared.params, "protocol_seq": protocol_seq, "expected": 1, "expected_etag": first.etag}
        assert db.reads.fetch_one(sql, versioning._pg_append_params(prepared, params)) is None
    with pytest.raises(PreconditionFailed) as refused, versioning._write_transaction(db) as conn:
        versioning._write(conn, prepared, protocol_seq=protocol_seq, expected=1)
    assert _row_counts(db) == before
    newest = versioning.latest(db, "moved")  # every 412 names the newest version (it named none here)
    assert (refused.value.details["current_version"], refused.value.details["current_etag"]) == (2, newest.etag)


# ------------------------------------------------------------------------------ guessed heads


def test_a_revision_on_top_of_this_process_s_own_write_skips_the_head_read(db: Database, backend: str) -> None:
    """PostgreSQL: the head this process wrote is its guess for the next revision, checked by the
    append statement itself, so the next revision is that one statement (docs/performance.md, PUT).
    SQLite reads the head inside its write transaction either way."""
    first = versioning.create(db, "guess", content_of("guess"))
    second, _ = versioning.revise(db, "guess", content_of("guess", title="Second"), if_match=[first.etag])
    with counting(db) as seen:
        third, created = versioning.revise(db, "guess", content_of("guess", title="Third"),
                                           if_match=[second.etag], ctx=AUDITED)
    assert created and third.version == 3 and third == versioning.get_version(db, "guess", 3)
    assert third.recorded_at >= second.recorded_at
    if backend == "postgres":
        assert seen["autocommit"] == ["WITH writers AS (SELECT"], seen
    else:
        assert len(seen["statements"]) <= MAX_STATEMENTS[backend] and seen["commits"] == ["commit"], seen


def test_a_stale_guess_decides_nothing(make_app: Any, db: Database) -> None:
    """Two processes (two apps on one database): each one's guess goes stale when the other appends.
    Every answer must be the one a head read gives: 412 naming the newest version for a stale
    If-Match, 200 with the newest for the retry of the other's write, 201 on top of the real head."""
    other = make_app().extensions["protocols_db"]
    first = versioning.create(db, "stale", content_of("stale"))
    second, _ = versioning.revise(db, "stale", content_of("stale", title="Second"), if_match=[first.etag])
    third, _ = versioning.revise(other, "stale", content_of("stale", title="Third"), if_match=[second.etag])
    before = _row_counts(db)
    with pytest.raises(PreconditionFailed) as refused:  # this process still guesses version 2
        versioning.revise(db, "stale", content_of("stale", title="Lost update"), if_match=[second.etag])
    assert (refused.value.details["current_version"], refused.value.details["current_etag"]) == (3, third.etag)
    assert _row_counts(db) == before
    # The other process's write, retried here with the ETag it started from: already applied.
    fourth, _ = versioning.revise(other, "stale", content_of("stale", title="Fourth"), if_match=[third.etag])
    repeated, created = versioning.revise(db, "stale", content_of("stale", title="Fourth"), if_match=[third.etag])
    assert (created, repeated) == (False, fourth)
    fifth, created = versioning.revise(db, "stale", content_of("stale", title="Fifth"), if_match=[fourth.etag])
    assert created and fifth.version == 5 and fifth.recorded_at >= fourth.recorded_at
    assert [v.version for v in versioning.list_versions(db, "stale", limit=10).items] == [5, 4, 3, 2, 1]


def test_the_append_checks_the_guess_exactly(db: Database, backend: str) -> None:
    """A guess naming the newest version's number is not enough: the append also checks the protocol's
    row and the version's ETag, so a guess about other content (a database replaced under a running
    process) writes nothing, and the request is decided from the head it then reads."""
    first = versioning.create(db, "exact", content_of("exact"))
    second, _ = versioning.revise(db, "exact", content_of("exact", title="Second"), if_match=[first.etag])
    guess = db.heads.get("exact")
    if backend == "postgres":
        assert guess is not None and (guess.version.version, guess.version.etag) == (2, second.etag)
    forged = versioning._Head(replace(second, etag='"2-forged"', document=""), "0" * 64, 1 if guess is None
                              else guess.protocol_seq)
    wrong_row = versioning._Head(replace(second, document=""), "0" * 64, forged.protocol_seq + 1000)
    before = _row_counts(db)
    db.heads.put("exact", forged)
    with pytest.raises(PreconditionFailed) as refused:
        versioning.revise(db, "exact", content_of("exact", title="Forged"), if_match=[forged.version.etag])
    assert refused.value.details["current_etag"] == second.etag
    assert _row_counts(db) == before
    db.heads.put("exact", wrong_row)  # the right ETag on the wrong row: read the head, then append
    third, created = versioning.revise(db, "exact", content_of("exact", title="Third"), if_match=[second.etag])
    assert created and third.version == 3 and versioning.latest(db, "exact") == third
    protocol_seq = _reference_protocol_seq(db, "exact")
    assert _stored_periods(db, "exact") == _reference_periods(db, "exact", protocol_seq)


# ------------------------------------------------------------------------------ effective periods


def _stored_periods(db: Database, protocol_id: str) -> list[tuple[Any, ...]]:
    with db.read() as session:
        return [tuple(r) for r in session.execute(
            select(EffectivePeriod.version, EffectivePeriod.protocol_seq, EffectivePeriod.status,
                   EffectivePeriod.valid_from, EffectivePeriod.valid_until)
            .where(EffectivePeriod.protocol_id == protocol_id).order_by(EffectivePeriod.version)).all()]


def _reference_periods(db: Database, protocol_id: str, protocol_seq: int) -> list[tuple[Any, ...]]:
    with db.read() as session:
        versions = session.execute(select(ProtocolVersion.version, ProtocolVersion.status,
                                          ProtocolVersion.effective_from)
                                   .where(ProtocolVersion.protocol_id == protocol_id)).all()
    reference = versioning.reference_periods(versions, protocol_id)
    return sorted((p["version"], protocol_seq, p["status"], p["valid_from"], p["valid_until"])
                  for p in reference)


@pytest.mark.parametrize("seed", range(4))
def test_incremental_periods_equal_a_full_rebuild(db: Database, seed: int) -> None:
    """Random histories with ties, back-dated and future-dated versions, drafts and retirements:
    after every append, the stored periods equal the definition (``reference_periods``), and a full
    ``_rebuild_periods`` changes nothing."""
    rng = random.Random(seed)
    base = datetime(2025, 1, 1, 12, 0, 0)
    moments = [base + timedelta(days=d, microseconds=m) for d in (-30, -1, 0, 5, 40) for m in (0, 1)]
    protocol_id = f"periods-{seed}"
    newest = versioning.create(db, protocol_id, content_of(protocol_id), effective_from=rng.choice(moments),
                               now=base)
    protocol_seq = _reference_protocol_seq(db, protocol_id)
    for step in range(14):
        status = rng.choice(["active", "active", "draft", "retired"])
        before = _stored_periods(db, protocol_id)
        at, now = rng.choice(moments), base + timedelta(minutes=step + 1)
        try:
            if status == "retired":  # a retirement repeats the content it retires (as DELETE writes it)
                newest, created = versioning.retire(db, protocol_id, if_match=[newest.etag], effective_from=at,
                                                    now=now)
            else:
                newest, created = versioning.revise(
                    db, protocol_id, content_of(protocol_id, title=f"Step {step}"), if_match=[newest.etag],
                    status=status, effective_from=at, now=now)
        except RetirementUndone:  # a later active version would undo it: refused, nothing written
            assert status == "retired" and _stored_periods(db, protocol_id) == before
            continue
        assert created
        assert _stored_periods(db, protocol_id) == _reference_periods(db, protocol_id, protocol_seq), step
    before = _stored_periods(db, protocol_id)
    with db.write.begin() as session:
        versioning._rebuild_periods(session, protocol_id)
    assert _stored_periods(db, protocol_id) == before


def _reference_protocol_seq(db: Database, protocol_id: str) -> int:
    from protocols.models import Protocol

    with db.read() as session:
        return int(session.execute(select(Protocol.seq).where(Protocol.id == protocol_id)).scalar_one())


def test_a_put_retirement_whose_head_moved_during_its_checks_is_stale(db: Database, backend: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """PUT ``status: retired`` checks what it retires after reading the head. A revision committed in
    between changed what is in effect, so the check refused the (correct, when sent) retirement with
    409 (a version in effect after it would undo it) or 422 (other content);
    the write is stale, and the answer is the 412 of a write whose head moved. On SQLite the write
    transaction holds the lock from the head read on, so the other writer waits and is the stale one."""
    import threading

    first = versioning.create(db, "raced", content_of("raced"))
    check = versioning._check_retirement
    other: list[BaseException | versioning.StoredVersion] = []

    def revise_concurrently() -> None:
        try:
            other.append(versioning.revise(db, "raced", content_of("raced", title="Revised"),
                                           if_match=[first.etag])[0])
        except BaseException as exc:  # what the other writer got, for the assertions below
            other.append(exc)

    writer = threading.Thread(target=revise_concurrently)

    def check_after_a_concurrent_revision(prepared: Any, fetch: Any) -> None:
        if prepared.stored.status != "retired" or writer.ident is not None:
            return check(prepared, fetch)  # the other writer's own check, or a later call
        writer.start()
        if backend == "postgres":
            writer.join()  # committed between this write's head read and its check
            assert isinstance(other[0], versioning.StoredVersion)
        check(prepared, fetch)

    monkeypatch.setattr(versioning, "_check_retirement", check_after_a_concurrent_revision)
    if backend == "postgres":
        with pytest.raises(PreconditionFailed) as refused:
            versioning.revise(db, "raced", content_of("raced"), status="retired", if_match=[first.etag])
        assert versioning.effective(db, "raced").version == 2  # the revision stands, nothing retired it
        assert refused.value.details["current_version"] == 2
    else:
        retired, created = versioning.revise(db, "raced", content_of("raced"), status="retired",
                                             if_match=[first.etag])
        assert created and retired.status == "retired"
        writer.join()
        assert isinstance(other[0], PreconditionFailed)
        assert other[0].details["current_version"] == 2
    monkeypatch.undo()
    # Without a concurrent writer the refusal of content that is not in effect stays a 422.
    with pytest.raises(versioning.InvalidRecord):
        versioning.revise(db, "raced", content_of("raced", title="Never in effect"), status="retired",
                          if_match=[versioning.latest(db, "raced").etag])


def _queued_behind_a_writer(db: Database, write: Any) -> tuple[Any, datetime]:
    """Runs ``write()`` in a thread while this thread holds the writers' lock (a long write transaction:
    an import, a catalog load, a slow retirement); returns its result and the instant the lock was
    released. The write is checked to have been waiting when the lock was released."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(write()))
    with versioning._write_transaction(db) as conn:
        versioning.hold_feed_lock(conn)
        worker.start()
        worker.join(timeout=(versioning.QUEUED_LIMIT_MS / 1000) * 3)  # well past the one-statement bound
        assert worker.is_alive(), "the write did not wait for the writers' lock"
        released = utcnow()
    worker.join(timeout=30)
    assert result, "the write did not finish after the lock was released"
    return result[0], released


def test_a_write_that_queued_behind_another_is_recorded_when_its_turn_came(db: Database) -> None:
    """Found by a probe: ``recorded_at`` was read when a request arrived, before it queued behind the
    writer ahead of it. A revision that waited seconds was published over FHIR (``lastUpdated`` is its
    recording time) at an instant pollers had already read past, so they never saw it; one that
    cancelled a scheduled version withdrew it after it had been served as published. Every write reads
    the clock once it holds the writers' lock: creates, retirements and revisions, on both databases
    (PostgreSQL's one-statement revision gives up past ``QUEUED_LIMIT_MS`` and is made again in a
    transaction that queues first)."""
    created, released = _queued_behind_a_writer(db, lambda: versioning.create(db, "queued", content_of("queued")))
    assert created.recorded_at >= released and created.effective_from == created.recorded_at
    for title in ("Revised once", "Revised twice"):  # the second on top of this process's own head (guessed)
        (revised, appended), released = _queued_behind_a_writer(db, lambda title=title: versioning.revise(
            db, "queued", content_of("queued", title=title), if_match=[versioning.latest(db, "queued").etag]))
        assert appended and revised.recorded_at >= released and revised.effective_from == revised.recorded_at
    (retired, appended), released = _queued_behind_a_writer(db, lambda: versioning.retire(
        db, "queued", if_match=[versioning.latest(db, "queued").etag]))
    assert appended and retired.recorded_at >= released and retired.effective_from == retired.recorded_at
    # The revisions that gave up wrote nothing: four versions, and the changes feed has no gap.
    with db.read() as session:
        rows = session.execute(select(ProtocolVersion.version, ProtocolVersion.seq)
                               .order_by(ProtocolVersion.seq)).all()
    assert [version for version, _ in rows] == [1, 2, 3, 4]
    assert [seq for _, seq in rows] == list(range(rows[0][1], rows[0][1] + 4))


@pytest.mark.postgres_only
def test_a_revision_and_a_write_transaction_take_the_writers_lock_in_one_order(db: Database) -> None:
    """A write transaction (retirement, create, import) takes the change counter's lock first and then
    updates the protocol's head; the one-statement revision updated the head first and then took the
    counter. A DELETE and a PUT of one protocol at once deadlocked (PostgreSQL aborted one after its
    1 s ``deadlock_timeout``: a 503, and every other writer held up meanwhile; found by an adversarial
    probe). Here the transaction holds the counter while the revision is sent, then updates the head
    the revision would hold: both must complete."""
    first = versioning.create(db, "ordered", content_of("ordered"))
    worker, result = _revision_thread(db, "ordered", if_match=first.etag)
    with versioning._write_transaction(db) as conn:
        versioning.hold_feed_lock(conn)
        worker.start()
        deadline = utcnow() + timedelta(seconds=10)
        waiting = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                       " AND wait_event_type = 'Lock' AND query LIKE 'WITH %'")
        while conn.execute(text("SELECT pg_stat_clear_snapshot()")) and conn.execute(waiting).scalar() == 0:
            assert worker.is_alive() and utcnow() < deadline, ("the revision did not queue for the writers' lock",
                                                               result)
        # What the transaction's own append does next: lock the head row (its guarded UPDATE).
        conn.execute(text("SELECT 1 FROM protocols WHERE id = 'ordered' FOR UPDATE"))
    worker.join(timeout=30)
    assert len(result) == 1 and isinstance(result[0], tuple), result
    assert result[0][0].version == 2


def _revision_thread(db: Database, protocol_id: str, *, if_match: str) -> tuple[threading.Thread, list[Any]]:
    """A thread (not started) revising ``protocol_id``, and the list its result or exception lands in."""
    result: list[Any] = []

    def revise() -> None:
        try:
            result.append(versioning.revise(db, protocol_id, content_of(protocol_id, title="Revised"),
                                            if_match=[if_match]))
        except BaseException as exc:  # for the test's assertions
            result.append(exc)

    return threading.Thread(target=revise), result


@pytest.mark.postgres_only
def test_a_stale_guess_fails_without_queueing_for_the_writers_lock(db: Database) -> None:
    """The one statement asks for the writers' lock only while the head is the one it expects: a guessed
    head another worker has moved past (protocols.db.RecentHeads) queued behind every writer and only
    then wrote nothing (found in review). Here another transaction holds the writers' lock throughout,
    and the stale revision is still refused (412) at once."""
    first = versioning.create(db, "stale-guess", content_of("stale-guess"))
    versioning.revise(db, "stale-guess", content_of("stale-guess", title="Second"), if_match=[first.etag])
    seq = int(db.reads.fetch_one("SELECT seq FROM protocols WHERE id = %s", ("stale-guess",))[0])
    db.heads.put("stale-guess", versioning._Head(  # this process's guess, stale: version 1
        replace(first, document=""), versioning.record.content_hash(content_of("stale-guess")), seq))
    worker, result = _revision_thread(db, "stale-guess", if_match=first.etag)
    with versioning._write_transaction(db) as conn:
        versioning.hold_feed_lock(conn)
        worker.start()
        worker.join(timeout=3)  # well under the 5 s lock timeout the old statement waited out
        assert not worker.is_alive(), "the stale revision queued for the writers' lock"
    assert len(result) == 1 and isinstance(result[0], PreconditionFailed), result
    assert result[0].details["current_version"] == 2
