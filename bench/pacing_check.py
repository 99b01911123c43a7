"""Is the p99 tail at light load the server's, or wrk's ``delay()`` pacing? (docs/performance.md)

Serves baseline (a) (bare Flask, no I/O) with the benchmark's gunicorn settings and measures it at
~20 % load twice with the same think-time pattern (64 keep-alive connections, each sleeping a random
0..400 ms before each request): once driven by wrk with the Lua ``delay()`` pacing bench/run.py used
until it moved to the open-loop generator (bench/openloop.py),
once by 64 Python client threads pinned to the load-generator CPU. Prints p50/p99 of both.

Usage: ``.venv/bin/python bench/pacing_check.py`` (about a minute).
"""

from __future__ import annotations

import http.client
import os
import random
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # sibling module: bench/ is not a package

CONNECTIONS = 64
MEAN_DELAY_MS = 200
SECONDS = 20.0


def python_clients(base: str, paths: list[str]) -> list[float]:
    host, port = base.split("//", 1)[1].split(":")
    latencies: list[float] = []
    stop = time.monotonic() + SECONDS

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port))
        while time.monotonic() < stop:
            time.sleep(random.uniform(0, 2 * MEAN_DELAY_MS / 1000))
            started = time.perf_counter()
            conn.request("GET", random.choice(paths))
            conn.getresponse().read()
            latencies.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=client) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(latencies)


def main() -> int:
    os.sched_setaffinity(0, {int(run.LOADGEN_CPU)})
    settings = run.Settings(**{**asdict(run.Settings()), "runs": 1, "duration": 4, "warmup": 1})
    with run.sqlite_backend() as backend:
        run.prepare_database(backend.url, 200)
        paths = [f"/a/{protocol_id}" for protocol_id, _ in run.catalog_rows(backend.url)]
        with run.baseline_server(backend.url, settings) as server:
            paced = run.measure("(a) paced by wrk delay()", server.base, [f"GET\t{p}\t" for p in paths], settings,
                                delay_ms=MEAN_DELAY_MS, connections=CONNECTIONS).summary()
            own = python_clients(server.base, paths)
    print(f"wrk delay():    {paced['rps']['median']:.0f} req/s  p50 {paced['p50_ms']['median']:.2f} ms"
          f"  p99 {paced['p99_ms']['median']:.2f} ms")
    print(f"python clients: {len(own) / SECONDS:.0f} req/s  p50 {own[len(own) // 2]:.2f} ms"
          f"  p99 {own[int(len(own) * 0.99)]:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
