"""A lock held elsewhere (an open transaction in psql, a migration's ``ACCESS EXCLUSIVE`` lock, another
process writing to the SQLite file) bounds how long a request waits: after the lock timeout
(``PROTOCOLS_DB_LOCK_TIMEOUT_MS``: PostgreSQL's ``lock_timeout``, SQLite's busy timeout) it answers
503 with ``Retry-After`` and has written nothing, instead of waiting with every other request piled up
behind it. Run here with a 300 ms timeout; production's is 5 s."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.factories import protocol_payload
from tests.reliability.locks import lock_held

LOCK_TIMEOUT_MS = 300
HUNG_S = 15.0  # far beyond any lock timeout here: a request still running then waits without end


def answered(call: Callable[[], Any]) -> Any:
    """``call()``'s response, which must come before ``HUNG_S``."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(HUNG_S)
    assert not worker.is_alive(), f"the request still waits for the lock after {HUNG_S} s"
    assert result, "the request raised instead of answering"
    return result[0]


def assert_busy(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert int(response.headers["Retry-After"]) > 0
    body = response.get_json()
    assert body["code"] == 503 and body["message"] and body["request_id"]


@pytest.fixture
def client(make_app: Any) -> Any:
    return make_app(PROTOCOLS_DB_LOCK_TIMEOUT_MS=LOCK_TIMEOUT_MS).test_client()


def test_a_write_behind_a_lock_held_elsewhere_answers_503_and_writes_nothing(client, database_url, backend):
    created = client.post("/v1/protocols", json=protocol_payload("locked-out"))
    assert created.status_code == 201
    etag = created.headers["ETag"]
    revision = protocol_payload("locked-out", title="written once the lock is gone")
    with lock_held(database_url, backend):  # the change-counter row / SQLite's write lock
        assert_busy(answered(lambda: client.put("/v1/protocols/locked-out", json=revision,
                                                headers={"If-Match": etag})))
        assert_busy(answered(lambda: client.post("/v1/protocols", json=protocol_payload("locked-out-too"))))
    versions = client.get("/v1/protocols/locked-out/versions").get_json()["items"]
    assert [v["version"] for v in versions] == [1]
    assert client.get("/v1/protocols/locked-out-too").status_code == 404
    retried = client.put("/v1/protocols/locked-out", json=revision, headers={"If-Match": etag})
    assert retried.status_code == 201 and retried.get_json()["version"] == 2


def test_a_read_behind_an_exclusive_lock_answers_503_on_postgresql_and_reads_on_sqlite(client, database_url,
                                                                                         backend):
    created = client.post("/v1/protocols", json=protocol_payload("read-while-locked"))
    assert created.status_code == 201
    with lock_held(database_url, backend, "LOCK TABLE protocol_versions IN ACCESS EXCLUSIVE MODE"):
        for path in ("/v1/protocols/read-while-locked", "/v1/protocols/read-while-locked/versions"):
            response = answered(functools.partial(client.get, path))
            if backend == "postgres":
                assert_busy(response)
            else:  # WAL: readers never wait for the writer
                assert response.status_code == 200
    assert client.get("/v1/protocols/read-while-locked").status_code == 200
