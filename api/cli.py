"""``flask protocols ...`` commands: migrate, load the curated catalog, export and import, and give
the changes feed a new id after a restore."""

from __future__ import annotations

import getpass
import hashlib
import io
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

import click
from alembic.util import exc as alembic_errors
from flask import Flask
from flask.cli import AppGroup
from marshmallow import ValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError

from api.errors import flatten_errors
from api.extensions import get_db
from protocols import audit, catalog, changes, consistency, keys, migrate, record, transfer
from protocols.versioning import WriteContext
from schemas.protocol import ProtocolCreateSchema, split_payload


def cli_actor() -> str:
    """``cli:<os user>``: who ran a command that changes or is refused something (key administration,
    imports, a new changes feed id), as docs/operations.md names the CLI's actor. Imports and new feed
    ids wrote plain ``cli``, which left out who ran them (an adversarial probe)."""
    try:
        return f"{keys.CLI_ACTOR}:{getpass.getuser()}"
    except (KeyError, OSError):
        return keys.CLI_ACTOR


class DatabaseCommands(AppGroup):
    """A command group whose database failures end in one line, not a driver traceback: ``flask keys
    create`` (how the first admin key is made) on a database not yet migrated printed SQLAlchemy's
    and psycopg's tracebacks (found by an adversarial probe)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OperationalError, ProgrammingError) as exc:  # unreachable, or no such table: not the data's fault
            first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
            if ctx.invoked_subcommand == "migrate":  # "migrate the schema" is no advice for the migration itself
                raise click.ClickException(
                    f"database error: {first}. Is PROTOCOLS_DATABASE_URL right and the database reachable? A "
                    "lock timeout means another session held what the migration needs: run it again once that "
                    "session is done") from exc
            raise click.ClickException(
                f"database error: {first}. Is PROTOCOLS_DATABASE_URL right, the database reachable and "
                "its schema migrated (`flask protocols migrate`)?") from exc
        except alembic_errors.CommandError as exc:  # e.g. a database stamped by a newer release
            raise click.ClickException(f"migration error: {exc}. Is this database from a newer release of "
                                       "treatment-protocols?") from exc


protocols_cli = DatabaseCommands("protocols", help="Manage the protocol registry.")


@protocols_cli.command("migrate")
def migrate_command() -> None:
    """Apply database migrations (Alembic) up to the newest revision."""
    from flask import current_app

    migrate.upgrade(current_app.config["PROTOCOLS_DATABASE_URL"])
    click.echo("database is at the newest migration")


def validate_entry(raw: dict[str, Any]) -> catalog.Entry:
    payload = ProtocolCreateSchema().load(raw)
    meta, content = split_payload(payload)
    return catalog.Entry(meta["status"], meta["effective_from"], meta["change_note"], content)


@protocols_cli.command("load")
@click.argument("directory", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
def load_command(directory: Path | None) -> None:
    """Load the curated catalog (idempotent: unchanged files append nothing)."""
    try:
        files = catalog.read_catalog(directory or catalog.CATALOG_DIR)
    except catalog.CatalogError as exc:
        raise click.ClickException(f"{exc}; nothing was loaded") from exc
    validated = []
    failed = False
    for catalog_file in files:
        entries = []
        for index, raw in enumerate(catalog_file.entries):
            try:
                entries.append(validate_entry(raw))
            except ValidationError as exc:
                failed = True
                prefix = f"versions.{index}." if len(catalog_file.entries) > 1 else ""
                for path, messages in flatten_errors(exc.messages).items():
                    click.echo(f"{catalog_file.path.name}: {prefix}{path}: {'; '.join(messages)}", err=True)
        validated.append((catalog_file, entries))
    if failed:
        raise click.ClickException("catalog has invalid files; nothing was loaded")
    ctx = WriteContext(actor=keys.CATALOG_ACTOR)
    refused: list[str] = []
    misplaced: list[str] = []
    for catalog_file, entries in validated:
        result = catalog.sync_protocol(get_db(), catalog_file.protocol_id, entries, ctx)
        if result.refused is not None:
            index, error = result.refused
            entry = f"versions.{index}" if len(entries) > 1 else "its record"
            refused.append(f"{catalog_file.path.name}: {entry}: {error.message}")
        if result.appended:  # a change made outside any HTTP request still belongs in the audit log
            audit.record(get_db(), action="protocol.load", outcome=audit.ALLOWED, actor=ctx.actor,
                         target=catalog_file.protocol_id, detail=f'{{"appended_versions":{list(result.appended)}}}')
        if result.left_alone is not None:
            newest = result.left_alone
            where = _position(newest.after_entry, len(entries))
            holds = ("does not hold it" if newest.held_at is None else
                     f"holds it at versions.{newest.held_at}, before entries the history holds after it")
            click.echo(f"{catalog_file.protocol_id}: left alone: its newest version ({newest.version}, "
                       f"{newest.status}) was written by {newest.recorded_by or 'an anonymous caller'}, not by "
                       f"this loader, and {catalog_file.path.name} {holds}; "
                       + (f"{where} to load the file again" if len(entries) == 1 else
                          f"add it to the file {where} to load the file again"), err=True)
            continue
        if result.diverged is not None:
            lost = result.diverged
            after = "" if lost.after_entry is None else f" after versions.{lost.after_entry}"
            misplaced.append(f"{catalog_file.path.name}: version {lost.version}, written by this loader, is not in "
                             f"the file{after}: an entry was edited or removed after it was loaded. Put it back "
                             "as loaded and add changes as new entries at the end")
            click.echo(f"{catalog_file.protocol_id}: nothing appended: the file differs from what was loaded "
                       "(below)")
            continue
        if result.misplaced is not None:
            placed = result.misplaced
            missing = ", ".join(f"versions.{index}" for index in placed.missing)
            misplaced.append(f"{catalog_file.path.name}: versions.{placed.entry} is the newest version, written "
                             f"through the API, but {missing} before it in the file are not in the history "
                             f"(loading from there would skip them); move it "
                             f"{_position(placed.after_entry, len(entries))}")
            click.echo(f"{catalog_file.protocol_id}: nothing appended: the file's order differs from the "
                       "history's (below)")
            continue
        state = f"appended versions {result.appended}" if result.appended else "unchanged"
        if result.refused is not None:  # "unchanged" read as if the file were loaded
            state = (f"appended versions {result.appended}, then" if result.appended else "nothing appended:") \
                + f" {entry} refused (below)"
        click.echo(f"{catalog_file.protocol_id}: {state}")
    problems = []
    if refused:
        problems.append("the versioning rules refused " + "; ".join(refused)
                        + " (the versions listed as appended stay; a load after the fix resumes after them)")
    if misplaced:
        problems.append("; ".join(misplaced))
    if problems:
        raise click.ClickException("; ".join(problems))


def _position(after_entry: int | None, entries: int) -> str:
    """Where a version written through the API belongs in a catalog file: right after the last entry the
    history holds (in recording order), not necessarily last."""
    if entries == 1:
        return ("make it the file's record; to change the protocol after that, turn the file into a versions: "
                "list of its history (GET /v1/protocols/{id}/versions, oldest first) and append the change")
    if after_entry is None:
        return "as its first entry"
    if after_entry == entries - 1:
        return "as its last entry"
    return f"right after versions.{after_entry} (the last entry the history holds), before the entries after it"


def validate_document(document: dict[str, Any]) -> dict[str, list[str]]:
    """Wire-schema errors of one exported version document, by dotted field path.

    A stored document carries every field the schema fills in (``verification_notes: []``, a range's
    ``frequency: null`` …). One without them would be stored as sent, and the same record PUT back
    would then differ from it and append a version instead of answering "unchanged"."""
    try:  # loaded once: validate() and then load() deserialized every document twice (a review)
        _, loaded = split_payload(ProtocolCreateSchema().load(document))
    except ValidationError as exc:
        return flatten_errors(exc.messages)
    _, sent = record.split_document(document)
    completed, as_sent = record.canonical_content(loaded), record.canonical_content(sent)
    return {name: ["not in the stored form: the service stores this field as "
                   f"{record.dumps(completed.get(name))}"]
            for name in record.CONTENT_FIELDS if completed.get(name) != as_sent.get(name)}


@protocols_cli.command("export")
@click.argument("path", type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path))
def export_command(path: Path) -> None:
    """Write every protocol with its full history as NDJSON (changes-feed order; `-` = stdout), then a
    trailer line with the version count and digest, which import requires."""
    if str(path) == "-":
        # UTF-8 whatever the locale (import reads UTF-8): sys.stdout encodes in the locale's charset,
        # which failed part-way on "≤" under a Latin-1 locale, or wrote a file import refuses.
        sys.stdout.flush()
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n")
        digest = hashlib.sha256()
        try:
            count = transfer.export_ndjson(get_db(), out, digest)
        finally:
            out.flush()
            out.detach()  # leave sys.stdout's buffer open
        click.echo(f"exported {count} versions; {_digest_line(digest)}", err=True)
        return
    try:
        mode: int | None = os.stat(path).st_mode  # through symlinks, as opening it would go
    except FileNotFoundError:
        mode = None
    except OSError as exc:  # a symlink loop, a path through a file
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from exc
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        # A FIFO or a device (a pipe to gzip, /dev/stdout, >(...)): written as it is, since renaming a
        # file over it replaced the FIFO with a file and sent the reader nothing (found by an operations
        # probe). Opened by its own name: resolving /dev/stdout to the pipe's "pipe:[N]" named no file.
        digest = hashlib.sha256()
        try:
            with path.open("w", encoding="utf-8", newline="\n") as stream:
                count = transfer.export_ndjson(get_db(), stream, digest)
        except OSError as exc:
            raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from exc
        click.echo(f"exported {count} versions to {path}; {_digest_line(digest)}", err=True)
        return
    target = path.resolve()  # through a symlink: it was replaced by a file and its target left as it was
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            count = transfer.export_ndjson(get_db(), out, digest)
        partial.replace(target)  # a crash mid-export never leaves a truncated file under the real name
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)  # a failed export (database down, disk full) leaves nothing behind
    click.echo(f"exported {count} versions to {path}; {_digest_line(digest)}")


@protocols_cli.command("check")
def check_command() -> None:
    """Check every stored version against today's write rules, and the derived rows (effective periods,
    search terms) against the versions they come from (read-only; exit status 1 on any problem).

    A version stored before a rule was added stays as it is: correct the protocol by appending a
    version (PUT), and its history keeps the old one. Derived rows that differ were changed outside
    the service; restore the database from a backup or an export."""
    refused: set[tuple[str, int]] = set()

    def report(problem: transfer.StoredProblem) -> None:
        refused.add((problem.protocol_id, problem.version))
        click.echo(str(problem))

    checked = transfer.check_stored(get_db(), validate_document, report)
    derived: set[str] = set()

    def report_derived(protocol_id: str, problem: str) -> None:
        derived.add(protocol_id)
        click.echo(f"{protocol_id}: {problem}")

    protocol_count = consistency.derived_problems(get_db(), report_derived)
    if refused or derived:
        counter = (", and the changes-feed counter is behind the stored versions"
                   if consistency.COUNTER in derived else "")
        raise click.ClickException(
            f"{len(refused)} of {checked} stored versions break today's write rules, and the derived rows of "
            f"{len(derived - {consistency.COUNTER})} of {protocol_count} protocols differ from their versions"
            f"{counter} (above); nothing was changed")
    click.echo(f"checked {checked} stored versions of {protocol_count} protocols: all pass today's write rules, and "
               "every head, effective period and search term matches its versions")


def _digest_line(digest: Any) -> str:
    return f"sha256 {digest.hexdigest()} (keep it with the copy: import --sha256 checks the copy against it)"


def _sha256_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--sha256`` as 64 hexadecimal digits: a truncated paste or a typo was answered as a copy that
    differs from its export ("it is not the export that digest belongs to"; a docs probe)."""
    if value is not None and not re.fullmatch(r"[0-9A-Fa-f]{64}", value.strip()):
        raise click.BadParameter(f"{value!r} is not a SHA-256 digest (64 hexadecimal digits, as export prints it)")
    return value


@protocols_cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--sha256", "expected_sha256", metavar="HEX", callback=_sha256_option,
              help="The SHA-256 export printed for this file: a copy that differs by a byte is refused.")
def import_command(path: Path, expected_sha256: str | None) -> None:
    """Import an NDJSON export: the whole file is validated first, then imported in one transaction.

    The file must end with the trailer export writes (its version count and digest), so a copy cut short
    is refused; a file exported before trailers existed is imported only with a matching --sha256."""
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from exc
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.strip().lower():
            audit.record(get_db(), action=audit.IMPORT, outcome=audit.DENIED, actor=cli_actor(),
                         target=str(path), detail=f"sha256 {actual} is not the expected one")
            raise click.ClickException(f"{path} has SHA-256 {actual}, not {expected_sha256.strip()}: it is not "
                                       "the export that digest belongs to; nothing was imported")
    try:  # its audit rows (one per protocol written, and the file's) commit with it
        result = transfer.import_ndjson(get_db(), data, validate_document, digest_checked=expected_sha256 is not None,
                                        audited_as=transfer.ImportAudit(cli_actor(), str(path)))
    except transfer.ImportRejected as exc:
        for error in exc.errors:
            click.echo(str(error), err=True)
        audit.record(get_db(), action=audit.IMPORT, outcome=audit.DENIED, actor=cli_actor(), target=str(path),
                     detail=f"{len(exc.errors)} problem(s); first: {exc.errors[0]}")
        raise click.ClickException(f"{len(exc.errors)} problem(s) in {path}; nothing was imported") from exc
    click.echo(f"imported {result.versions} versions of {len(result.protocols)} protocols")


NEW_FEED_ACTION = "changes.new_feed_id"


@protocols_cli.command("new-feed-id")
def new_feed_id_command() -> None:
    """Give the changes feed a new id, after restoring this database from a copy: clients' cursors are
    refused (409 with a link to the feed's beginning) instead of skipping versions."""
    value = changes.new_feed_id(get_db())
    audit.record(get_db(), action=NEW_FEED_ACTION, outcome=audit.ALLOWED, actor=cli_actor(), target="changes",
                 detail=f"new feed id {value}")
    click.echo(f"the changes feed's id is now {value}: cursors issued before are refused; clients read "
               "the feed again from the beginning")


def init_app(app: Flask) -> None:
    app.cli.add_command(protocols_cli)
