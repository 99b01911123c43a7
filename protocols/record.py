"""The stored document of a version: canonical content, content hash, JSON bytes and ETag.

A version's document is serialized once, when it is written, and served byte for byte afterwards
(versions are immutable, so there is nothing to recompute). Numbers are validated as ``Decimal`` on
input and written as JSON numbers: integral values as integers, others via ``float`` whose shortest
``repr`` reproduces the decimal exactly because the wire schema bounds precision to 12 significant
digits.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from protocols.timeutil import format_rfc3339

#: Fields owned by the server: present in documents, ignored when a client sends them back.
#: A request id as the service accepts or mints it (``X-Request-ID``): stored in versions and audit rows.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,100}")

SERVER_FIELDS = ("version", "recorded_at", "recorded_by", "request_id", "etag")

#: Per-version metadata (not clinical content).
META_FIELDS = ("id", "version", "status", "effective_from", "recorded_at", "recorded_by", "request_id",
               "change_note")

#: Clinical content fields in the order they appear in documents.
CONTENT_FIELDS = ("title", "summary", "drug", "indications", "routes", "dosing_ranges", "fda_approval",
                  "sources", "verification_notes")


def jsonable(value: Any) -> Any:
    """Turn validated Python values (Decimal, date, datetime) into JSON-ready primitives."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite number")
        if value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, datetime):
        return format_rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 friendly, no NaN."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def canonical_content(content: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only clinical content fields, in document order, as JSON-ready values."""
    ready = jsonable(content)
    return {name: ready.get(name) for name in CONTENT_FIELDS if name in ready}


def content_hash(content: Mapping[str, Any]) -> str:
    """Hash of the clinical content, independent of key order: equal content, equal hash."""
    return canonical_hash(canonical_content(content))


def canonical_hash(canonical: Mapping[str, Any]) -> str:
    """``content_hash`` of content already passed through :func:`canonical_content`."""
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, ensure_ascii=False,
                                     separators=(",", ":")).encode()).hexdigest()


def build_document(meta: Mapping[str, Any], content: Mapping[str, Any]) -> str:
    return build_canonical_document(meta, canonical_content(content))


def build_canonical_document(meta: Mapping[str, Any], canonical: Mapping[str, Any]) -> str:
    """``build_document`` for content already passed through :func:`canonical_content` (the write
    path computes it once and derives hash, document, search terms and full-text rows from it)."""
    doc: dict[str, Any] = {name: jsonable(meta.get(name)) for name in META_FIELDS}
    doc.update(canonical)
    return dumps(doc)


def make_etag(version: int, document: str) -> str:
    """Strong ETag naming the version and fingerprinting its exact bytes."""
    return f'"{version}-{hashlib.sha256(document.encode()).hexdigest()[:16]}"'


def split_document(document: str | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a stored document into (meta, content)."""
    doc = json.loads(document) if isinstance(document, str) else dict(document)
    meta = {k: doc.get(k) for k in META_FIELDS}
    content = {k: doc[k] for k in CONTENT_FIELDS if k in doc}
    return meta, content
