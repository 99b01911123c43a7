"""API keys: minted at random, shown once, stored only as a hash, checked against the database.

Why this shape:

* a key is ``tpk_`` + ``secrets.token_urlsafe(32)`` (256 bits of entropy). The prefix makes a leaked
  key easy to recognise in a paste or a secret scanner; the entropy makes a plain SHA-256 a safe
  storage hash (no salt or slow KDF is needed against guessing a 256-bit random value);
* lookups go by the hash (indexed, unique) and the found hash is compared again with
  ``hmac.compare_digest`` so the final accept/reject decision takes constant time;
* revocation and expiry are read from the database on every call: there is no per-process cache,
  so a revoked key stops working at once in every worker of every instance.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session

from protocols.audit import WriteContext, insert_allowed
from protocols.db import Database
from protocols.errors import DomainError, KeyNameTaken, LastAdminKey
from protocols.invisible import MESSAGE as INVISIBLE_MESSAGE
from protocols.invisible import is_invisible
from protocols.models import ApiKey
from protocols.timeutil import format_rfc3339, utcnow

KEY_PREFIX = "tpk_"
#: Authors the service records for its own writes and audit events; no key may be named like them,
#: or a key's writes would read as the curated catalog's (``recorded_by`` carries the key's name).
CATALOG_ACTOR = "catalog-loader"
CLI_ACTOR = "cli"
_KEY_NAME = re.compile(r"[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]{0,62}[^\s\x00-\x1f\x7f])?")
#: Besides what :func:`protocols.invisible.is_invisible` refuses: lone surrogates and the line and
#: paragraph separators.
_NOT_IN_A_NAME = frozenset({"Cs", "Zl", "Zp"})
READ = "protocols:read"
WRITE = "protocols:write"
ADMIN = "admin"
SCOPES: tuple[str, ...] = (READ, WRITE, ADMIN)


class KeyNotFound(DomainError):
    """No API key has this id."""


class InvalidScope(DomainError):
    """A scope that the service does not know."""


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: everything except its secret (which is not stored)."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def is_active(self, now: datetime) -> bool:
        # Revoked is revoked, whatever the time stamp says: ``revoked_at`` records when, by the clock of
        # whichever host revoked it. Compared with this host's clock, a revocation stamped by a clock
        # running ahead left the key working for the skew, and revoking again could not fix it (the
        # first stamp is kept; found by an adversarial probe).
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def author_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the author of a version (``recorded_by``): a key name or the service's."""
    if not _KEY_NAME.fullmatch(name):
        return "1 to 64 characters, no control characters (tab, newline …), no blank at either end"
    return None


#: Letters of other scripts that display like a Latin letter, picked by hand for the scripts a keyboard
#: layout puts within reach (Cyrillic, Greek, Latin's own script forms), with look-alikes Unicode's list
#: lacks: Latin small capitals (ᴀ, ꞯ), signs that stand like a vertical bar (box drawing's, read as an l).
#: Unicode's list (:data:`CONFUSABLES_FILE`) covers every other script; where both name a character, this
#: table's Latin letter is kept.
_HAND_PICKED = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0455\u0456\u0458\u0501\u051b\u051d\u04bb\u04cf\u0432"
    "\u043a\u043c\u043d\u0442\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0423"
    "\u0405\u0406\u0408\u04c0\u051a\u051c\u04ba\u03b1\u03b2\u03b5\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4"
    "\u03c5\u03c7\u03f2\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a5"
    "\u03a7\u03f9\u0261\u2113\u0251\u01c0"
    # Latin small capitals (U+1D04, a small capital C, reads as a c in 'catalog-loader') and the dotless i
    "\u1d00\u0299\u1d04\u1d05\u1d07\ua730\u0262\u029c\u026a\u1d0a\u1d0b\u029f\u1d0d\u0274\u1d0f\u1d18"
    "\u0280\ua731\u1d1b\u1d1c\u1d20\u1d21\u028f\u1d22\u0131"
    # signs that stand like a vertical bar, which reads as an l: divides, Hebrew paseq, Tifinagh yan, box
    # drawing's light and heavy verticals (the halfwidth one NFKC makes the light), a vertical line
    # extension, a light vertical bar; the Latin capital iota; the small capital Q; the presentation
    # forms of a vertical em dash and two-dot leader, a bar and a colon to the eye, which NFKC makes a
    # horizontal dash and two dots (a review)
    "\u2223\u05c0\u2d4f\u2502\u2503\u23d0\u2758\u0196\ua7af\ufe31\ufe30",
    "aeopcyxsijdqwhlb"
    "kmhtABEKMHOPCTXY"
    "SIJlQWHabeikvopt"
    "uxcABEZHIKMNOPTY"
    "XCglal"
    "ABcDEFGHIJKLMNoP"
    "RsTuvwYzi"
    "lll"
    "lllllQl:"
)
#: Unicode's confusables (UTS #39, Unicode Security Mechanisms): every character that may be mistaken for
#: another, with the prototype it looks like. The data file of Unicode 12.1.0, unmodified, as published at
#: https://www.unicode.org/Public/security/12.1.0/confusables.txt (the hand-picked table above missed
#: Cherokee letters in 'CLI:bob', Lisu, a Cyrillic ghe for an r and other look-alikes; a review).
CONFUSABLES_FILE = Path(__file__).parent / "data" / "confusables.txt"


@functools.cache
def _look_alikes() -> dict[int, str]:
    """Every character other than ASCII that looks like something else, as a ``str.translate`` table:
    Unicode's prototypes, the hand-picked Latin letters over them. ASCII's own look-alikes are
    :data:`_ASCII_HOMOGLYPHS`, used for skeletons only."""
    table: dict[int, str] = {}
    for line in CONFUSABLES_FILE.read_text(encoding="utf-8-sig").splitlines():
        fields = line.partition("#")[0].split(";")
        if len(fields) < 2:
            continue
        source = int(fields[0], 16)
        if source >= 0x80:
            # A prototype may be one of the hand-picked (a small capital, for Cherokee and Deseret letters):
            # read on, to the Latin letter, or 'catalog-loader' with one was accepted (a review).
            table[source] = "".join(chr(int(point, 16)) for point in fields[1].split()).translate(_HAND_PICKED)
    table.update({source: chr(target) for source, target in _HAND_PICKED.items()})
    return table


#: ASCII's own look-alikes, case-sensitive: a capital I, 1 and | look like l, 0 like o, and m like rn (as
#: in Unicode's list: 'adrnin-sync' beside a live 'admin-sync'; a review). A lower-case i and a capital L
#: are letters of their own.
_ASCII_HOMOGLYPHS = str.maketrans({"I": "l", "1": "l", "|": "l", "0": "o", "m": "rn"})
#: Signs that display as a hyphen without being dashes (Unicode category Pd): minus, modifier minus.
_HYPHENS = frozenset("\u2212\u02d7\u2043")
#: Signs that display as a colon and that NFKC leaves alone (Unicode's confusables.txt for ':'): ratio,
#: modifier letter colons, Armenian full stop, Hebrew sof pasuq, Syriac colons, runic and Mongolian
#: punctuation, two-dot punctuation, vertical two-dot leader, Lisu tone, Devanagari and Gujarati visarga.
#: 'cli\u2236root' was accepted as a key name, and read as the CLI's author 'cli:root' (adversarial probe).
_COLONS = frozenset("\u2236\ua789\u02d0\u02f8\u0589\u05c3\u0703\u0704\u16ec\u1803\u1809\u205a\ufe30"
                    "\ua4fd\u0903\u0a83")


def _folded(name: str) -> str:
    """Width and compatibility forms folded (NFKC), every dash a hyphen, every space a space and every
    colon look-alike a colon, marks decomposed (a Cyrillic e with an acute is an e with an acute), other
    scripts' look-alikes Latin.

    Look-alikes are folded before NFKC too: NFKC turns the lunate sigma symbols (U+03F2, U+03F9, which
    look like c and C) into sigmas, which look like no Latin letter, so the table's entries for them never
    matched and 'catalog-loader' with U+03F2 for its c was accepted as a key name (a security probe)."""
    chars = []
    look_alikes = _look_alikes()
    # Before NFKC the hand-picked table only: Unicode's list sends compatibility characters to prototypes
    # that differ from the letter NFKC makes them ('ⅿ' to 'rn', a modifier small l to a syllabic, a
    # fullwidth hyphen-minus to a katakana mark), and 'catalog-loader' with one was accepted (a review).
    for char in unicodedata.normalize("NFKC", name.translate(_HAND_PICKED)):
        category = unicodedata.category(char)
        chars.append("-" if category == "Pd" or char in _HYPHENS else " " if category == "Zs"
                     else ":" if char in _COLONS else char)
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", "".join(chars)).translate(look_alikes))


def name_skeleton(name: str) -> str:
    """What a name looks like, case kept (a simplified Unicode TR39 skeleton): :func:`_folded`, then
    ASCII's look-alikes (I, 1, | as l; 0 as o; m as rn). 'catalog-loader' with a Cyrillic a, with a non-breaking
    hyphen, and 'ehr prod' with a no-break space beside a live 'ehr prod' were accepted; each reads as
    the other author in version history (found by an adversarial probe)."""
    return _folded(name).translate(_ASCII_HOMOGLYPHS)


def names_look_alike(first: str, second: str) -> bool:
    """Whether two names would read as one author: alike but for case (after folding look-alikes of
    other scripts), or of one skeleton. Case is folded apart from the I/l rule, since folding it after
    made ALI and ALL, PIC and PLC one name (probe of the first fix)."""
    return (_folded(first).casefold() == _folded(second).casefold()
            or name_skeleton(first) == name_skeleton(second))


def key_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a new key (it becomes the author of the key's writes), or None.
    Stricter than :func:`author_name_problem`, which history written by older keys must pass."""
    problem = author_name_problem(name)
    if problem is not None:
        return problem
    if any(unicodedata.category(char) in _NOT_IN_A_NAME or is_invisible(char) for char in name):
        # U+202E turned "\u202enimda" into a name that displays as "admin" in audit rows and history;
        # "catalog-loader\ufe0f" (a variation selector, category Mn) displayed as the catalog loader.
        return INVISIBLE_MESSAGE
    if unicodedata.normalize("NFC", name) != name:
        # "cafe\u0301" and "caf\u00e9" display alike: two live keys would look like one author.
        return "must be in Unicode normalization form NFC (accents composed)"
    prefix = _folded(name).partition(":")[0]  # a look-alike colon (a fullwidth one, a ratio sign) too
    if names_look_alike(name, CATALOG_ACTOR) or names_look_alike(prefix, CLI_ACTOR):
        return f"'{name}' is, or looks like, an author name of the service itself"
    return None


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plain: str) -> str:
    """SHA-256 hex of the key: what the database holds instead of the key."""
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def normalize_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Known scopes only, deduplicated, in the canonical order of ``SCOPES``."""
    wanted = set(scopes)
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise InvalidScope(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(SCOPES)}",
                           unknown=unknown)
    if not wanted:
        raise InvalidScope(f"at least one scope is required; known: {', '.join(SCOPES)}", unknown=[])
    return tuple(s for s in SCOPES if s in wanted)


def creation_facts(name: str, scopes: Iterable[str], expires_at: datetime | None) -> dict[str, Any]:
    """What a key-creation audit event records of the new key (never the key itself), the same from
    the API and the CLI."""
    return {"name": name, "scopes": list(normalize_scopes(scopes)),
            "expires_at": format_rfc3339(expires_at) if expires_at else None}


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, tuple(row.scopes.split()), row.created_at, row.expires_at, row.revoked_at)


# An arbitrary constant: the advisory-lock id of "a key is being created" (pg_advisory_xact_lock).
_LOCK_KEY_NAMES = text("SELECT pg_advisory_xact_lock(7180021946273345113)")


def create_key(db: Database, name: str, scopes: Sequence[str], *, expires_at: datetime | None = None,
               now: datetime | None = None, ctx: WriteContext = WriteContext()) -> tuple[KeyInfo, str]:
    """Mint a key. Returns its description and the plain key, which exists nowhere else afterwards.
    ``ctx.audit``, if given, is written in the same transaction as the key."""
    problem = key_name_problem(name)
    if problem is not None:
        raise ValueError(f"key name: {problem}")
    canonical = normalize_scopes(scopes)
    plain = generate_key()
    now = now or utcnow()
    row = ApiKey(id=secrets.token_hex(8), name=name, key_hash=hash_key(plain), scopes=" ".join(canonical),
                 created_at=now, expires_at=expires_at, revoked_at=None)
    with db.write.begin() as session:
        # Names tell authors apart in the version history (recorded_by carries the name, not the id):
        # two live keys of one name could not be told apart there (found by an adversarial probe).
        # PostgreSQL runs concurrent creates side by side (SQLite's BEGIN IMMEDIATE already serializes
        # them), so both could find the name free: creates take one transaction-scoped advisory lock.
        # A partial unique index would need a migration that fails on databases already holding
        # duplicates (``make run`` named every key "local-dev" before), and keys are created rarely.
        if session.get_bind().dialect.name == "postgresql":
            session.execute(_LOCK_KEY_NAMES)
        # Live = neither revoked nor expired (an expired key authenticates nothing and writes nothing).
        # Names that merely look alike are taken too (compared in Python: live keys are few).
        taken = next((live for live in session.execute(select(ApiKey.id, ApiKey.name).where(
            ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)))
            if names_look_alike(live.name, name)), None)
        if taken is not None:
            looks = "" if taken.name == name else f" ('{taken.name}', which looks the same)"
            raise KeyNameTaken(f"key name: a key named '{name}' exists{looks} (id {taken.id}); revoke it or "
                               "choose another name", key_id=taken.id)
        session.add(row)
        insert_allowed(session, ctx, target=row.id, now=now)
    return _info(row), plain


def authenticate(db: Database, plain: str, *, now: datetime | None = None) -> KeyInfo | None:
    """The active key matching ``plain``, or None (unknown, revoked or expired: callers need not tell
    which apart, and must not tell the client)."""
    info = identify(db, plain)
    return info if info is not None and info.is_active(now or utcnow()) else None


def identify(db: Database, plain: str) -> KeyInfo | None:
    """The key matching ``plain`` whatever its state (revoked and expired keys too), or None.

    For the audit trail of a refused request: which revoked or expired key is still being presented
    is what an operator needs to find the client still holding it (the client is told only that its
    key is not valid)."""
    if not plain.startswith(KEY_PREFIX) or len(plain) > 200:
        return None
    digest = hash_key(plain)
    sql, convert = _lookup_plan(db.engine.dialect)
    row = db.reads.fetch_one(sql, (digest,))
    if row is None or not hmac.compare_digest(row[2], digest):
        return None
    return KeyInfo(row[0], row[1], tuple(row[3].split()), *(convert(value) for value in row[4:7]))


def state(info: KeyInfo, now: datetime) -> str:
    """``active``, ``revoked`` or ``expired`` (revoked wins when both hold: it was someone's decision)."""
    if info.revoked_at is not None:
        return "revoked"
    return "active" if info.is_active(now) else "expired"


_LOOKUP_PLANS: dict[Any, tuple[str, Callable[[Any], Any]]] = {}


def _lookup_plan(dialect: Any) -> tuple[str, Callable[[Any], Any]]:
    """The key lookup runs on every authenticated request, so it is one fixed autocommit SELECT on the
    thread's read connection (``db.reads``) instead of an ORM session (BEGIN, SELECT, ROLLBACK and
    an entity per request); datetimes go through SQLAlchemy's own result processor for the column type."""
    plan = _LOOKUP_PLANS.get(dialect)
    if plan is None:
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        time_type = ApiKey.__table__.c.created_at.type.dialect_impl(dialect)
        processor = time_type.result_processor(dialect, None)
        plan = _LOOKUP_PLANS[dialect] = (
            "SELECT id, name, key_hash, scopes, created_at, expires_at, revoked_at FROM api_keys"
            f" WHERE key_hash = {mark}",
            (lambda value: None if value is None else processor(value)) if processor else (lambda value: value))
    return plan


def list_keys(db: Database) -> list[KeyInfo]:
    with db.read() as session:
        rows = session.execute(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).scalars().all()
    return [_info(row) for row in rows]


def get_key(db: Database, key_id: str) -> KeyInfo:
    with db.read() as session:
        row = session.get(ApiKey, key_id)
    if row is None:
        raise KeyNotFound(f"no API key with id '{key_id}'", key_id=key_id)
    return _info(row)


def revoke_key(db: Database, key_id: str, *, now: datetime | None = None,
               ctx: WriteContext = WriteContext(), keep_an_admin: bool = False) -> KeyInfo:
    """Revoke a key from now on. Revoking twice keeps the first revocation time. ``ctx.audit``, if
    given, is written in the same transaction, and only when this call revoked the key.

    ``keep_an_admin`` (the HTTP API's setting) refuses, with :class:`LastAdminKey`, a revocation that
    would leave no live key with the ``admin`` scope: over HTTP nobody could then mint a key again
    (found by a probe). The shell (``flask keys``) may, since it can always mint one."""
    now = now or utcnow()
    with db.write.begin() as session:
        if keep_an_admin and session.get_bind().dialect.name == "postgresql":
            # Two admins revoking each other at once must not both see the other still live (SQLite's
            # BEGIN IMMEDIATE already serializes writes); the lock key creation takes serves.
            session.execute(_LOCK_KEY_NAMES)
        revoked = session.connection().execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=now)).rowcount
        row = session.get(ApiKey, key_id)
        if row is None:
            raise KeyNotFound(f"no API key with id '{key_id}'", key_id=key_id)
        if revoked and keep_an_admin and ADMIN in row.scopes.split() and not _live_admin_remains(session, now):
            raise LastAdminKey(f"key '{key_id}' is the last live key with the admin scope; create another "
                               "admin key first (or revoke it from the shell: flask keys revoke)", key_id=key_id)
        if revoked:
            insert_allowed(session, ctx, target=key_id, now=now)
        return _info(row)


def _live_admin_remains(session: Session, now: datetime) -> bool:
    """Whether a key that is neither revoked nor expired at ``now`` has the ``admin`` scope."""
    live = session.execute(select(ApiKey.scopes).where(
        ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))).scalars()
    return any(ADMIN in scopes.split() for scopes in live)
