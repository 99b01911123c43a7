"""flask protocols export/import: byte-exact round trip, all-or-nothing, errors by line and field."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from protocols.timeutil import format_rfc3339, utcnow
from tests.factories import protocol_payload


def _seed(client) -> list[str]:
    """Three protocols with revisions, a draft and a retirement; returns their ids."""
    ids = []
    for index in range(3):
        payload = protocol_payload(summary=f"Protocol number {index} — ünïcode kept exactly.")
        created = client.post("/v1/protocols", json=payload)
        assert created.status_code == 201, created.get_json()
        ids.append(payload["id"])
    first = ids[0]
    etag = client.get(f"/v1/protocols/{first}").headers["ETag"]
    revised = protocol_payload(first, title="Revised title", effective_from="2030-01-01T00:00:00+02:00")
    revised["dosing_ranges"][0]["dose_min"] = 56.5
    response = client.put(f"/v1/protocols/{first}", json=revised, headers={"If-Match": etag})
    assert response.status_code == 201, response.get_json()
    draft = protocol_payload(first, status="draft", change_note=None)
    response = client.put(f"/v1/protocols/{first}", json=draft, headers={"If-Match": response.headers["ETag"]})
    assert response.status_code == 201
    etag = client.get(f"/v1/protocols/{ids[1]}").headers["ETag"]
    assert client.delete(f"/v1/protocols/{ids[1]}", headers={"If-Match": etag}).status_code == 200
    return ids


def _all_versions(client, ids) -> dict[tuple[str, int], tuple[bytes, str]]:
    found = {}
    for protocol_id in ids:
        items = client.get(f"/v1/protocols/{protocol_id}/versions?page_size=100").get_json()["items"]
        for item in items:
            response = client.get(f"/v1/protocols/{protocol_id}/versions/{item['version']}")
            found[(protocol_id, item["version"])] = (response.get_data(), response.headers["ETag"])
    return found


def _fresh_database(test_databases, backend, app) -> str:
    """An empty migrated database: a new SQLite file, or the run's PostgreSQL database emptied."""
    app.extensions["protocols_db"].dispose()
    if backend == "postgres":
        test_databases.empty_postgres()
        return test_databases.pg_url
    return test_databases.sqlite_url()


def test_export_import_reproduces_every_version_exactly(app, client, make_app, test_databases, backend, tmp_path):
    ids = _seed(client)
    before = _all_versions(client, ids)
    assert len(before) == 3 + 2 + 1
    export = tmp_path / "registry.ndjson"
    result = app.test_cli_runner().invoke(args=["protocols", "export", str(export)])
    assert result.exit_code == 0, result.output
    lines = export.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 2 == len(before)
    assert {line for line in lines[:-2]} == {document for document, _ in before.values()}
    assert lines[-2] == _trailer([line.decode() for line in lines[:-2]]).encode()

    url = _fresh_database(test_databases, backend, app)
    restored = make_app(PROTOCOLS_DATABASE_URL=url)
    imported = restored.test_cli_runner().invoke(args=["protocols", "import", str(export)])
    assert imported.exit_code == 0, imported.output
    assert "imported 6 versions of 3 protocols" in imported.output
    after = _all_versions(_client(restored), ids)
    assert after == before, "bytes and ETags of every version must survive the round trip"

    again = tmp_path / "again.ndjson"
    assert restored.test_cli_runner().invoke(args=["protocols", "export", str(again)]).exit_code == 0
    assert again.read_bytes() == export.read_bytes(), "changes-feed order and bytes are preserved"


def test_a_feed_cursor_from_before_a_restore_is_refused_by_the_restored_database(
        app, client, make_app, test_databases, backend, tmp_path):
    """An import into a fresh database numbers the feed again from 1: a client that had read up to
    position N of the old database skipped the restored database's first N changes made after the
    restore (found by a probe). The restored database has a feed of its own; the old cursor is a 409
    with a link to its beginning."""
    ids = _seed(client)
    held = client.get("/v1/changes", query_string={"page_size": 2}).get_json()["next"]
    export = tmp_path / "registry.ndjson"
    assert app.test_cli_runner().invoke(args=["protocols", "export", str(export)]).exit_code == 0
    url = _fresh_database(test_databases, backend, app)
    restored = make_app(PROTOCOLS_DATABASE_URL=url)
    assert restored.test_cli_runner().invoke(args=["protocols", "import", str(export)]).exit_code == 0
    restored_client = _client(restored)
    refused = restored_client.get(held)
    assert refused.status_code == 409, refused.get_json()
    assert list(refused.get_json()["errors"]) == ["after"]
    items = restored_client.get(refused.get_json()["first"]).get_json()["items"]
    assert [item["protocol_id"] for item in items] == [ids[0], ids[1]]


def test_export_prints_a_sha256_and_import_refuses_a_copy_that_differs(
        app, client, make_app, test_databases, backend, tmp_path):
    """Found by a probe: import checks each line's form and history, not its facts, so an export whose
    84 mg was edited to 94 mg imported as fact. Export prints the file's SHA-256; import --sha256 refuses a
    copy that differs by a byte (audited) and imports one that does not."""
    import hashlib
    import re

    from protocols import audit

    _seed(client)
    export = tmp_path / "registry.ndjson"
    result = app.test_cli_runner().invoke(args=["protocols", "export", str(export)])
    assert result.exit_code == 0, result.output
    found = re.search(r"sha256 ([0-9a-f]{64})", result.output)
    assert found, result.output
    digest = found.group(1)
    assert digest == hashlib.sha256(export.read_bytes()).hexdigest()
    tampered = tmp_path / "tampered.ndjson"
    original = export.read_text(encoding="utf-8")
    edited = original.replace('"dose_max":', '"dose_max":9', 1)
    assert edited != original
    tampered.write_text(edited, encoding="utf-8")
    url = _fresh_database(test_databases, backend, app)
    restored = make_app(PROTOCOLS_DATABASE_URL=url)
    runner = restored.test_cli_runner()
    for typo in (digest[:63], digest[:-1] + "g", "XYZ"):  # a malformed digest is named as one, not a mismatch
        malformed = runner.invoke(args=["protocols", "import", str(export), "--sha256", typo])
        assert malformed.exit_code == 2 and "is not a SHA-256 digest (64 hexadecimal digits" in malformed.output
    refused = runner.invoke(args=["protocols", "import", str(tampered), "--sha256", digest])
    assert refused.exit_code == 1 and f"not {digest}" in refused.output and "nothing was imported" in refused.output
    assert _export_lines(restored, tmp_path) == []
    events = audit.query(restored.extensions["protocols_db"], limit=5, action="protocols.import").items
    assert [event.outcome for event in events] == [audit.DENIED]
    accepted = runner.invoke(args=["protocols", "import", str(export), "--sha256", digest.upper()])
    assert accepted.exit_code == 0, accepted.output
    piped = app.test_cli_runner().invoke(args=["protocols", "export", "-"])
    assert f"sha256 {digest}" in piped.output


def test_a_copy_cut_short_or_changed_after_export_is_refused_in_one_line(
        app, client, make_app, test_databases, backend, tmp_path):
    """Found by a probe: a copy of an export cut at a line boundary (``head -n 60``, lines deleted)
    imported with exit 0 and `flask protocols check` passed, the newest versions (a retirement, a dose
    correction) silently lost; only the optional --sha256 caught it. Export ends with a trailer (the
    version count and the SHA-256 of the lines before it) and import requires it: each kind of copy that
    is not the whole export is refused with one line naming the trailer's line, nothing imported."""
    from protocols import audit

    _seed(client)
    export = tmp_path / "registry.ndjson"
    assert app.test_cli_runner().invoke(args=["protocols", "export", str(export)]).exit_code == 0
    *lines, trailer = export.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 and trailer == _trailer(lines)
    edited = lines[3].replace('"dose_max":', '"dose_max":9', 1)
    newer = trailer.replace('"format":1', '"format":2')
    cases = [
        (lines[:4], 4, "_line: the file does not end with the export's trailer line"),  # head -n 4
        (lines, 6, "_line: the file does not end with the export's trailer line"),  # the trailer itself lost
        ([*lines, trailer[:-10]], 7, "_line: the file does not end with the export's trailer line"),  # cut in it
        ([*lines[:2], *lines[3:], trailer], 6, "export.versions: the trailer says the export holds 6 versions, "
                                               "but 5 lines come before it: lines were removed or added"),
        ([*lines[:4], trailer], 5, "export.versions: the trailer says the export holds 6 versions, but 4 lines"),
        ([*lines[:3], edited, *lines[4:], trailer], 7, "export.sha256: the 6 lines before the trailer have SHA-256"),
        ([*lines, newer], 7, "export.format: format 2 is not the one this release reads (1)"),
        ([*lines, '{"export":{"versions":6}}'], 7, "export: not an export trailer"),
    ]
    target = make_app(PROTOCOLS_DATABASE_URL=_fresh_database(test_databases, backend, app))
    for file_lines, line, expected in cases:
        result = _import(target, tmp_path, file_lines, trailer=False)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        problems = [text for text in result.output.splitlines() if text.startswith("line ")]
        assert problems == [problems[0]] and problems[0].startswith(f"line {line}: {expected}"), (expected, problems)
        assert "1 problem(s)" in result.output and "nothing was imported" in result.output
        assert _export_lines(target, tmp_path) == []
    assert "--sha256" in _import(target, tmp_path, lines[:4], trailer=False).output
    events = audit.query(target.extensions["protocols_db"], limit=20, action="protocols.import").items
    assert {event.outcome for event in events} == {audit.DENIED}
    # blank lines after the trailer (an editor's final newline) hold nothing: they were refused as a cut copy
    padded = tmp_path / "padded.ndjson"
    padded.write_bytes(export.read_bytes() + b"\n \r\n")
    restored = target.test_cli_runner().invoke(args=["protocols", "import", str(padded)])
    assert restored.exit_code == 0 and "imported 6 versions of 3 protocols" in restored.output, restored.output


def test_an_export_made_before_trailers_imports_only_with_its_sha256(
        app, client, make_app, test_databases, backend, tmp_path):
    """A file exported before the trailer has none, and nothing in it tells whole from cut short: import
    refuses it unless --sha256 matches the whole file (the digest export printed for it), which proves it
    complete; the same digest refuses a cut copy of it."""
    import hashlib

    _seed(client)
    lines = _export_lines(app, tmp_path)
    old = "".join(line + "\n" for line in lines).encode("utf-8")
    digest = hashlib.sha256(old).hexdigest()
    target = make_app(PROTOCOLS_DATABASE_URL=_fresh_database(test_databases, backend, app))
    refused = _import(target, tmp_path, lines, trailer=False)
    assert refused.exit_code == 1 and "line 6: _line: the file does not end with the export's trailer" in refused.output
    assert "exported before export wrote trailers has none: import it with --sha256" in refused.output
    cut = _import(target, tmp_path, lines[:4], trailer=False, args=("--sha256", digest))
    assert cut.exit_code == 1 and f"not {digest}" in cut.output
    assert _export_lines(target, tmp_path) == []
    accepted = _import(target, tmp_path, lines, trailer=False, args=("--sha256", digest))
    assert accepted.exit_code == 0 and "imported 6 versions of 3 protocols" in accepted.output, accepted.output
    assert _export_lines(target, tmp_path) == lines


def test_the_export_of_an_empty_registry_is_its_trailer_and_restores_an_empty_registry(
        app, make_app, test_databases, backend, tmp_path):
    """An empty file is refused (a truncated copy or the wrong path looked like a restore); an empty
    registry's export is no longer empty: its trailer says it holds 0 versions, and it imports as such."""
    import hashlib

    export = tmp_path / "empty.ndjson"
    result = app.test_cli_runner().invoke(args=["protocols", "export", str(export)])
    assert result.exit_code == 0 and "exported 0 versions" in result.output, result.output
    assert export.read_text(encoding="utf-8") == _trailer([]) + "\n"
    assert f"sha256 {hashlib.sha256(export.read_bytes()).hexdigest()}" in result.output
    target = make_app(PROTOCOLS_DATABASE_URL=_fresh_database(test_databases, backend, app))
    imported = target.test_cli_runner().invoke(args=["protocols", "import", str(export)])
    assert imported.exit_code == 0 and "imported 0 versions of 0 protocols" in imported.output, imported.output


def test_the_audit_filter_by_protocol_finds_what_an_import_wrote_to_it(
        app, client, make_app, test_databases, backend, tmp_path):
    """Found by a probe: an import's only audit row named the file, so `GET /v1/admin/audit?protocol=<id>`
    did not find the versions an import appended to a protocol (under any author, even catalog-loader).
    Each protocol the import writes gets a `protocol.import` row (target its id; its first and last
    version, their count and the file), written with the summary in the import's transaction."""
    from api.cli import cli_actor

    ids = _seed(client)
    lines = _export_lines(app, tmp_path)
    first = [line for line in lines if json.loads(line)["id"] == ids[0]]
    assert len(first) == 3
    target = make_app(PROTOCOLS_DATABASE_URL=_fresh_database(test_databases, backend, app))
    admin = _client(target)
    assert _import(target, tmp_path, first[:1]).exit_code == 0
    continued = _import(target, tmp_path, first[1:])  # appended to a protocol the database holds
    assert continued.exit_code == 0 and "imported 2 versions of 1 protocols" in continued.output, continued.output
    path = str(tmp_path / "import.ndjson")

    rows = admin.get("/v1/admin/audit", query_string={"protocol": ids[0]}).get_json()["items"]
    assert [(row["action"], row["outcome"], row["actor"], row["detail"]) for row in rows] == [
        ("protocol.import", "allowed", cli_actor(), {"first_version": 2, "last_version": 3, "versions": 2,
                                                     "file": path}),
        ("protocol.import", "allowed", cli_actor(), {"first_version": 1, "last_version": 1, "versions": 1,
                                                     "file": path})]
    summary = admin.get("/v1/admin/audit", query_string={"action": "protocols.import"}).get_json()["items"]
    assert [(row["target"], row["detail"]) for row in summary] == [
        (path, "imported 2 versions of 1 protocols"), (path, "imported 1 versions of 1 protocols")]
    assert summary[0]["seq"] > rows[0]["seq"]  # the summary heads its protocols' rows, newest first

    target2 = make_app(PROTOCOLS_DATABASE_URL=_fresh_database(test_databases, backend, target))
    admin2 = _client(target2)
    assert _import(target2, tmp_path, lines).exit_code == 0
    for protocol_id, versions in ((ids[0], 3), (ids[1], 2), (ids[2], 1)):
        (row,) = admin2.get("/v1/admin/audit", query_string={"protocol": protocol_id}).get_json()["items"]
        assert row["action"] == "protocol.import"
        assert row["detail"] == {"first_version": 1, "last_version": versions, "versions": versions, "file": path}


def test_an_imports_audit_rows_commit_and_roll_back_with_it(app, client, make_app, test_databases, backend,
                                                            tmp_path, monkeypatch):
    """The import's audit rows are written in its transaction: if they cannot be written, nothing is
    imported (and a refused import leaves only its denied row, no protocol.import)."""
    from protocols import audit, transfer

    _seed(client)
    lines = _export_lines(app, tmp_path)
    target = make_app(PROTOCOLS_DATABASE_URL=_fresh_database(test_databases, backend, app))
    db = target.extensions["protocols_db"]
    original = transfer._write_audit

    def written_then_failing(session, result, audited_as):
        original(session, result, audited_as)
        raise RuntimeError("the audit insert failed")

    monkeypatch.setattr(transfer, "_write_audit", written_then_failing)
    failed = _import(target, tmp_path, lines)
    assert isinstance(failed.exception, RuntimeError)
    monkeypatch.undo()
    assert _export_lines(target, tmp_path) == []
    assert audit.query(db, limit=20, action="protocol.import").items == []
    assert audit.query(db, limit=20, action="protocols.import").items == []
    assert _import(target, tmp_path, lines).exit_code == 0
    assert len(audit.query(db, limit=20, action="protocol.import").items) == 3


def _client(app):
    """A client for an app on a database that has no API key yet: mint one there (keys are not exported)."""
    from protocols import keys
    from tests.conftest import ALL_SCOPES

    app.config["TEST_API_KEY"] = keys.create_key(app.extensions["protocols_db"], "restore-test", ALL_SCOPES)[1]
    return app.test_client()


def _trailer(lines: list[str]) -> str:
    """The trailer export writes after ``lines``: their count and the SHA-256 of their bytes."""
    import hashlib

    body = "".join(line + "\n" for line in lines).encode("utf-8")
    return json.dumps({"export": {"format": 1, "versions": len(lines), "sha256": hashlib.sha256(body).hexdigest()}},
                      separators=(",", ":"))


def _export_lines(app, tmp_path) -> list[str]:
    """The exported versions, one per line (the trailer, checked, left off)."""
    path = tmp_path / "export.ndjson"
    assert app.test_cli_runner().invoke(args=["protocols", "export", str(path)]).exit_code == 0
    *lines, trailer = path.read_text(encoding="utf-8").splitlines()
    assert trailer == _trailer(lines)
    return lines


def _import(app, tmp_path, lines: list[str], *, trailer: bool = True, args: tuple[str, ...] = ()):
    """Import ``lines`` as a file, with the trailer export would write after them (``trailer``)."""
    path = tmp_path / "import.ndjson"
    path.write_text("".join(line + "\n" for line in [*lines, *([_trailer(lines)] if trailer else [])]),
                    encoding="utf-8")
    return app.test_cli_runner().invoke(args=["protocols", "import", str(path), *args])


def test_import_reports_every_bad_line_and_imports_nothing(app, client, make_app, test_databases, backend,
                                                           tmp_path):
    ids = _seed(client)
    lines = _export_lines(app, tmp_path)
    bad_unit = json.loads(lines[1])
    bad_unit["dosing_ranges"][0]["unit"] = "mcg"
    bad_code = json.loads(lines[2])
    bad_code["indications"][0]["code"] = "F3.32"
    broken = [lines[0], json.dumps(bad_unit, ensure_ascii=False, separators=(",", ":")),
              json.dumps(bad_code, ensure_ascii=False, separators=(",", ":")), "{not json", *lines[3:]]
    url = _fresh_database(test_databases, backend, app)
    target = make_app(PROTOCOLS_DATABASE_URL=url)
    result = _import(target, tmp_path, broken)
    assert result.exit_code != 0
    assert "line 2: dosing_ranges.0.unit:" in result.output
    assert "line 3: indications.0.code:" in result.output
    assert "line 4: _line: not valid JSON" in result.output
    assert "nothing was imported" in result.output
    target_client = _client(target)
    for protocol_id in ids:
        assert target_client.get(f"/v1/protocols/{protocol_id}/versions/latest").status_code == 404
    assert _export_lines(target, tmp_path) == []


def test_import_refuses_non_canonical_lines_and_gaps(app, client, tmp_path, make_app, test_databases, backend):
    _seed(client)
    lines = _export_lines(app, tmp_path)
    reformatted = json.dumps(json.loads(lines[0]), indent=1).replace("\n", " ")
    url = _fresh_database(test_databases, backend, app)
    target = make_app(PROTOCOLS_DATABASE_URL=url)
    result = _import(target, tmp_path, [reformatted, *lines[1:]])
    assert result.exit_code != 0 and "line 1: _line: not the exact stored form" in result.output
    first_id = json.loads(lines[0])["id"]
    later = [i for i, line in enumerate(lines) if json.loads(line)["id"] == first_id and i > 0]
    gap = [line for i, line in enumerate(lines) if i != later[0]]
    result = _import(target, tmp_path, gap)
    assert result.exit_code != 0 and "version: expected version 2" in result.output
    assert _export_lines(target, tmp_path) == []


def test_import_into_a_database_that_has_the_protocol_is_all_or_nothing(app, client, tmp_path):
    ids = _seed(client)
    lines = _export_lines(app, tmp_path)
    result = _import(app, tmp_path, lines)
    assert result.exit_code != 0
    assert "already has versions up to" in result.output
    assert _export_lines(app, tmp_path) == lines, "nothing was added"
    assert len(ids) == 3


def test_an_import_racing_another_writer_of_its_protocol_is_refused_by_line(app, client, tmp_path, make_app,
                                                                              test_databases, backend):
    """Found by an operations probe: two imports at once into an empty PostgreSQL database both found the
    protocol missing, and the loser died on ProtocolExists with a traceback, where SQLite gave the line-by-
    line refusal. The import now queues behind the other writer before it checks the file."""
    from protocols import versioning

    assert client.post("/v1/protocols", json=protocol_payload()).status_code == 201
    lines = _export_lines(app, tmp_path)
    target = make_app(PROTOCOLS_DATABASE_URL=_fresh_database(test_databases, backend, app))
    outcome = {}

    def run() -> None:
        outcome["result"] = _import(target, tmp_path, lines)

    importing = threading.Thread(target=run)
    with target.extensions["protocols_db"].write.begin() as session:  # the other writer, mid-import
        versioning.hold_feed_lock(session.connection())
        versioning.import_version(session, json.loads(lines[0]))
        importing.start()
        importing.join(1.0)
        assert importing.is_alive(), outcome
    importing.join(30)
    result = outcome["result"]
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit | None), result.exception
    assert "already has versions up to 1" in result.output and "Traceback" not in result.output, result.output


def test_a_file_name_that_is_not_utf8_is_imported_and_audited_and_names_no_key(app, client, tmp_path, make_app,
                                                                               test_databases, backend):
    """Found by an operations probe: importing ``exp\\xff.ndjson`` committed, then the audit row (the path
    as its target) could not be stored, and the operator got a traceback and exit code 1 for an import
    that had happened; ``flask keys revoke`` of such bytes was a traceback too."""
    import os

    assert client.post("/v1/protocols", json=protocol_payload()).status_code == 201
    lines = _export_lines(app, tmp_path)
    target = make_app(PROTOCOLS_DATABASE_URL=_fresh_database(test_databases, backend, app))
    path = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"exp\xff.ndjson"))
    with open(path, "w", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in [*lines, _trailer(lines)]))
    runner = target.test_cli_runner()
    result = runner.invoke(args=["protocols", "import", path])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert "imported 1 version" in result.output, result.output
    from protocols import audit

    events = audit.query(target.extensions["protocols_db"], limit=5, action="protocols.import").items
    assert [(e.outcome, (e.target or "").endswith("exp\\xff.ndjson")) for e in events] == [(audit.ALLOWED, True)]
    (row,) = audit.query(target.extensions["protocols_db"], limit=5, action="protocol.import").items
    assert json.loads(row.detail or "")["file"].endswith("exp\\xff.ndjson")  # the per-protocol row's copy of it
    revoked = runner.invoke(args=["keys", "revoke", "x\udcff"])
    assert revoked.exit_code == 1 and isinstance(revoked.exception, SystemExit), revoked.exception
    assert "no API key with id 'x\\udcff'" in revoked.output


@pytest.mark.parametrize("content", [b"\xff\xfe{}\n", b"[]\n", b"\n", b""])
def test_import_rejects_unreadable_lines(app, tmp_path, content):
    path = tmp_path / "bad.ndjson"
    path.write_bytes(content)
    result = app.test_cli_runner().invoke(args=["protocols", "import", str(path)])
    assert result.exit_code != 0 and "line 1: _line:" in result.output


def test_import_is_audited(app, client, tmp_path, make_app, test_databases, backend):
    from protocols import audit

    def outcomes(target_app):
        page = audit.query(target_app.extensions["protocols_db"], limit=50, action="protocols.import")
        return [event.outcome for event in page.items]

    _seed(client)
    lines = _export_lines(app, tmp_path)
    assert _import(app, tmp_path, lines).exit_code != 0  # every protocol exists already
    assert outcomes(app) == [audit.DENIED]
    url = _fresh_database(test_databases, backend, app)
    target = make_app(PROTOCOLS_DATABASE_URL=url)
    assert _import(target, tmp_path, lines).exit_code == 0
    assert outcomes(target) == [audit.ALLOWED]
    # Who ran it, as key administration records it (an adversarial probe: imports wrote plain "cli").
    (event,) = audit.query(target.extensions["protocols_db"], limit=5, action="protocols.import").items
    from api.cli import cli_actor

    assert event.actor == cli_actor()


def test_import_checks_version_metadata(app, client, tmp_path, make_app, test_databases, backend):
    _seed(client)
    lines = _export_lines(app, tmp_path)
    doc = json.loads(lines[0])
    doc["version"] = "1"
    del doc["recorded_at"]
    doc["status"] = "published"
    url = _fresh_database(test_databases, backend, app)
    target = make_app(PROTOCOLS_DATABASE_URL=url)
    result = _import(target, tmp_path, [json.dumps(doc, ensure_ascii=False, separators=(",", ":"))])
    assert result.exit_code != 0
    for expected in ("line 1: version: must be an integer", "line 1: recorded_at: must be an RFC 3339",
                     "line 1: status: Must be one of"):
        assert expected in result.output


def test_import_refuses_an_instant_not_written_in_its_stored_form(app, client, tmp_path, make_app, test_databases,
                                                                  backend):
    """Found by an adversarial probe: the same instant written with an offset or zero microseconds
    was imported (and stored as the service writes it), so the version's bytes and ETag were not the
    file's."""
    from datetime import timedelta

    from protocols.timeutil import parse_rfc3339

    _seed(client)
    lines = _export_lines(app, tmp_path)
    doc = json.loads(lines[0])
    instant = parse_rfc3339(doc["effective_from"])
    plus_two = (instant + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S") + "+02:00"
    micro = instant.strftime("%Y-%m-%dT%H:%M:%S") + ".000000Z"
    url = _fresh_database(test_databases, backend, app)
    target = make_app(PROTOCOLS_DATABASE_URL=url)
    for name, other in (("effective_from", plus_two), ("recorded_at", micro)):
        line = lines[0].replace(f'"{name}":"{doc[name]}"', f'"{name}":"{other}"')
        assert line != lines[0]
        result = _import(target, tmp_path, [line, *lines[1:]])
        assert result.exit_code != 0
        assert f"line 1: {name}: not the stored form of this instant" in result.output, result.output
        assert _export_lines(target, tmp_path) == []


def test_export_to_stdout_is_utf8_whatever_the_locale(app, client):
    """``flask protocols export -`` wrote in the locale's charset: under Latin-1 it failed part-way on
    "≤" (found by an adversarial probe); import reads UTF-8."""
    payload = protocol_payload(summary="Dose ≤ 84 mg — ünïcode")
    assert client.post("/v1/protocols", json=payload).status_code == 201
    result = app.test_cli_runner(charset="latin-1").invoke(args=["protocols", "export", "-"])
    assert result.exit_code == 0, result.output
    lines = result.stdout_bytes.decode("utf-8").splitlines()
    assert any("Dose ≤ 84 mg — ünïcode" in line for line in lines)


def test_import_refuses_what_the_service_never_writes(app, client, tmp_path, make_app, test_databases, backend):
    """Found by an adversarial probe: a 201-character author, a 101-character request id or a NUL in
    the author was imported by SQLite and a traceback on PostgreSQL; an author with a newline, a
    version recorded before the one it follows, and a document without the fields the schema fills
    in (after which the same record PUT back appended a version) were imported by both."""
    _seed(client)
    lines = _export_lines(app, tmp_path)
    first = json.loads(lines[0])
    protocol_id = first["id"]
    second_index = next(i for i, line in enumerate(lines) if i > 0 and json.loads(line)["id"] == protocol_id)
    url = _fresh_database(test_databases, backend, app)
    target = make_app(PROTOCOLS_DATABASE_URL=url)

    def changed(index: int, **fields) -> list[str]:
        doc = json.loads(lines[index])
        for name, value in fields.items():
            if value is ...:
                del doc[name]
            else:
                doc[name] = value
        return [*lines[:index], json.dumps(doc, ensure_ascii=False, separators=(",", ":")), *lines[index + 1:]]

    cases = [
        (changed(0, recorded_by="x" * 201), "line 1: recorded_by: not an author name"),
        (changed(0, recorded_by="nul\u0000author"), "line 1: recorded_by: not an author name"),
        (changed(0, recorded_by="two\nlines"), "line 1: recorded_by: not an author name"),
        (changed(0, request_id="r" * 101), "line 1: request_id: not a request id"),
        (changed(second_index, recorded_at="2000-01-01T00:00:00Z"),
         f"line {second_index + 1}: recorded_at: earlier than version 1's"),
        (changed(0, verification_notes=...), "line 1: verification_notes: not in the stored form"),
        (changed(0, recorded_at="9998-01-01T00:00:00Z"), "line 1: recorded_at: in the future"),
        # 5 minutes ahead were allowed: a write "from now" on top took effect only then (a probe)
        (changed(0, recorded_at=format_rfc3339(utcnow() + timedelta(seconds=30))),
         "line 1: recorded_at: in the future"),
    ]
    for file_lines, expected in cases:
        result = _import(target, tmp_path, file_lines)
        assert result.exit_code != 0, expected
        assert expected in result.output, (expected, result.output)
        assert "Traceback" not in result.output
        assert _export_lines(target, tmp_path) == []
    assert _import(target, tmp_path, lines).exit_code == 0  # the file as exported still imports


def test_an_import_continuing_a_stored_protocol_cannot_go_back_in_time(app, client, tmp_path):
    ids = _seed(client)
    lines = _export_lines(app, tmp_path)
    later = protocol_payload(ids[2], title="Continued")
    etag = client.get(f"/v1/protocols/{ids[2]}").headers["ETag"]
    assert client.put(f"/v1/protocols/{ids[2]}", json=later, headers={"If-Match": etag}).status_code == 201
    continued = json.loads(next(line for line in _export_lines(app, tmp_path)
                                if json.loads(line)["id"] == ids[2] and json.loads(line)["version"] == 2))
    assert lines  # the database now holds version 2; a file holding a version 3 recorded in 2000:
    continued.update(version=3, recorded_at="2000-01-01T00:00:00Z")
    result = _import(app, tmp_path, [json.dumps(continued, ensure_ascii=False, separators=(",", ":"))])
    assert result.exit_code != 0 and "line 1: recorded_at: earlier than the stored version 2" in result.output


def test_a_database_refusal_during_import_names_the_line_and_writes_nothing(app, client, tmp_path, make_app,
                                                                            test_databases, backend, monkeypatch):
    """The checks above should leave the database nothing to refuse; if one still does, the answer is
    the line and the reason (it was a traceback), and the transaction writes nothing."""
    from sqlalchemy.exc import DataError

    from protocols import versioning

    _seed(client)
    lines = _export_lines(app, tmp_path)
    url = _fresh_database(test_databases, backend, app)
    target = make_app(PROTOCOLS_DATABASE_URL=url)
    original = versioning.import_version
    calls = []

    def refuse_the_third(session, document, **kwargs):
        calls.append(document["id"])
        if len(calls) == 3:
            raise DataError("INSERT ...", {}, Exception("value too long for type character varying(64)"))
        return original(session, document, **kwargs)

    monkeypatch.setattr(versioning, "import_version", refuse_the_third)
    result = _import(target, tmp_path, lines)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "line 3: _line: the database refused it: value too long" in result.output, result.output
    monkeypatch.setattr(versioning, "import_version", original)
    assert _export_lines(target, tmp_path) == []


def test_a_failed_export_leaves_no_partial_file_and_says_why_in_one_line(tmp_path):
    """Export into a missing directory printed a traceback, and an export that failed on the database
    left PATH.partial behind (found by a probe)."""
    from api import create_app

    app = create_app({"PROTOCOLS_DATABASE_URL": f"sqlite:///{tmp_path / 'unmigrated.sqlite3'}", "TESTING": True})
    runner = app.test_cli_runner()
    missing = runner.invoke(args=["protocols", "export", str(tmp_path / "no-such-dir" / "out.ndjson")])
    assert missing.exit_code == 1 and "cannot write" in missing.output and "Traceback" not in missing.output
    exports = tmp_path / "exports"
    exports.mkdir()
    failed = runner.invoke(args=["protocols", "export", str(exports / "out.ndjson")])
    assert failed.exit_code == 1 and "flask protocols migrate" in failed.output, failed.output
    assert list(exports.iterdir()) == []
    app.extensions["protocols_db"].dispose()


def test_an_import_file_that_cannot_be_read_is_a_one_line_error(app, tmp_path):
    """A read error printed an OSError traceback (found by a probe with /proc/self/mem)."""
    result = app.test_cli_runner().invoke(args=["protocols", "import", "/proc/self/mem"])
    assert result.exit_code == 1 and "cannot read /proc/self/mem" in result.output, result.output
    assert "Traceback" not in result.output


def test_migrating_a_database_from_a_newer_release_is_a_one_line_error(make_app, db, backend):
    """A database stamped with a revision this code does not know printed alembic's traceback."""
    from sqlalchemy import text

    from protocols import migrate

    head = migrate.head_revision(str(db.engine.url))
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    try:
        result = make_app().test_cli_runner().invoke(args=["protocols", "migrate"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "migration error:" in result.output and "9999_from_the_future" in result.output
        assert "newer release" in result.output
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})


def test_an_export_to_a_fifo_or_through_a_symlink_reaches_what_it_names(app, client, tmp_path):
    """Found by an operations probe: the export renames PATH.partial over PATH, so a FIFO (a pipe to
    gzip in a backup script) was replaced by a regular file and its reader got nothing, and a symlink
    was replaced by a file with its target left as it was, while the command said 'exported'."""
    import os
    import threading

    from tests.factories import protocol_payload

    assert client.post("/v1/protocols", json=protocol_payload("exported-through")).status_code == 201
    runner = app.test_cli_runner()
    fifo = tmp_path / "backup.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    piped = runner.invoke(args=["protocols", "export", str(fifo)])
    reader.join(timeout=30)
    assert piped.exit_code == 0, piped.output
    assert fifo.is_fifo() and received and b'"exported-through"' in received[0]
    target = tmp_path / "real.ndjson"
    target.write_text("old\n")
    link = tmp_path / "latest.ndjson"
    link.symlink_to(target)
    linked = runner.invoke(args=["protocols", "export", str(link)])
    assert linked.exit_code == 0, linked.output
    assert link.is_symlink() and b'"exported-through"' in target.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.fifo", "latest.ndjson", "real.ndjson"]


def test_an_export_to_dev_stdout_through_a_pipe_and_through_a_symlink_loop(tmp_path):
    """Found by a probe of the FIFO fix: /dev/stdout resolved to the pipe's 'pipe:[N]', which names no
    file, so exporting to it from a pipeline failed; a symlink loop was a RuntimeError traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PROTOCOLS_DATABASE_URL": f"sqlite:///{tmp_path / 'export.sqlite3'}"}
    flask = [sys.executable, "-m", "flask", "--app", "api", "protocols"]
    for command in (["migrate"], ["load"]):
        subprocess.run([*flask, *command], cwd=root, env=env, check=True, capture_output=True, timeout=120)
    piped = subprocess.run([*flask, "export", "/dev/stdout"], cwd=root, env=env, capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    *lines, trailer = piped.stdout.decode().splitlines()
    assert lines and all(line.startswith('{"id":') for line in lines)  # the count goes to stderr, not the data
    assert trailer == _trailer(lines)
    assert f"exported {len(lines)} versions" in piped.stderr.decode()
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    looped = subprocess.run([*flask, "export", str(tmp_path / "loop1")], cwd=root, env=env, capture_output=True,
                            text=True, timeout=120)
    assert looped.returncode == 1 and "Traceback" not in looped.stderr
    assert looped.stderr.strip().startswith("Error: cannot write") and "symbolic links" in looped.stderr


def test_check_names_every_stored_version_todays_rules_refuse_and_changes_nothing(app, client):
    """Versions stored before a rule was added stay as they are (history is immutable); `flask protocols
    check` lists the ones today's write rules refuse, by protocol, version and field, so an operator can
    correct them by appending a version, before an import of an export refuses them."""
    from protocols import versioning
    from schemas.protocol import ProtocolCreateSchema, split_payload

    ids = _seed(client)
    runner = app.test_cli_runner()
    clean = runner.invoke(args=["protocols", "check"])
    assert clean.exit_code == 0, clean.output
    assert ("checked 6 stored versions of 3 protocols: all pass today's write rules, and every head, effective "
            "period and search term matches its versions") in clean.output

    # Stored through the domain, past the wire schema, as an older release's rules let it be.
    payload = protocol_payload("look-alike")
    _, content = split_payload(ProtocolCreateSchema().load(payload))
    content["drug"] = {**content["drug"], "name": "\u0435sketamine"}  # a Cyrillic e
    db = app.extensions["protocols_db"]
    versioning.create(db, "look-alike", content)
    before = {pid: client.get(f"/v1/protocols/{pid}").get_data() for pid in [*ids, "look-alike"]}

    refused = runner.invoke(args=["protocols", "check"])
    assert refused.exit_code == 1, refused.output
    assert "look-alike version 1: drug.name: " in refused.output
    assert "Latin, Cyrillic and Greek" in refused.output
    assert ("1 of 7 stored versions break today's write rules, and the derived rows of 0 of 4 protocols differ "
            "from their versions (above); nothing was changed") in refused.output
    assert all(line.startswith("look-alike version 1") or not line.strip() or "stored versions" in line
               for line in refused.output.splitlines())
    assert {pid: client.get(f"/v1/protocols/{pid}").get_data() for pid in before} == before


def test_check_names_derived_rows_changed_outside_the_service(app, client, backend):
    """Found by an adversarial probe: one ``UPDATE effective_periods SET version = 1`` made the listing
    and CDS Hooks judge orders against a superseded version while single reads served the current one,
    and nothing told. `flask protocols check` compares the derived rows with what the versions define."""
    from sqlalchemy import text

    ids = _seed(client)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["protocols", "check"]).exit_code == 0
    db = app.extensions["protocols_db"]
    first, second = ids[0], ids[2]
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE effective_periods SET valid_from = :t WHERE protocol_id = :p"),
                     {"t": "2001-01-01 00:00:00", "p": first})
        conn.execute(text("UPDATE search_terms SET value = 'forged' WHERE protocol_id = :p AND kind = 'drug'"),
                     {"p": second})
        conn.execute(text("UPDATE protocols SET latest_version = latest_version + 1 WHERE id = :p"), {"p": second})
    result = runner.invoke(args=["protocols", "check"])
    assert result.exit_code == 1, result.output
    assert f"{first}: effective_periods differ from what its versions define" in result.output
    assert f"{second}: search_terms of version 1 differ from what its document defines" in result.output
    assert f"{second}: its head names version 2, but its newest stored version is 1" in result.output
    assert "the derived rows of 2 of 3 protocols differ from their versions" in result.output


def test_check_names_a_changes_feed_counter_behind_the_stored_versions(app, client, backend):
    """Found by an adversarial probe: a counter moved back (migration 0011 now refuses it; here with its
    triggers off, as a table owner can) made every write fail as a lost race, and the check said
    nothing."""
    from sqlalchemy import text

    _seed(client)
    db = app.extensions["protocols_db"]
    with db.engine.begin() as conn:
        if backend == "postgres":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            conn.execute(text("DROP TRIGGER change_counter_only_advances"))
        conn.execute(text("UPDATE change_counter SET value = value - 3"))
    result = app.test_cli_runner().invoke(args=["protocols", "check"])
    assert result.exit_code == 1, result.output
    assert "(changes feed): change_counter is 3, behind the newest stored version's seq 6" in result.output
    assert ("the derived rows of 0 of 3 protocols differ from their versions, and the changes-feed counter is "
            "behind the stored versions") in result.output


SUPPORTS_PATHS = [
    ("verification_notes.7", False), ("status.foo", False), ("effective_from.x", False),
    ("drug.brand_names.3", False), ("dosing_ranges.0.instructions.text", False),
    ("verification_notes", True), ("status", True), ("effective_from", True), ("change_note", False),
    ("dosing_ranges.0.instructions", True), ("dosing_ranges.0.duration", True), ("fda_approval.approval_date", True),
]


@pytest.mark.parametrize(("path", "accepted"), SUPPORTS_PATHS, ids=[p for p, _ in SUPPORTS_PATHS])
def test_a_write_judges_a_supports_path_as_check_and_import_judge_the_stored_version(app, client, path, accepted):
    """A source's `supports` path is judged by the record that will be stored, which holds the defaults
    of what the request left out (`verification_notes: []`, `status`, a range's `instructions: null`).
    Judged by the request alone, `verification_notes.7` with no notes sent was stored, and then `flask
    protocols check` refused the version, `import` refused the whole export, and the record read back
    could not be PUT back (found by an adversarial probe)."""
    from api.cli import validate_document

    payload = protocol_payload()
    for name in ("verification_notes", "status", "effective_from"):
        payload.pop(name, None)
    for name in ("instructions", "duration"):
        payload["dosing_ranges"][0].pop(name)
    payload["sources"][0]["supports"] = [path]
    response = client.post("/v1/protocols", json=payload)
    if not accepted:
        assert response.status_code == 422, response.get_json()
        assert response.get_json()["errors"] == {
            "sources.0.supports": [f"no such field in this record: {path}"]}
        assert client.get(f"/v1/protocols/{payload['id']}/versions/latest").status_code == 404
        return
    assert response.status_code == 201, response.get_json()
    stored = client.get(f"/v1/protocols/{payload['id']}/versions/1")
    assert validate_document(stored.get_json()) == {}
    checked = app.test_cli_runner().invoke(args=["protocols", "check"])
    assert checked.exit_code == 0, checked.output
    put_back = client.put(f"/v1/protocols/{payload['id']}", data=stored.get_data(),
                          headers={"If-Match": stored.headers["ETag"], "Content-Type": "application/json"})
    assert put_back.status_code == 200, put_back.get_json()  # unchanged: nothing appended
