"""Strict JSON parsing, shared by the HTTP API and backup import.

Python's ``json`` accepts ``NaN``/``Infinity`` and silently keeps the last of duplicate keys; a
clinical API must refuse both. Floats are parsed as ``Decimal`` so a dose of 84.0000001 mg stays
exactly that.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


class InvalidJSON(ValueError):
    """The body is not strict JSON; the message says why."""


def _no_constants(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON (numbers must be finite)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # in C; only an object with a repeated key is walked (a PUT body has ~16 objects)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidJSON(f"duplicate key {key!r} in JSON object")
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means a key repeats")


def _parse_float(text: str) -> Decimal:
    if len(text) > 100:
        raise InvalidJSON("number literal too long")
    return Decimal(text)


def _parse_int(text: str) -> int:
    if len(text) > 100:
        raise InvalidJSON("number literal too long")
    return int(text)


def strict_loads(data: bytes | str) -> Any:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJSON(f"body is not valid UTF-8 (byte {exc.start})") from exc
    else:
        text = data
    if text.startswith("\ufeff"):
        raise InvalidJSON("byte order mark is not allowed")
    try:
        return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates,
                          parse_float=_parse_float, parse_int=_parse_int)
    except InvalidJSON:
        raise
    except RecursionError as exc:
        raise InvalidJSON("JSON nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except ValueError as exc:
        raise InvalidJSON(f"malformed JSON: {exc}") from exc
