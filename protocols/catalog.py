"""The curated catalog: YAML files under ``protocols/catalog/``, one protocol per file.

A file holds ``id`` and either a single record or ``versions:``, a list of records in the order
they are recorded (e.g. Spravato's label history, then back-dated corrections, each effective from
the date it names). Loading is idempotent: the newest stored version
is located among the file's entries and only the entries after it are appended; a file whose last
entry matches nothing stored appends that entry as a new version, if the loader wrote the newest one.

A newest version someone else wrote (a correction, a revert or a retirement through the API) leaves the
protocol alone unless the file holds that version after every entry the history already holds:
appending the file's entries would undo that write (a back-dated correction at every instant, a
retirement from its date on, a revert to an earlier entry; found by probes). Putting the change in the
file, right after the last entry the history holds, hands the protocol back to the loader; further
down, after entries the history does not hold, it is refused (:class:`Misplaced`): loading from there
would skip those entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from protocols import record, versioning
from protocols.db import Database
from protocols.errors import DomainError, ProtocolNotFound
from protocols.models import ProtocolVersion

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"


class _StringTimestampLoader(yaml.SafeLoader):
    """SafeLoader that keeps dates and times as the strings written in the file."""


_StringTimestampLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass
class CatalogFile:
    path: Path
    protocol_id: str
    entries: list[dict[str, Any]] = field(default_factory=list)


class CatalogError(ValueError):
    """A catalog file that cannot be read as one (named, with the reason), found before anything is
    written."""


def read_catalog(directory: Path = CATALOG_DIR) -> list[CatalogFile]:
    """Every ``*.yaml`` file of ``directory``, in name order. Raises :class:`CatalogError` for the
    first file that is not a catalog file, or when two files hold the same protocol id (each load
    appended both files' entries, one after the other, forever)."""
    files = [_read_file(path) for path in sorted(directory.glob("*.yaml"))]
    if not files:
        # A deploy script pointing at the wrong directory (or at .yml files) loaded nothing and said
        # nothing, exit 0 (found by an operations probe).
        others = sorted(p.name for p in directory.glob("*.yml"))
        raise CatalogError(f"{directory} holds no *.yaml catalog files"
                           + (f" (only {', '.join(others)}: name them *.yaml)" if others else ""))
    seen: dict[str, Path] = {}
    for catalog_file in files:
        if catalog_file.protocol_id in seen:
            raise CatalogError(f"{catalog_file.path.name}: id '{catalog_file.protocol_id}' is also the id in "
                               f"{seen[catalog_file.protocol_id].name}; one file per protocol")
        seen[catalog_file.protocol_id] = catalog_file.path
    return files


def _read_file(path: Path) -> CatalogFile:
    try:
        with path.open(encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_StringTimestampLoader)
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise CatalogError(f"{path.name}: not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from exc
    except OSError as exc:
        raise CatalogError(f"{path.name}: cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        raise CatalogError(f"{path.name}: a catalog file is a mapping with an 'id' (a string)")
    protocol_id = data["id"]
    if "versions" not in data:
        return CatalogFile(path, protocol_id, [dict(data)])
    shared = {k: v for k, v in data.items() if k not in ("versions", "id")}
    if shared:
        raise CatalogError(f"{path.name}: with 'versions', every field belongs to a version")
    versions = data["versions"]
    if not isinstance(versions, list) or not versions or not all(isinstance(v, dict) for v in versions):
        raise CatalogError(f"{path.name}: 'versions' is a non-empty list of records")
    if len(versions) > 1:
        # A dateless entry means "from the moment it is loaded": the loader matched it with a version of
        # any start, and read it as a repeat where the write rules append (a "from now" that the newest,
        # scheduled or outranked, is not); a history it loaded then could not be matched again (found
        # by a probe). Entries of a history carry their start.
        dateless = [index for index, version in enumerate(versions) if version.get("effective_from") in (None, "")]
        if dateless:
            raise CatalogError(f"{path.name}: versions.{dateless[0]}: effective_from is required in a versions "
                               "list (each entry is a version of a history, from the instant it names)")
    return CatalogFile(path, protocol_id, [dict(entry, id=protocol_id) for entry in versions])


@dataclass(frozen=True)
class Entry:
    """A validated catalog entry, split as the versioning service wants it."""

    status: str
    effective_from: Any
    change_note: str | None
    content: Mapping[str, Any]


@dataclass(frozen=True)
class LeftAlone:
    """The newest version, which the loader did not write and the file does not hold."""

    version: int
    status: str
    recorded_by: str | None
    #: The last entry (index) the history holds: the version belongs right after it in the file.
    after_entry: int | None = None
    #: An entry (index) that holds it too early: before entries the history holds after it.
    held_at: int | None = None


@dataclass(frozen=True)
class Misplaced:
    """The file holds the newest version (written through the API) at ``entry``, after ``missing``:
    entries the history does not hold. Adopting it there skipped them without a word (found by a probe:
    the upgrade's back-dated corrections, behind an API correction added as the file's last entry, as
    the loader's own message then advised, were never loaded and every later load said "unchanged").
    The version belongs right after ``after_entry``, the last entry the history holds."""

    entry: int
    missing: list[int]
    after_entry: int | None


@dataclass(frozen=True)
class Diverged:
    """A version this loader wrote is not in the file where the history has it (after ``after_entry``):
    an entry was edited or removed after it was loaded. Loading on from a guess skipped new entries
    (an edited last entry: only the file's last entry was appended) or, after a version written through
    the API, appended the edited entry on top of it (found by a probe). Nothing is appended."""

    version: int
    after_entry: int | None


@dataclass
class SyncResult:
    protocol_id: str
    appended: list[int] = field(default_factory=list)
    left_alone: LeftAlone | None = None
    misplaced: Misplaced | None = None
    diverged: Diverged | None = None
    #: The entry (its index in the file) the versioning rules refused, and why; the entries before it
    #: stay appended (each version is its own transaction), and a load after the fix resumes after them.
    refused: tuple[int, DomainError] | None = None


def sync_protocol(db: Database, protocol_id: str, entries: list[Entry],
                  ctx: versioning.WriteContext) -> SyncResult:
    """Bring one protocol in line with its catalog entries (see module docstring)."""
    result = SyncResult(protocol_id)
    try:
        newest, newest_hash = versioning.latest_with_hash(db, protocol_id)
    except ProtocolNotFound:
        first = entries[0]
        try:
            stored = versioning.create(db, protocol_id, first.content, status=first.status,
                                       effective_from=first.effective_from, change_note=first.change_note,
                                       ctx=ctx)
        except DomainError as exc:
            result.refused = (0, exc)
            return result
        result.appended.append(stored.version)
        return _append_entries(db, protocol_id, list(enumerate(entries))[1:], stored, ctx, result)
    keys = [(record.content_hash(entry.content), entry.status, entry.effective_from) for entry in entries]
    author = newest.as_dict().get("recorded_by")
    history = _history(db, protocol_id, ctx.actor)
    by_loader = author == ctx.actor
    alignment = _align(keys, history if by_loader else history[:-1])
    if len(entries) > 1:
        # A single record edited in place is how a one-record file changes (its newest is then in no
        # entry, and the record is appended); a versions list is appended to, never edited.
        lost = next((stored.version for stored, index in zip(history, alignment.entries, strict=False)
                     if index is None and stored.by_loader), None)
        if lost is not None:
            result.diverged = Diverged(lost, alignment.end if alignment.end >= 0 else None)
            return result
    consumed = alignment.end
    if len(entries) == 1:
        # A single record: it is the protocol (unchanged when it is the newest version), and editing it
        # appends it, unless the newest was written through the API, which it would undo.
        if _matching(keys, newest_hash, newest.status, newest.effective_from):
            return result
        if not by_loader:
            result.left_alone = LeftAlone(newest.version, newest.status, author, None)
            return result
        start = 0
    elif by_loader:
        start = consumed + 1
    else:
        # Written through the API (a correction, a revert, a retirement). The file speaks for the
        # protocol again only once it holds that version after every entry the history already holds
        # (whoever wrote it): otherwise loading its entries would undo that write (a revert to an
        # earlier entry, after the loader's or the API's later ones; found by probes).
        after_entry = consumed if consumed >= 0 else None
        matches = _matching(keys, newest_hash, newest.status, newest.effective_from)
        adopted = [index for index in matches if index > consumed]
        if not adopted:
            result.left_alone = LeftAlone(newest.version, newest.status, author, after_entry,
                                          matches[-1] if matches else None)
            return result
        if adopted[0] > consumed + 1:  # entries between are in no version: adopting there skipped them
            result.misplaced = Misplaced(adopted[0], list(range(consumed + 1, adopted[0])), after_entry)
            return result
        start = adopted[0] + 1
    return _append_entries(db, protocol_id, list(enumerate(entries))[start:], newest, ctx, result)


@dataclass(frozen=True)
class _Stored:
    key: tuple[str, str, Any]  # content hash, status, effective_from
    version: int
    by_loader: bool


@dataclass(frozen=True)
class _Alignment:
    #: The file entry each stored version is (oldest first), or None for one the file does not hold.
    entries: list[int | None]
    #: The last entry the history accounts for (-1: none): aligned, or repeating the version before it.
    end: int


def _align(keys: list[tuple[str, str, Any]], history: list[_Stored]) -> _Alignment:
    """Align stored versions with file entries. Both are in recording order, so a version is the first
    matching entry after the one the version before it is: matching each version against every entry
    read a restated entry (the current version repeated after a back-dated correction) as held, and the
    entries between were skipped without a word (found by a probe). Entries right after a version that
    repeat it (a restatement with a new change note) appended nothing and are accounted for with it."""
    position = -1
    aligned: list[int | None] = []
    for stored in history:
        index = next((i for i in _matching(keys, *stored.key) if i > position), None)
        aligned.append(index)
        if index is not None:
            position = index
            while position + 1 < len(keys) and _matching(keys[position + 1:position + 2], *stored.key):
                position += 1
    return _Alignment(aligned, position)


def _matching(keys: list[tuple[str, str, Any]], content_hash: str, status: str, effective_from: Any) -> list[int]:
    """Indexes of the entries (their content hash, status and start) a stored version is; an entry
    without a start matches any."""
    return [index for index, (entry_hash, entry_status, entry_start) in enumerate(keys)
            if entry_hash == content_hash and entry_status == status
            and (entry_start is None or entry_start == effective_from)]


def _history(db: Database, protocol_id: str, actor: str | None) -> list[_Stored]:
    """Every version, oldest first (a catalog protocol has a handful), and whether ``actor`` (this
    loader) wrote it."""
    with db.read() as session:
        rows = session.execute(
            select(ProtocolVersion.content_hash, ProtocolVersion.status, ProtocolVersion.effective_from,
                   ProtocolVersion.version, ProtocolVersion.recorded_by)
            .where(ProtocolVersion.protocol_id == protocol_id).order_by(ProtocolVersion.version)).all()
    return [_Stored((row.content_hash, row.status, row.effective_from), int(row.version), row.recorded_by == actor)
            for row in rows]


def _append_entries(db: Database, protocol_id: str, entries: list[tuple[int, Entry]],
                    newest: versioning.StoredVersion, ctx: versioning.WriteContext, result: SyncResult) -> SyncResult:
    for index, entry in entries:
        try:
            newest, created = versioning.revise(db, protocol_id, entry.content, if_match=[newest.etag],
                                                status=entry.status, effective_from=entry.effective_from,
                                                change_note=entry.change_note, ctx=ctx)
        except DomainError as exc:
            result.refused = (index, exc)
            return result
        if created:
            result.appended.append(newest.version)
    return result
