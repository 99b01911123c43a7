"""Keyset windows shared by the listings that page newest first (audit events, FHIR history)."""

from __future__ import annotations

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
