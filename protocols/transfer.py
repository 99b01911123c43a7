"""Export and import of the whole registry as NDJSON: one stored version document per line.

Why NDJSON of the stored documents: a version's document is the exact byte string the API serves
and its ETag fingerprints those bytes. Writing the documents as they are, in changes-feed order,
makes the export a faithful backup; importing them through ``versioning.import_version`` in file
order recreates every version with the same bytes, the same ETag and the same relative feed order.

Import is all-or-nothing. The whole file is checked first, without touching the database: every
line must be strict JSON, carry the version metadata, pass the wire schema (the caller injects it,
since ``protocols`` does not depend on ``schemas``), be in canonical form (rebuilding it yields the
same bytes, so the ETag will match) and continue its protocol's history without gaps. Only a file
with no problem at all is written, in one transaction, which also refuses histories that clash with
what is already stored. Every problem is reported with its line number and field path.

Every export ends with a trailer line, ``{"export":{"format":1,"versions":N,"sha256":"<hex>"}}``: how
many versions the file holds and the SHA-256 of every byte before the trailer. Import requires it. A
copy cut at a line boundary (``head -n 60``, lines deleted) was a file of valid versions and imported
with exit 0, its newest versions (a retirement, a dose correction) silently lost; nothing in the file
said how many it should hold (found by a probe). The trailer cannot be taken for a version: a version
document has an ``id`` and no ``export`` field. A file exported before the trailer existed has none:
it is imported only when the caller checked the whole file against the SHA-256 export printed for it,
which proves the copy complete (``digest_checked``).

The import writes its audit rows in its own transaction: one per protocol it wrote (target the
protocol id, so the per-protocol audit filter finds it) and a summary naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from sqlalchemy import insert, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from protocols import audit, keys, record, versioning
from protocols.db import Database
from protocols.models import AuditEvent, Protocol, ProtocolVersion
from protocols.strict_json import InvalidJSON, strict_loads
from protocols.timeutil import format_rfc3339, parse_rfc3339, utcnow

#: Validates one line's record (metadata + content) with the wire schema; returns errors by
#: dotted field path, empty when valid.
ContentValidator = Callable[[dict[str, Any]], Mapping[str, list[str]]]

EXPORT_BATCH = 500
MAX_LINE_BYTES = 1_000_000

#: The trailer's one field (a version document never has it) and the format this release writes and reads.
TRAILER_FIELD = "export"
EXPORT_FORMAT = 1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

#: A file without a trailer: cut short, or exported before trailers existed (then --sha256 proves it whole).
NO_TRAILER = ("the file does not end with the export's trailer line ({\"export\":{\"format\":1,\"versions\":N,"
              "\"sha256\":\"<hex>\"}}): it may be a copy cut short, which would restore an older history without a "
              "word. A file exported before export wrote trailers has none: import it with --sha256 and the digest "
              "export printed for it, which proves the copy complete")

#: A file's name in an import's per-protocol audit rows is cut to this many characters (the detail column holds
#: 4,000, and a cut JSON text would not read back as JSON).
AUDIT_FILE_CHARS = 500


@dataclass(frozen=True)
class LineError:
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.path}: {self.message}"


class ImportRejected(Exception):
    """The file was not imported; ``errors`` lists every problem found."""

    def __init__(self, errors: list[LineError]) -> None:
        super().__init__(f"{len(errors)} problem(s); nothing was imported")
        self.errors = errors


@dataclass
class ImportResult:
    versions: int = 0
    #: protocol id -> (first, last) version written, in the order the file first names each protocol
    protocols: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportAudit:
    """Who imports which file: the import's audit rows, written in its transaction."""

    actor: str | None
    source: str


@dataclass(frozen=True)
class Trailer:
    versions: int
    sha256: str


@dataclass(frozen=True)
class _Line:
    number: int
    document: dict[str, Any]
    protocol_id: str
    version: int


# ------------------------------------------------------------------------------------ export


def iter_documents(db: Database) -> Iterator[str]:
    """Every stored version document in changes-feed order (one consistent SELECT)."""
    with db.read() as session:
        rows = session.execute(
            select(ProtocolVersion.document).order_by(ProtocolVersion.seq)
            .execution_options(yield_per=EXPORT_BATCH))
        for (document,) in rows:
            yield document


@dataclass(frozen=True)
class StoredProblem:
    """One field of one stored version that today's write rules refuse."""

    protocol_id: str
    version: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.protocol_id} version {self.version}: {self.path}: {self.message}"


def check_stored(db: Database, validate: ContentValidator, report: Callable[[StoredProblem], None]) -> int:
    """Check every stored version with the rules an import applies (its metadata and ``validate``, the
    wire schema), ``report`` each problem as it is found, and return how many versions were checked.

    Why: rules are added over time (look-alike letters in drug names, fractions past microseconds),
    and versions stored before a rule are never rewritten (history is immutable), so an operator
    could not learn which stored versions today's rules refuse until an import of an export
    refused them. Read-only: a protocol is corrected by appending a version, and each version is
    checked on its own, so the whole registry need not fit in memory."""
    checked = 0
    for document in iter_documents(db):
        checked += 1
        doc = strict_loads(document)
        for error in _record_errors(checked, doc, validate):
            report(StoredProblem(str(doc.get("id")), int(doc.get("version") or 0), error.path, error.message))
    return checked


def trailer_line(versions: int, sha256: str) -> str:
    """The export's last line: how many versions come before it and the SHA-256 of their bytes."""
    return json.dumps({TRAILER_FIELD: {"format": EXPORT_FORMAT, "versions": versions, "sha256": sha256}},
                      separators=(",", ":"))


def export_ndjson(db: Database, out: IO[str], digest: Any = None) -> int:
    """Write every version, one document per line, exactly as stored, then the trailer (module
    docstring); return the number of versions.

    ``digest`` (a ``hashlib`` object) is fed the file's bytes as written, trailer included: the SHA-256
    an operator keeps with a backup and gives to import (``--sha256``), which then refuses a copy that
    differs by a byte. Import checks each line's form and history, not its facts: a dose edited by hand
    in an export was imported as fact (found by a probe). The trailer proves only that the copy is whole."""
    body = hashlib.sha256()
    count = 0
    for document in iter_documents(db):
        line = document + "\n"
        out.write(line)
        encoded = line.encode("utf-8")
        body.update(encoded)
        if digest is not None:
            digest.update(encoded)
        count += 1
    trailer = trailer_line(count, body.hexdigest()) + "\n"
    out.write(trailer)
    if digest is not None:
        digest.update(trailer.encode("utf-8"))
    return count


# ------------------------------------------------------------------------------------ import


def _split_lines(data: bytes) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, error)`` for each line; a final newline does not make an extra line."""
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    for number, chunk in enumerate(chunks, start=1):
        if len(chunk) > MAX_LINE_BYTES:
            yield number, None, f"line is longer than {MAX_LINE_BYTES} bytes"
            continue
        try:
            yield number, chunk.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            yield number, None, f"not valid UTF-8 (byte {exc.start})"


def _record_errors(number: int, doc: dict[str, Any], validate: ContentValidator) -> list[LineError]:
    """What import refuses in one version document, read on its own: its metadata and its record
    (``validate``, the wire schema). ``flask protocols check`` applies the same to stored versions."""
    return _check_meta(number, doc) + [LineError(number, path, message)
                                       for path, messages in validate(dict(doc)).items() for message in messages]


def _check_meta(number: int, doc: dict[str, Any]) -> list[LineError]:
    errors = []

    def bad(path: str, message: str) -> None:
        errors.append(LineError(number, path, message))

    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        bad("version", "must be an integer >= 1")
    for name in ("effective_from", "recorded_at"):
        try:
            stored = format_rfc3339(parse_rfc3339(doc.get(name)))  # type: ignore[arg-type]
        except (ValueError, TypeError, OverflowError) as exc:
            bad(name, f"must be an RFC 3339 date-time ({exc})")
            continue
        if doc[name] != stored:
            # The same instant written another way (+02:00, .000000) would be stored as the service
            # writes it, so the version's bytes and ETag would not be the file's.
            bad(name, f"not the stored form of this instant: the service writes it as {stored}")
        elif name == "recorded_at" and parse_rfc3339(stored) > utcnow() + versioning.CLOCK_SKEW_ALLOWED:
            # Five minutes were allowed: a write "from now" on top of such a version took effect only then
            # (found by a probe; versioning.check_clock).
            bad(name, "in the future: a version is recorded when it is written (check this server's clock)")
    for name in ("recorded_by", "request_id", "change_note"):
        if name not in doc:
            bad(name, "missing (export every field of the stored document)")
        elif doc[name] is not None and not isinstance(doc[name], str):
            bad(name, "must be a string or null")
    # What the service itself writes there (a key's name, a request id): anything else was never
    # exported by it, and PostgreSQL refused what its columns cannot hold with a bare traceback.
    if isinstance(doc.get("recorded_by"), str):
        problem = keys.author_name_problem(doc["recorded_by"])
        if problem is not None:
            bad("recorded_by", f"not an author name the service writes: {problem}")
    if isinstance(doc.get("request_id"), str) and not record.REQUEST_ID_PATTERN.fullmatch(doc["request_id"]):
        bad("request_id", "not a request id the service writes: 1 to 100 of A-Z a-z 0-9 . _ : -")
    return errors  # id, status text, content and unknown fields are the wire schema's to check


def _split_last_line(data: bytes) -> tuple[bytes, int, str | None]:
    """``(every byte before the last line, its line number, its text)``; the text is None when it cannot
    be a trailer (not UTF-8, or longer than any line)."""
    # Blank lines after the trailer (an editor's final newline) hold nothing: the trailer is still the last
    # line (a review: they were refused as "a copy cut short").
    content = data.rstrip(b" \t\r\n")
    cut = content.rfind(b"\n") + 1
    body, last, number = data[:cut], content[cut:], data.count(b"\n", 0, cut) + 1
    if len(last) > MAX_LINE_BYTES:
        return body, number, None
    try:
        return body, number, last.decode("utf-8")
    except UnicodeDecodeError:
        return body, number, None


def _read_trailer(number: int, text: str | None) -> Trailer | list[LineError] | None:
    """The trailer on line ``number``; its errors when the line is one (an object with ``export``) this
    release cannot read; None when the line is no trailer at all (a version, a line cut short)."""
    try:
        doc = strict_loads(text) if text is not None else None
    except InvalidJSON:
        return None
    if not isinstance(doc, dict) or TRAILER_FIELD not in doc:
        return None
    fields = doc[TRAILER_FIELD]
    if len(doc) != 1 or not isinstance(fields, dict) or set(fields) != {"format", "versions", "sha256"}:
        return [LineError(number, TRAILER_FIELD, 'not an export trailer: {"export":{"format":1,"versions":N,'
                                                 '"sha256":"<64 hex digits>"}} and nothing else')]
    errors = []
    if type(fields["format"]) is not int or fields["format"] != EXPORT_FORMAT:
        shown = json.dumps(fields["format"], default=str)
        errors.append(LineError(number, "export.format", f"format {shown} is not the one this release reads "
                                f"({EXPORT_FORMAT}): was the file exported by a newer one?"))
    if type(fields["versions"]) is not int or fields["versions"] < 0:
        errors.append(LineError(number, "export.versions", "must be an integer >= 0"))
    if not isinstance(fields["sha256"], str) or not _SHA256_HEX.fullmatch(fields["sha256"]):
        errors.append(LineError(number, "export.sha256", "must be 64 lower-case hexadecimal digits"))
    return errors or Trailer(fields["versions"], fields["sha256"])


def _trailer_problem(number: int, trailer: Trailer, body: bytes) -> LineError | None:
    """How the lines before the trailer disagree with it, if they do (one line: the copy is not the export)."""
    lines = body.count(b"\n")
    if lines != trailer.versions:
        return LineError(number, "export.versions", f"the trailer says the export holds {trailer.versions} versions, "
                         f"but {lines} lines come before it: lines were removed or added after the export (a copy "
                         "cut short loses the newest versions)")
    actual = hashlib.sha256(body).hexdigest()
    if actual != trailer.sha256:
        return LineError(number, "export.sha256", f"the {lines} lines before the trailer have SHA-256 {actual}, "
                         f"not {trailer.sha256} as exported: the file was changed after the export")
    return None


def parse_ndjson(data: bytes, validate: ContentValidator, *, digest_checked: bool = False) -> list[_Line]:
    """Check a whole export file; return its versions or raise :class:`ImportRejected` with every error.

    The trailer is checked first, and alone: a file that is not the whole export (cut short, lines
    removed or edited) is refused in one line, whatever its versions hold. ``digest_checked``: the
    caller matched the whole file against the SHA-256 export printed for it, so a file without a
    trailer (exported before trailers existed) is complete and its every line a version."""
    if not data:
        # A truncated copy or the wrong path looked like a successful restore ("imported 0 versions";
        # found by a probe). An export of an empty registry holds its trailer.
        raise ImportRejected([LineError(1, "_line", "the file is empty: there is nothing to import (an export "
                                                    "holds one version per line, then its trailer)")])
    body, number, text = _split_last_line(data)
    trailer = _read_trailer(number, text)
    if isinstance(trailer, list):
        raise ImportRejected(trailer)
    if trailer is None:
        if not digest_checked:
            raise ImportRejected([LineError(number, "_line", NO_TRAILER)])
        body = data
    else:
        problem = _trailer_problem(number, trailer, body)
        if problem is not None:
            raise ImportRejected([problem])
    return _parse_versions(body, validate)


def _parse_versions(data: bytes, validate: ContentValidator) -> list[_Line]:
    """Check every line of ``data`` as a version document continuing its protocol's history."""
    errors: list[LineError] = []
    lines: list[_Line] = []
    expected: dict[str, tuple[int, int]] = {}  # protocol id -> (next version, line of previous)
    recorded: dict[str, datetime] = {}  # protocol id -> recorded_at of its previous version
    for number, text, problem in _split_lines(data):
        if problem is not None or text is None:
            errors.append(LineError(number, "_line", problem or "unreadable"))
            continue
        if not text.strip():
            errors.append(LineError(number, "_line", "blank line (one version document per line)"))
            continue
        try:
            doc = strict_loads(text)
        except InvalidJSON as exc:
            errors.append(LineError(number, "_line", f"not valid JSON: {exc}"))
            continue
        if not isinstance(doc, dict):
            errors.append(LineError(number, "_line", "must be a JSON object (a version document)"))
            continue
        line_errors = _record_errors(number, doc, validate)
        if not line_errors:
            meta, content = record.split_document(doc)
            if record.build_document(meta, content) != text:
                line_errors.append(LineError(
                    number, "_line", "not the exact stored form of this version (key order, spacing or "
                    "number format changed); its bytes and ETag could not be reproduced"))
        if line_errors:
            errors += line_errors
            continue
        protocol_id, version = str(doc["id"]), int(doc["version"])
        recorded_at = parse_rfc3339(doc["recorded_at"])
        if protocol_id in expected:
            want, previous = expected[protocol_id]
            if version != want:
                errors.append(LineError(number, "version", f"expected version {want} of '{protocol_id}' "
                                                          f"(previous version on line {previous})"))
                continue
            if recorded_at < recorded[protocol_id]:
                errors.append(LineError(number, "recorded_at", f"earlier than version {version - 1}'s (line "
                                        f"{previous}): versions are recorded in order"))
                continue
        expected[protocol_id] = (version + 1, number)
        recorded[protocol_id] = recorded_at
        lines.append(_Line(number, doc, protocol_id, version))
    if errors:
        raise ImportRejected(errors)
    return lines


def _check_against_database(session: Any, lines: Iterable[_Line]) -> list[LineError]:
    """Each protocol's first line must continue what is stored: version 1 of a new id, or n+1."""
    first: dict[str, _Line] = {}
    for line in lines:
        first.setdefault(line.protocol_id, line)
    rows = session.execute(
        select(Protocol.id, Protocol.latest_version, ProtocolVersion.recorded_at)
        .join(ProtocolVersion, (ProtocolVersion.protocol_id == Protocol.id)
              & (ProtocolVersion.version == Protocol.latest_version))
        .where(Protocol.id.in_(list(first)))).all() if first else []
    stored = {row.id: row.latest_version for row in rows}
    stored_at = {row.id: row.recorded_at for row in rows}
    errors = []
    for protocol_id, line in first.items():
        latest = stored.get(protocol_id, 0)
        recorded_at = parse_rfc3339(line.document["recorded_at"])
        if latest and line.version == latest + 1 and recorded_at < stored_at[protocol_id]:
            errors.append(LineError(line.number, "recorded_at", f"earlier than the stored version {latest} of "
                                    f"'{protocol_id}': versions are recorded in order"))
        if line.version != latest + 1:
            if latest:
                message = (f"protocol '{protocol_id}' already has versions up to {latest}; the file's "
                           f"history of it starts at version {line.version}, not {latest + 1}")
            else:
                message = f"protocol '{protocol_id}' does not exist; its history must start at version 1"
            errors.append(LineError(line.number, "version", message))
    return errors


def import_ndjson(db: Database, data: bytes, validate: ContentValidator, *, digest_checked: bool = False,
                  audited_as: ImportAudit | None = None) -> ImportResult:
    """Validate the whole file, then import every line in one transaction (or nothing), with the
    import's audit rows when ``audited_as`` says who imports which file (:func:`_write_audit`).
    ``digest_checked``: see :func:`parse_ndjson`.

    The transaction queues behind every other writer (:func:`versioning.hold_feed_lock`) before it
    checks the file against what is stored: two imports at once into an empty PostgreSQL database both
    passed the check, and the loser died on ``ProtocolExists`` with a traceback instead of the line-by-line
    refusal SQLite's write lock gave (found by an operations probe)."""
    lines = parse_ndjson(data, validate, digest_checked=digest_checked)
    result = ImportResult()
    with db.write.begin() as session:
        versioning.hold_feed_lock(session.connection())
        errors = _check_against_database(session, lines)
        if errors:
            raise ImportRejected(errors)
        for line in lines:
            try:
                versioning.import_version(session, line.document)
            except DataError as exc:
                # Checks above should leave nothing for the database to refuse; if it still does (a
                # limit of one database and not the other), the file is refused with its line, not
                # with a traceback, and the transaction writes nothing. Not OperationalError (a lock
                # timeout, a lost connection): that is the database's state, not the file's fault.
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
                raise ImportRejected([LineError(line.number, "_line", f"the database refused it: {reason}")]) from exc
            result.versions += 1
            first, _ = result.protocols.get(line.protocol_id, (line.version, 0))
            result.protocols[line.protocol_id] = (first, line.version)
        if audited_as is not None:
            _write_audit(session, result, audited_as)
    return result


def _write_audit(session: Session, result: ImportResult, audited_as: ImportAudit) -> None:
    """One ``protocol.import`` row per protocol written (target its id, detail its first and last version,
    their count and the file), then the ``protocols.import`` summary (target the file), in the import's
    transaction: they commit and roll back with it.

    Why per protocol: the summary named only the file, so ``GET /v1/admin/audit?protocol=<id>`` did not
    find the versions an import appended to a protocol, under whatever author they carried (found by a
    probe)."""
    now = utcnow()
    source = audit.printable(audited_as.source)[:AUDIT_FILE_CHARS]
    rows = [audit.row(action=audit.PROTOCOL_IMPORT, outcome=audit.ALLOWED, actor=audited_as.actor,
                      target=protocol_id, status_code=None, request_id=None, occurred_at=now,
                      detail=record.dumps({"first_version": first, "last_version": last,
                                           "versions": last - first + 1, "file": source}))
            for protocol_id, (first, last) in result.protocols.items()]
    rows.append(audit.row(action=audit.IMPORT, outcome=audit.ALLOWED, actor=audited_as.actor,
                          target=audited_as.source, status_code=None, request_id=None, occurred_at=now,
                          detail=f"imported {result.versions} versions of {len(result.protocols)} protocols"))
    session.execute(insert(AuditEvent), rows)
