"""A real gunicorn with two worker processes: a revoked key is refused by *both* at once.

This is what "no per-process cache" buys: the revocation is written by another process (the CLI),
and every following request, on fresh connections, answers 401 whichever worker takes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(database_url: str, tmp_path: Path, app: str = "api:create_app()",
            workers: int = 2) -> Iterator[tuple[str, Path]]:
    """gunicorn with the production config and two workers, its output (every log line) in a file."""
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {**os.environ, "PROTOCOLS_DATABASE_URL": database_url, "PROTOCOLS_RATE_LIMIT": "off",
           "PROTOCOLS_ANONYMOUS_READS": "false"}
    env.pop("PROTOCOLS_REDIS_URL", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", str(ROOT / "gunicorn.conf.py"), "--workers", str(workers),
             "--bind", f"127.0.0.1:{port}", app], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{base}/v1/health", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert time.monotonic() < deadline, "gunicorn did not start:\n" + log_path.read_text()
            time.sleep(0.1)
        yield base, log_path
    finally:
        process.send_signal(signal.SIGINT)  # quick shutdown: nothing is in flight any more
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def gunicorn_server(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with serving(database_url, tmp_path) as served:
        yield served


def request_lines(log_path: Path, wanted: Callable[[dict[str, Any]], bool], count: int) -> list[dict[str, Any]]:
    """The request lines ``wanted`` picks, once ``count`` of them are written (or after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        text = log_path.read_text()
        complete = text[:text.rfind("\n") + 1]  # not a line still being written
        lines = [json.loads(line) for line in complete.splitlines()  # each line parses on its own
                 if line.startswith("{") and '"logger":"api.access"' in line]
        found = [line for line in lines if wanted(line)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def worker_pids(log_path: Path, request_ids: set[str]) -> dict[str, int]:
    """request id -> pid of the worker that answered it, from the app's JSON request log lines."""
    found: dict[str, int] = {}
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and '"logger":"api.access"' in line:
            entry = json.loads(line)
            if entry.get("request_id") in request_ids:
                found[entry["request_id"]] = entry["pid"]
    return found


def fresh_gets(url: str, key: str, count: int = 4) -> list[tuple[str, int]]:
    """``count`` simultaneous requests: while one sync worker is busy, the other must accept, so both
    workers get traffic even when the kernel keeps waking the same one for sequential requests."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda _: fresh_get(url, key), range(count)))


def fresh_get(url: str, key: str) -> tuple[str, int]:
    """One request on a new TCP connection (no keep-alive) with its own request id."""
    request_id = uuid.uuid4().hex
    response = requests.get(url, timeout=10, headers={"Authorization": f"Bearer {key}", "X-Request-ID": request_id,
                                                      "Connection": "close"})
    return request_id, response.status_code


@pytest.mark.slow
def test_revocation_reaches_every_gunicorn_worker(gunicorn_server, app, make_key):
    base, log_path = gunicorn_server
    key = make_key(["protocols:read"], name="two-worker-key")
    before: dict[str, int] = {}
    for _ in range(100):  # until both workers have served the key (the kernel picks the worker)
        before.update(fresh_gets(f"{base}/v1/protocols", key))
        if len(set(worker_pids(log_path, set(before)).values())) == 2:
            break
    assert set(before.values()) == {200}
    assert len(set(worker_pids(log_path, set(before)).values())) == 2, "only one worker answered"

    key_id = next(line.split()[0] for line in
                  app.test_cli_runner().invoke(args=["keys", "list"]).output.splitlines() if "two-worker-key" in line)
    result = app.test_cli_runner().invoke(args=["keys", "revoke", key_id])
    assert result.exit_code == 0, result.output

    after: dict[str, int] = {}
    for _ in range(100):
        after.update(fresh_gets(f"{base}/v1/protocols", key))
        if len(after) >= 10 and len(set(worker_pids(log_path, set(after)).values())) == 2:
            break
    assert set(after.values()) == {401}
    assert len(set(worker_pids(log_path, set(after)).values())) == 2, "only one worker answered"
    assert key not in log_path.read_text()


def test_each_request_has_one_json_line_whatever_the_path(gunicorn_server):
    """gunicorn's own escaping covers '"' only: a path with a newline split its line in two and one
    ending in a backslash swallowed the closing quote (adversarial probe). Every line is JSON now, and
    each request has one: the app's request line, written by gunicorn's access log (with the bytes sent),
    where the app and gunicorn each wrote one. A non-ASCII path reads as the app reads it (UTF-8), not as
    WSGI's Latin-1 (a review)."""
    base, log_path = gunicorn_server
    paths = ["/v1/a%0Ab", "/v1/c%5C", "/v1/q%22uote", "/v1/tab%09end", "/v1/%C2%85nel", "/v1/caf%C3%A9"]
    for path in paths:
        requests.get(f"{base}{path}", timeout=10)
    expected = ["/v1/a\nb", "/v1/c\\", '/v1/q"uote', "/v1/tab\tend", "/v1/\x85nel", "/v1/caf\u00e9"]
    logged = request_lines(log_path, lambda line: line["path"] in expected, len(expected))
    assert sorted(line["path"] for line in logged) == sorted(expected), logged
    assert all(line["status"] == 404 and "bytes" in line for line in logged), logged
    assert '"gunicorn.access"' not in log_path.read_text()


def _raw(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_request_gunicorn_refuses_has_one_line_with_the_id_of_its_error_body(gunicorn_server):
    """A review: gunicorn logs only the requests it has parsed, so a request line or headers it refused
    (too long, malformed) had no line at all, though the docs promised one."""
    base, log_path = gunicorn_server
    refused = [(414, "-", b"GET /v1/protocols/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
               (400, "-", b"GARBAGE\r\n\r\n"),
               # refusals gunicorn logs itself, its request taken from the exception: they got two lines
               (400, "POST",
                b"POST /v1/protocols HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"),
               (400, "GET", b"GET /v1/protocols HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")]
    ids = {}
    for status, method, data in refused:
        answer = _raw(base, data)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:100]
        ids[json.loads(answer.partition(b"\r\n\r\n")[2])["request_id"]] = (status, method)
    requests.get(f"{base}/v1/health", timeout=10, headers={"X-Request-ID": "rq-last"})  # every line before it
    request_lines(log_path, lambda line: line["request_id"] == "rq-last", 1)
    time.sleep(0.5)  # the workers log independently: a second line of a refusal would be written by now
    logged = request_lines(log_path, lambda line: line["request_id"] in ids, len(ids))
    assert sorted((line["request_id"], line["status"], line["method"]) for line in logged) == sorted(
        (request_id, status, method) for request_id, (status, method) in ids.items()), logged


def test_a_response_that_fails_before_its_first_byte_has_one_line_the_500_under_its_request_id(
        database_url, tmp_path, make_key):
    """A review: a stream whose first chunk raised was logged twice, as the 200 its start_response said
    (under the client's request id, with its key's name) and as gunicorn's 500 (under a fresh id that its
    body carried, with no name). One line now, the 500 the client got, under the client's id."""
    key = make_key(["protocols:read"], name="exporting-key")
    with serving(database_url, tmp_path, "tests.api.failing_export_app:app") as (base, log_path):
        response = requests.get(f"{base}/fhir/R4/$export", timeout=10,
                                headers={"Authorization": f"Bearer {key}", "X-Request-ID": "rq-failed-export"})
        assert response.status_code == 500 and response.json()["request_id"] == "rq-failed-export"
        requests.get(f"{base}/v1/health", timeout=10, headers={"X-Request-ID": "rq-after"})  # a line after it
        request_lines(log_path, lambda line: line["request_id"] == "rq-after", 1)
        logged = request_lines(log_path, lambda line: line["path"] == "/fhir/R4/$export", 1)
    assert [(line["request_id"], line["status"], line["actor"]) for line in logged] == [
        ("rq-failed-export", 500, "exporting-key")], logged


def test_a_failed_response_whose_client_is_gone_lends_its_request_id_to_no_later_request(
        database_url, tmp_path):
    """A review: a response that failed before its first byte keeps its facts for gunicorn's 500; when the
    failure ended in a socket error instead (the client gone), no 500 was answered, and the next refusal on
    that worker went out, and was logged, under the first client's request id."""
    with serving(database_url, tmp_path, "tests.api.failing_export_app:app", workers=1) as (base, log_path):
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{base}/broken-stream", timeout=10, headers={"X-Request-ID": "rq-client-gone"})
        answer = _raw(base, b"GARBAGE\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
        request_id = json.loads(answer.partition(b"\r\n\r\n")[2])["request_id"]
        assert request_id != "rq-client-gone"
        (line,) = request_lines(log_path, lambda line: line["request_id"] == request_id, 1)
        assert line["status"] == 400 and line["method"] == "-"
