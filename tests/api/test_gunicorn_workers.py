"""A real gunicorn with two worker processes: a revoked key is refused by *both* at once.

This is what "no per-process cache" buys: the revocation is written by another process (the CLI),
and every following request, on fresh connections, answers 401 whichever worker takes it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def gunicorn_server(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {**os.environ, "PROTOCOLS_DATABASE_URL": database_url, "PROTOCOLS_RATE_LIMIT": "off",
           "PROTOCOLS_ANONYMOUS_READS": "false"}
    env.pop("PROTOCOLS_REDIS_URL", None)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", str(ROOT / "gunicorn.conf.py"), "--workers", "2", "--bind", f"127.0.0.1:{port}",
             "api:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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
    where the app and gunicorn each wrote one."""
    base, log_path = gunicorn_server
    paths = ["/v1/a%0Ab", "/v1/c%5C", "/v1/q%22uote", "/v1/tab%09end", "/v1/%85nel"]
    for path in paths:
        requests.get(f"{base}{path}", timeout=10)
    expected = ["/v1/a\nb", "/v1/c\\", '/v1/q"uote', "/v1/tab\tend", "/v1/\x85nel"]  # U+0085: a str line break
    deadline = time.monotonic() + 10
    while True:  # the lines of the start-up health checks are there too: wait for these
        text = log_path.read_text()
        complete = text[:text.rfind("\n") + 1]  # not a line still being written
        lines = [json.loads(line) for line in complete.splitlines()  # each line parses on its own
                 if line.startswith("{") and '"logger":"api.access"' in line]
        logged = [line for line in lines if line["path"] in expected]
        if len(logged) >= len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(line["path"] for line in logged) == sorted(expected), logged
    assert all(line["status"] == 404 and "bytes" in line for line in logged), logged
    assert '"gunicorn.access"' not in text
