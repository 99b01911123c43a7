"""Keyset paging shared by every listing: the cursor tokens they hand out, and the window of the
listings that page newest first (audit events, FHIR history)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, TypeVarTuple

from sqlalchemy import Select

Ts = TypeVarTuple("Ts")


def newest_first_window(statement: Select[*Ts], key: Any, *, older_than: Any = None,
                        newer_than: Any = None) -> Select[*Ts]:
    """The rows just older than ``older_than`` (a next page), newest first; or, read backwards, the rows
    just newer than ``newer_than`` (a previous page), oldest first: the caller takes ``limit + 1`` and
    reverses them, so both pages list newest first and the extra row says whether more lie that way."""
    if newer_than is not None:
        return statement.where(key > newer_than).order_by(key.asc())
    if older_than is not None:
        statement = statement.where(key < older_than)
    return statement.order_by(key.desc())


class InvalidCursor(ValueError):
    """A cursor token this listing did not issue: garbled, edited, or another listing's. Each face of
    the API answers it in its own shape (a 422 naming ``cursor``, a FHIR OperationOutcome naming
    ``_cursor``)."""


def encode_cursor(kind: str, key: Any, direction: str, **extra: str) -> str:
    """An opaque token for the page after (``n``) or before (``p``) ``key`` of the listing ``kind``."""
    raw = json.dumps({"t": kind, "k": key, "d": direction, **extra}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, token: str, extra: tuple[str, ...] = ()) -> tuple[Any, str, dict[str, str]]:
    """``(key, direction, extras)`` of a token the listing ``kind`` issued; ``extra`` names the optional
    string fields this kind of cursor may carry. Any other field, another listing's kind, a key that
    is not an integer, a string or a list of them, is :class:`InvalidCursor`: a cursor is what the
    service issued, and a field it never writes says the token was edited (found by probes, as was a
    FHIR ``_history`` cursor accepted by search and by another protocol's history)."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(data, dict) or data.get("t") != kind or data.get("d") not in ("n", "p"):
            raise ValueError("wrong cursor")
        if not set(data) <= {"t", "k", "d", *extra}:
            raise ValueError("unknown cursor field")
        extras = {name: data[name] for name in extra if name in data}
        if not all(isinstance(value, str) for value in extras.values()):
            raise ValueError("wrong cursor field")
        key = data["k"]
        if isinstance(key, bool) or not isinstance(key, int | str | list):
            raise ValueError("wrong cursor key")
        return key, str(data["d"]), extras
    except (ValueError, KeyError, binascii.Error, UnicodeError, TypeError, RecursionError) as exc:
        # RecursionError: a forged token of deeply nested JSON (2,000 '[') was a 500 (adversarial probe).
        raise InvalidCursor(str(exc)) from exc


def is_key(key: Any, max_key: int) -> bool:
    """Whether a decoded cursor key is an integer its column holds (0 to ``max_key``): a forged larger
    one overflowed the driver or the database (a 500), and JSON's ``true`` is an ``int`` to Python."""
    return type(key) is int and 0 <= key <= max_key


def is_composite_key(key: Any, max_keys: Sequence[int], optional: int = 0) -> bool:
    """Whether a decoded cursor key is a list of such integers, each within its ``max_keys`` entry; the
    last ``optional`` parts may be missing (cursors issued before they were added)."""
    return (isinstance(key, list) and len(max_keys) - optional <= len(key) <= len(max_keys)
            and all(is_key(part, limit) for part, limit in zip(key, max_keys, strict=False)))
