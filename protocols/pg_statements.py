"""Single statements on a PostgreSQL connection through libpq's prepared-statement calls.

Why: every hot request sends one to three single statements on a thread's own autocommit connection
(:class:`protocols.db.ReadConnections`): the version in effect, the API-key lookup, a revision's head
and its append. Through a psycopg cursor each one cost ~50 µs of the worker's CPU (measured on this
machine, same statement, 8 alternating rounds of 5,000); psycopg drives libpq non-blocking and waits
in a generator, which is most of that. libpq's own blocking ``PQexecPrepared`` cost ~27 µs, and it
releases the GIL while it waits (psycopg's C build calls it ``nogil``), so the worker's other threads
run meanwhile exactly as before. On a 304 that is most of what separates it from the bare-Flask
baseline (docs/performance.md).

What stays psycopg's: the values. Parameters are dumped by a psycopg ``Transformer`` of the same
connection (the same dumpers and type OIDs a cursor would send, so a ``datetime`` is still a
``timestamptz``), rows are loaded by its loaders, and a failed statement raises the exception class
psycopg would raise for its SQLSTATE (``error_from_result``); a connection that broke during the call
raises ``OperationalError``, as psycopg does. ``tests/protocols/test_db.py`` compares values, errors
and disconnects with a psycopg cursor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import OperationalError, ProgrammingError, adapt, errors, pq
from psycopg.adapt import PyFormat

#: Statements prepared per connection at most; past that a statement runs unprepared (the service
#: sends a handful of fixed statements, so the cap only guards against a caller building SQL).
MAX_PREPARED = 64
_PLACEHOLDER = re.compile(r"%\((?P<name>[^)]+)\)s|%s|%%")


class _Converted:
    """A statement in driver paramstyle (``%s`` or ``%(name)s``) as libpq wants it (``$1`` …)."""

    __slots__ = ("count", "names", "query")

    def __init__(self, sql: str, encoding: str) -> None:
        names: list[str] = []
        positional = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal positional
            name = match.group("name")
            if name is not None:
                if name not in names:
                    names.append(name)
                return f"${names.index(name) + 1}"
            if match.group(0) == "%%":
                return "%"
            positional += 1
            return f"${positional}"

        self.query = _PLACEHOLDER.sub(replace, sql).encode(encoding)  # the connection's, as psycopg does
        if names and positional:
            raise ProgrammingError("a statement mixes named and positional parameters")  # as psycopg
        self.names = tuple(names)
        self.count = positional

    def values(self, params: Sequence[Any] | Mapping[str, Any]) -> Sequence[Any]:
        # A mapping for %s placeholders (or a sequence for named ones) would send no parameters, and
        # the server's protocol error would read as "database unavailable".
        if isinstance(params, Mapping):
            if self.count:
                raise ProgrammingError("a mapping of parameters for %s placeholders: send a sequence")
            missing = [name for name in self.names if name not in params]
            if missing:
                raise ProgrammingError(f"no value for the parameters {missing}")
            return [params[name] for name in self.names]
        if self.names:
            raise ProgrammingError("a sequence of parameters for %(name)s placeholders: send a mapping")
        if len(params) != self.count:
            raise ProgrammingError(f"the statement takes {self.count} parameters, {len(params)} given")
        return params


class PreparedStatements:
    """One connection's prepared statements (one thread uses a connection at a time)."""

    def __init__(self, connection: Any) -> None:
        self.pgconn: Any = connection.pgconn
        self.encoding: str = connection.info.encoding
        self.transformer: Any = adapt.Transformer(connection)
        self._converted: dict[str, _Converted] = {}
        self._names: dict[tuple[str, tuple[int, ...]], bytes] = {}

    def fetch_one(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of ``sql`` (loaded by psycopg's loaders), or None; errors as psycopg's."""
        converted = self._converted.get(sql)
        if converted is None:
            converted = self._converted[sql] = _Converted(sql, self.encoding)
        values = converted.values(params)
        tx = self.transformer
        dumped = tx.dump_sequence(values, [PyFormat.AUTO] * len(values))
        key = (sql, tx.types)
        name = self._names.get(key)
        try:
            if name is None and len(self._names) < MAX_PREPARED:
                name = f"protocols_{len(self._names)}".encode()
                self._check(self.pgconn.prepare(name, converted.query, tx.types))
                self._names[key] = name
            if name is None:
                result = self.pgconn.exec_params(converted.query, dumped, tx.types, tx.formats)
            else:
                result = self.pgconn.exec_prepared(name, dumped, tx.formats)
        except MemoryError as exc:
            # libpq returned no result at all: the request could not be sent (a connection reset since
            # the liveness check) or, rarely, memory ran out. psycopg's C build says MemoryError for
            # both; a cursor says OperationalError ("sending query failed"), which is what makes the
            # service answer 503 and retry a read on a fresh connection.
            raise OperationalError(self.pgconn.get_error_message(self.encoding) or str(exc)) from exc
        self._check(result)
        if result.status != pq.ExecStatus.TUPLES_OK or result.ntuples == 0:
            return None
        tx.set_pgresult(result)
        row: tuple[Any, ...] = tx.load_row(0, tuple)
        tx.set_pgresult(None)
        return row

    def _check(self, result: Any) -> None:
        if result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            return
        if self.pgconn.status == pq.ConnStatus.BAD:
            # The connection broke during the call (server gone, backend terminated): psycopg raises
            # OperationalError here, which is what marks an error as "database unavailable".
            raise OperationalError(result.get_error_message(self.encoding) or "the connection is lost")
        raise errors.error_from_result(result, encoding=self.encoding)
