"""Real servers for reliability tests: gunicorn with several workers, a killable TCP proxy, figures.

Everything here is bounded and cleans up after itself: servers bind a free port on 127.0.0.1, are
started in their own process group and killed (group-wide, by pid) when the ``with`` block ends,
whether the test passed or not. Nothing here talks to any address other than the loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
FIGURES_FILE = ROOT / "var" / "reliability-figures.json"
GUNICORN = Path(sys.executable).with_name("gunicorn")
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mint_key(database_url: str, name: str = "reliability") -> str:
    """An all-scopes API key in the test's database, for ``Authorization: Bearer``."""
    from protocols import keys
    from protocols.db import make_database

    db = make_database(database_url)
    try:
        return str(keys.create_key(db, f"{name}-{os.getpid()}-{time.monotonic_ns()}",
                                   ["protocols:read", "protocols:write", "admin"])[1])
    finally:
        db.dispose()


@dataclass
class Server:
    """A running gunicorn; ``url`` is its base URL, ``session()`` an authenticated client."""

    process: subprocess.Popen[bytes]
    url: str
    key: str
    log_path: Path

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session

    def worker_pids(self) -> list[int]:
        """The gunicorn workers (children of the master)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""


@contextlib.contextmanager
def gunicorn(database_url: str, tmp_path: Path, *, workers: int = 3, timeout_s: int = 20,
             env: dict[str, str] | None = None, key: str | None = None) -> Iterator[Server]:
    """Run ``gunicorn --workers N 'api:create_app()'`` on a free port against ``database_url``."""
    port = free_port()
    log_path = tmp_path / f"gunicorn-{port}.log"
    args = [str(GUNICORN), "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
            "--timeout", str(timeout_s), "--graceful-timeout", "2", "--log-level", "warning"]
    config = ROOT / "gunicorn.conf.py"
    if config.exists():
        args[1:1] = ["--config", str(config)]
    args.append("api:create_app()")
    process_env = {**os.environ, "PROTOCOLS_DATABASE_URL": database_url, "PROTOCOLS_LOG_JSON": "false",
                   "PROTOCOLS_RATE_LIMIT": "off", **(env or {})}
    process_env.pop("PROTOCOLS_REDIS_URL", None)
    key = key or mint_key(database_url)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(args, cwd=ROOT, env=process_env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", key, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop(process)


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.process.returncode}:\n{server.log()}")
        try:
            if requests.get(f"{server.url}/openapi.json", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not become ready:\n{server.log()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process group we started: QUIT (gunicorn's quick shutdown), then KILL after a grace."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGQUIT)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stray workers of the group, if any


# ------------------------------------------------------------------------------------ TCP proxy


class TcpProxy:
    """A thread-based TCP proxy 127.0.0.1:<port> -> target, that can be cut and restored.

    ``cut()`` closes the listening socket *and* every established connection (the app sees its
    database vanish mid-conversation); ``restore()`` listens again on the same port. Used instead of
    stopping PostgreSQL, which other tests and engineers share.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.cuts = 0

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)

    def cut(self) -> None:
        self._drop()
        self.cuts += 1

    def _drop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            listener.close()
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.start()

    def close(self) -> None:
        self._drop()


# ------------------------------------------------------------------------------------ figures


def record_figures(section: str, backend: str, **values: Any) -> None:
    """Merge ``values`` under ``section.backend`` in the figures file (best effort, never fails a test)."""
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    lock_path = FIGURES_FILE.with_suffix(".lock")
    with lock_path.open("w") as lock:
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
        except ValueError:
            data = {}
        entry = data.setdefault(section, {}).setdefault(backend, {})
        entry.update(values)
        entry["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        FIGURES_FILE.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
