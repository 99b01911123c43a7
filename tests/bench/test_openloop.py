"""bench/openloop.py's accounting: every request scheduled in the window is answered, lost or
reported unfinished, and nothing else is.

The count of requests scheduled in the window used to be computed as duration x rate; how many ticks
fall inside the window depends on where it starts between two ticks, so the product was one too high
about half the time and a request that was never sent was reported as unfinished (an error that
failed the smoke run in CI). No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the generator expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        body = b"{}" if self.path != "/missing" else b""
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _openloop(base: str, tmp_path: Path, rate: float, path: str = "/ok") -> dict[str, Any]:
    requests = tmp_path / "requests.tsv"
    requests.write_text(f"GET\t{path}\t\n")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "openloop.py"), "--base", base,
                             "--requests", str(requests), "--rate", str(rate), "--duration", "0.4",
                             "--warmup", "0.13", "--connections", "4"],
                            capture_output=True, text=True, timeout=60, check=True)
    line = next(li for li in result.stdout.splitlines() if li.startswith("BENCH_RESULT "))
    data: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    return data


@pytest.mark.parametrize("rate", [997.3, 998.8, 1001.7, 1002.6, 333.3])
def test_every_scheduled_request_is_accounted_for_exactly(server: str, tmp_path: Path, rate: float) -> None:
    data = _openloop(server, tmp_path, rate)
    errors = data["errors"]
    assert errors == {"status": 0, "connect": 0, "lost": 0, "unfinished": 0}, data
    assert data["requests"] == data["scheduled"]
    assert abs(data["scheduled"] - 0.4 * rate) <= 1  # ticks in the window: duration x rate, give or take one


def test_error_statuses_are_counted(server: str, tmp_path: Path) -> None:
    data = _openloop(server, tmp_path, 500.0, path="/missing")
    assert data["errors"]["status"] == data["requests"] == data["scheduled"] > 0
