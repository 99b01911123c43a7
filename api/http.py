"""HTTP helpers: serving stored JSON bytes, ETag preconditions, cursors and RFC 8288 links."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from flask import Response, g, request
from werkzeug.urls import iri_to_uri

from api.errors import CURSOR_READER, ApiError
from protocols import paging
from protocols.models import MAX_SEQ
from protocols.versioning import StoredVersion, names_etag

_View = TypeVar("_View", bound=Callable[..., Any])

_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
#: ``*`` or a list of entity-tags (RFC 9110 8.8.3), with the empty list elements and optional white
#: space (SP, HTAB) that 5.6.1.2 has recipients accept: ``, "x", , W/"y" ,``. Published in the OpenAPI
#: document (the If-Match and If-None-Match parameters); ``tests/api/test_http.py`` holds it to what
#: :func:`parse_etag_list` accepts. Written so that no two of its parts can match the same characters
#: (a first version let runs of white space split many ways, and a near miss of 8 KB took a worker
#: 0.2-17 s to refuse: found in review); the parser does not use it and is linear by construction.
#: A list names at most this many entity-tags (the service's own ETags are one per request; a header of
#: 100 fields of 8 KB held 200,000 and took 110 ms to read on any GET, /v1/health included: review).
MAX_ENTITY_TAGS = 64
ENTITY_TAG_LIST_PATTERN = (rf'^(?:[ \t]*\*[ \t]*|[ \t,]*{_TAG}(?:[ \t]*,[ \t,]*{_TAG}){{0,{MAX_ENTITY_TAGS - 1}}}'
                           r'[ \t,]*)$')
#: An entity-tag's characters are RFC 9110's ``etagc``, obs-text (bytes 0x80-0xFF, as a header decoded
#: as Latin-1 holds them) included: such a tag was a 400 where it is a 412 (found by a probe).
_ETAG = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")[ \t]*')
#: Whitespace and empty list elements, which RFC 9110 (5.6.1.2) has recipients accept: ``"a", , "b"``.
_LIST_GAP = re.compile(r'[ \t,]*')

CACHE_REVALIDATE = "private, no-cache"
CACHE_IMMUTABLE = "private, max-age=31536000, immutable"
MAX_CURSOR_KEY = MAX_SEQ


def add_vary(response: Response, field: str) -> None:
    """Name ``field`` in the response's ``Vary`` (once, keeping what is there): caches must key the
    response on that request header."""
    vary = {v.strip() for v in response.headers.get("Vary", "").split(",") if v.strip()}
    if field not in vary and "*" not in vary:
        response.headers["Vary"] = ", ".join(sorted(vary | {field}))


#: The entity-tag a refused conditional header shows as an example: a version's, and a FHIR one's.
EXAMPLE_ETAG = '"3-0a1b2c3d4e5f6a7b"'
EXAMPLE_FHIR_ETAG = 'W/"3"'


def parse_etag_list(header: str | None, name: str = "If-Match", example: str = EXAMPLE_ETAG) -> list[str] | None:
    """Parse ``If-Match``/``If-None-Match``: one pass over the header, each step anchored where the last
    ended. Weak tags are kept with their ``W/`` prefix so a strong comparison never matches them. A
    malformed header is a 400 naming ``name``; only SP and HTAB count as white space (RFC 9110 5.6.3:
    a no-break space around a tag was accepted until the list's syntax was published). ``example`` is the
    entity-tag a refusal shows (FHIR's differ)."""
    if header is None:
        return None
    header = header.strip(" \t")
    if header == "*":
        return ["*"]
    tags: list[str] = []
    position = _LIST_GAP.match(header).end()  # type: ignore[union-attr]  # matches the empty string
    while position < len(header):
        match = _ETAG.match(header, position)
        if not match or (match.end() < len(header) and header[match.end()] != ","):
            raise ApiError(400, "Malformed entity-tag list in a conditional header",
                           errors={name: [f"expected entity-tags such as {example}"]})
        tags.append((match.group(1) or "") + match.group(2))
        if len(tags) > MAX_ENTITY_TAGS:
            raise ApiError(400, "Too many entity-tags in a conditional header",
                           errors={name: [f"at most {MAX_ENTITY_TAGS} entity-tags"]})
        position = _LIST_GAP.match(header, match.end()).end()  # type: ignore[union-attr]
    if not tags:  # names the header as a malformed list does (an empty one named nothing; adversarial probe)
        raise ApiError(400, "Empty entity-tag list in a conditional header",
                       errors={name: [f"empty: send an entity-tag such as {example}"]})
    return tags


def if_match() -> list[str] | None:
    return parse_etag_list(request.headers.get("If-Match"))


def if_none_match() -> list[str] | None:
    """A write's ``If-None-Match`` entity tags (a malformed header is a 400 naming it, as If-Match's is)."""
    return parse_etag_list(request.headers.get("If-None-Match"), "If-None-Match")


def not_modified(etag: str) -> bool:
    """Weak comparison, as RFC 9110 prescribes for If-None-Match."""
    return none_match(request.headers.get("If-None-Match"), etag)


def none_match(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header value names ``etag`` (weakly); a malformed header never does."""
    if header is None:
        return False
    try:
        tags = parse_etag_list(header) or []
    except ApiError:
        return False
    return names_etag(tags, etag)


#: How the writes that have no strong entity-tag document their 412 (:func:`check_untagged_preconditions`).
UNTAGGED_PRECONDITION = ("If-Match was sent, and nothing here has an entity-tag it can match (only `*`, on a "
                         "resource that exists), or If-None-Match `*` on one that exists")


def check_untagged_preconditions(*, exists: bool) -> None:
    """``If-Match`` and ``If-None-Match`` on a request to a resource with no strong entity-tag: key
    administration (a key's ETag is weak) and the POSTed computations (dose checks, CDS Hooks), which
    have no representation. RFC 9110 13.1.1: an origin server MUST evaluate them; these ignored both,
    malformed lists included, and a revocation "only if the key is still as I read it" went ahead on
    any tag (a docs probe). Both are parsed (a malformed list is a 400 naming it); ``If-Match`` is then
    satisfied only by ``*`` on a resource that ``exists`` (a weak or absent entity-tag never matches a
    strong comparison), and ``If-None-Match: *`` fails on one that exists."""
    match, none = if_match(), if_none_match()
    if match is not None and not (exists and "*" in match):
        detail = ("this resource's entity-tag is weak, which never satisfies If-Match: send *" if exists
                  else "nothing here has an entity-tag to match")
        raise ApiError(412, "If-Match names no current entity-tag of this resource: nothing was done",
                       errors={"If-Match": [detail]})
    if none is not None and exists and "*" in none:
        raise ApiError(412, "If-None-Match: * and the resource exists: nothing was done",
                       errors={"If-None-Match": ["the resource exists"]})


def read_precondition_failure(etag: str | None, *, weak: bool = False) -> ApiError | None:
    """A GET's or HEAD's ``If-Match`` evaluated against the ETag of what it would answer (RFC 9110
    13.1.1: an origin server MUST evaluate it, and 13.2.2 puts it before ``If-None-Match``): the 412
    (or, for a malformed header, the 400 naming it) it calls for, or ``None`` when the read may be served.
    Reads acted on no ``If-Match`` before, so a client that asked "only if it is still this version"
    was served whatever was in effect now.

    The comparison is strong, as the RFC prescribes: a weak ETag (lists, pick lists) is matched only by
    ``*``, and ``*`` by any representation. ``weak`` compares weakly instead, for the FHIR face: FHIR's
    ETags are all weak (``W/"<versionId>"``) and FHIR clients send them in ``If-Match`` by convention
    (version-aware updates), so under the strong rule a FHIR read could only ever answer ``*`` or 412,
    even to the ETag it had just served (found in review)."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    try:
        # FHIR's ETags are W/"<versionId>": its example, not this API's (found by a probe)
        tags = parse_etag_list(header, example=EXAMPLE_FHIR_ETAG if weak else EXAMPLE_ETAG) or []
    except ApiError as exc:
        return exc
    if "*" in tags or (etag is not None and (names_etag(tags, etag) if weak else
                                             (not etag.startswith("W/") and etag in tags))):
        return None
    if etag is None:
        detail = "this response has no entity-tag; only * can match"
    elif etag.startswith("W/") and not weak:
        detail = (f"the current ETag {etag} is weak, and a weak entity-tag never satisfies If-Match (strong "
                  "comparison): send * or read a version by its own URL")
    else:
        detail = f"does not match the current ETag {etag}"
    return ApiError(412, "If-Match names no current entity-tag of this resource: the read is not served",
                    errors={"If-Match": [detail]}, current_etag=etag, current_version=g.get("served_version"))


def json_response(body: str | bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(body, status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def version_response(version: StoredVersion, status: int = 200, *, cache: str = CACHE_REVALIDATE,
                     headers: Mapping[str, str] | None = None) -> Response:
    """Serve a stored version's bytes with its ETag, or 304 when the client already has them. The
    version is remembered for a read's 412 (``current_version``, as a write's 412 names it)."""
    g.served_version = version.version
    all_headers = {"ETag": version.etag, "Cache-Control": cache, **(headers or {})}
    if status == 200 and request.method in ("GET", "HEAD") and not_modified(version.etag):
        response = Response(status=304)
        for name, value in all_headers.items():
            response.headers[name] = value
        return response
    return json_response(version.document, status, all_headers)


# ------------------------------------------------------------------------------------ cursors


def decode_cursor(kind: str, token: str, param: str = "cursor") -> tuple[Any, str]:
    """Return ``(key, direction)``; a bogus or foreign cursor is a 422 naming the parameter."""
    key, direction, _ = decode_cursor_with(kind, token, param)
    return key, direction


def decode_cursor_with(kind: str, token: str, param: str = "cursor", extra: tuple[str, ...] = ()
                       ) -> tuple[Any, str, dict[str, str]]:
    """``(key, direction, extras)`` (:func:`protocols.paging.decode_cursor`); a cursor this listing did
    not issue is a 422 naming ``param``."""
    try:
        return paging.decode_cursor(kind, token, extra)
    except paging.InvalidCursor as exc:
        raise ApiError(422, "The cursor is not valid for this listing",
                       errors={param: ["not a cursor issued by this endpoint"]}) from exc


def request_base_url() -> str:
    """The request's URL without its query, as a URI (ASCII): Werkzeug's ``base_url`` is an IRI, whose
    host ``Host: xn--e1a.com`` decodes to ``\u0435.com`` (a Cyrillic e). Put in a ``Link`` or ``Content-Location``
    header, it is no Latin-1, and gunicorn answered every paged list with its own 500 (found by an
    adversarial probe). A host that is no valid IDNA (``xn--zz.com``) made the decoding itself raise (a
    500 too; found in review): the URL is then built from the host as sent."""
    return _as_uri(lambda: request.base_url, request.root_path + request.path)


def request_root_url() -> str:
    """The application's root URL as a URI (see :func:`request_base_url`)."""
    return _as_uri(lambda: request.url_root, request.root_path + "/")


def _as_uri(iri: Callable[[], str], path: str) -> str:
    try:
        return str(iri_to_uri(iri()))
    except UnicodeError:
        host = request.host if request.host.isascii() and request.host.isprintable() else ""
        return str(iri_to_uri(f"{request.scheme}://{host}{path}"))


def page_url(params: Mapping[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v is not None}
    query = urlencode(merged, doseq=True)
    base = request_base_url()
    return f"{base}?{query}" if query else base


def link_header(links: Iterable[tuple[str, str | None]]) -> str | None:
    parts = [f'<{url}>; rel="{rel}"' for rel, url in links if url]
    return ", ".join(parts) or None


def list_response(items_json: Iterable[str], *, next_url: str | None, prev_url: str | None,
                  page_size: int, extra: Mapping[str, Any] | None = None) -> Response:
    """Assemble a page from stored JSON documents without re-serializing them."""
    meta = {"page_size": page_size, "next": next_url, "prev": prev_url, **(extra or {})}
    body = '{"items":[' + ",".join(items_json) + "]," + json.dumps(meta, separators=(",", ":"))[1:]
    response = json_response(body, headers={"Cache-Control": CACHE_REVALIDATE})
    link = link_header([("next", next_url), ("prev", prev_url)])
    if link:
        response.headers["Link"] = link
    return response


def reads_cursor(reader: Callable[..., Any]) -> Callable[[_View], _View]:
    """Mark a listing view with ``reader(query, **path_params)``, the function it reads its cursor with,
    so that a 422 for its other query parameters names a bad cursor too (:func:`api.errors.cursor_errors`).
    Put it next to ``def``: the decorators above copy the mark onto their wrappers."""
    def mark(view: _View) -> _View:
        setattr(view, CURSOR_READER, reader)
        return view
    return mark


#: Query parameters a listing's cursor is not bound to: how many items a page holds, whether to count them.
UNBOUND_PARAMS = frozenset({"cursor", "page_size", "count"})
#: The cursor field holding :func:`query_digest` of the query it was issued for.
QUERY_FIELD = "q"


def query_digest(params: Iterable[tuple[str, str]]) -> str:
    """A short digest of a listing's query parameters (but :data:`UNBOUND_PARAMS`), whatever their order.

    A cursor carries the digest of the query whose page issued it, and is refused with another: a key
    (a protocol's place, its rank) means something only among the results of its own filters, and a
    ``drug=ketamine`` cursor read with ``drug=esketamine``, or a search's with another ``q`` or
    ``as_of``, skipped most of the results without a word (found by a probe)."""
    bound = sorted((name, value) for name, value in params if name not in UNBOUND_PARAMS)
    return hashlib.sha256(json.dumps(bound).encode()).hexdigest()[:16]


def _read_bound_cursor(kind: str, token: str) -> tuple[Any, str]:
    """``(key, direction)`` of a listing cursor issued for this request's own query (cursors issued
    before queries were bound carry no digest and are read as before)."""
    key, direction, extras = decode_cursor_with(kind, token, extra=(QUERY_FIELD,))
    if QUERY_FIELD in extras and extras[QUERY_FIELD] != query_digest(request.args.items(multi=True)):
        raise ApiError(422, "The cursor is not valid for this listing", errors={"cursor": [
            "issued for another query: keep the parameters of the link that carried it (page_size and count "
            "may change), or start again without a cursor"]})
    return key, direction


def read_cursor(kind: str, query: Mapping[str, Any], max_key: int = MAX_CURSOR_KEY) -> tuple[int | None, int | None]:
    """``(after, before)`` keys from the ``cursor`` query parameter, if any. ``max_key`` is the
    largest value the key's column holds (``protocols.models.MAX_VERSION`` for version numbers)."""
    if "cursor" not in query:
        return None, None
    key, direction = _read_bound_cursor(kind, query["cursor"])
    if not paging.is_key(key, max_key):
        raise ApiError(422, "The cursor is not valid for this listing", errors={"cursor": ["bad key"]})
    return (key, None) if direction == "n" else (None, key)


def read_composite_cursor(kind: str, query: Mapping[str, Any], max_keys: Sequence[int],
                          optional: int = 0) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Like :func:`read_cursor` for keys of several integers (e.g. ``(rank, seq)``), each at most its
    ``max_keys`` entry (a rank is a 32-bit integer on PostgreSQL, a sequence 64-bit); the last
    ``optional`` parts may be missing (cursors issued before they were added)."""
    if "cursor" not in query:
        return None, None
    key, direction = _read_bound_cursor(kind, query["cursor"])
    if not paging.is_composite_key(key, max_keys, optional):
        raise ApiError(422, "The cursor is not valid for this listing", errors={"cursor": ["bad key"]})
    return (tuple(key), None) if direction == "n" else (None, tuple(key))


def _up_to(params: Mapping[str, str], kind: str, key: Any, bound: Mapping[str, str]) -> str:
    """The page that ends with ``key``'s item: the ``prev`` of an empty page read after ``key``.

    ``key`` is the last item of the page before (the one that linked here), which this page never
    held: a ``prev`` cursor *at* it, items strictly before it, skipped it when walking back, though it
    was still listed (found by an adversarial probe). Integer keys run newest first, so the page before
    ``key - 1`` holds ``key``; below 1 that is the first page. A ranked (composite) key reads a pinned
    moment, where no write empties a page, and keeps the cursor at it."""
    if isinstance(key, int) and not isinstance(key, bool):
        if key <= 1:
            return page_url(params)
        return page_url(params, cursor=paging.encode_cursor(kind, key - 1, "p", **bound))
    return page_url(params, cursor=paging.encode_cursor(kind, key, "p", **bound))


def page_links(kind: str, keys: Sequence[int | Sequence[int]], *, has_more: bool, after: Any | None,
               before: Any | None, pinned: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """Next/prev URLs for a keyset page whose items carry ``keys`` in display order; ``pinned``
    parameters are added to the request's own (a moment the walk must keep reading). ``after`` and
    ``before`` are the cursor keys the page was read from.

    A page left empty by writes since its cursor was issued keeps a way on: an empty page *before* its
    key has nothing before it, so its ``next`` is the first page (which holds the key's item, if it is
    still listed); an empty page *after* its key links ``prev`` to the page that ends with that key
    (:func:`_up_to`). It had no links at all, and a client following ``prev`` to a page emptied by a
    retirement was told the list had ended (found by a probe)."""
    params = {**{k: v for k, v in request.args.items(multi=True) if k != "cursor"}, **(pinned or {})}
    bound = {QUERY_FIELD: query_digest(params.items())}  # the query the links' cursors belong to
    if not keys:
        return (None if before is None else page_url(params),
                None if after is None else _up_to(params, kind, after, bound))
    more_after = has_more if before is None else True
    more_before = (after is not None) if before is None else has_more
    next_url = page_url(params, cursor=paging.encode_cursor(kind, keys[-1], "n", **bound)) if more_after else None
    prev_url = page_url(params, cursor=paging.encode_cursor(kind, keys[0], "p", **bound)) if more_before else None
    return next_url, prev_url
