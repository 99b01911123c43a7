"""Open-loop latency at several fixed rates, for the app's GET or baseline (a), under chosen
gunicorn settings: the evidence behind the p99 verdict in docs/performance.md.

``bench/run.py`` measures p99 at one rate (70 % of the peak wrk measured closed-loop). This tool
asks the questions that verdict raises: where does the open-loop queue start to grow (the rate the
server sustains for evenly spaced arrivals), does bare Flask show the same tail at the same rate,
and do other worker layouts or models (``--workers 1 --threads 4``, ``--gunicorn-arg=--reuse-port``,
``--worker-class sync``: the generator then opens a connection per request) change it.
It also prints the generator's own CPU time (is the load generator the bottleneck?), how busy the
server's core was, and how the keep-alive connections spread over the workers.

Usage: ``.venv/bin/python bench/tail_check.py [--postgres] --rates 1600,2200,2600 [--seconds 10]
[--target app|a] [--workers 2] [--threads 2] [--worker-class gthread|sync]
[--gunicorn-arg=--reuse-port]`` (about 15 s per rate).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # sibling module: bench/ is not a package


@dataclass(frozen=True)
class Layout(run.Settings):
    extra_args: list[str] = field(default_factory=list)

    @property
    def gunicorn_args(self) -> list[str]:
        return [*super().gunicorn_args, *self.extra_args]


@contextmanager
def backend(postgres: bool) -> Iterator[run.Backend]:
    if postgres:
        with run.postgres_backend(run.DEFAULT_PG_ADMIN) as pg:
            yield pg
    else:
        with run.sqlite_backend() as lite:
            yield lite


def sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--rates", required=True, help="comma-separated requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--target", choices=("app", "a"), default="app")
    parser.add_argument("--workers", type=int, default=run.Settings.workers)
    parser.add_argument("--threads", type=int, default=run.Settings.threads)
    parser.add_argument("--worker-class", default=run.Settings.worker_class,
                        help="gthread (keep-alive) or sync (production's: one connection per request)")
    parser.add_argument("--gunicorn-arg", action="append", default=[])
    args = parser.parse_args(argv)
    layout = Layout(workers=args.workers, threads=args.threads, worker_class=args.worker_class,
                    extra_args=args.gunicorn_arg)
    with backend(args.postgres) as db:
        run.prepare_database(db.url, layout.small_catalog)
        ids = [pid for pid, _ in run.catalog_rows(db.url)]
        with run.baseline_server(db.url, layout) as base, run.app_server(db.url, layout) as app:
            server = app if args.target == "app" else base
            prefix = "/v1/protocols/" if args.target == "app" else "/a/"
            lines = [f"GET\t{prefix}{pid}\t" for pid in ids]
            requests = run.write_requests(lines)
            try:
                for rate in (float(r) for r in args.rates.split(",")):
                    command = ["taskset", "-c", run.LOADGEN_CPU, sys.executable, str(run.OPENLOOP),
                               "--base", server.base, "--requests", str(requests), "--rate", str(rate),
                               "--duration", str(args.seconds), "--warmup", "2", "--connections",
                               str(run.PACED_CONNECTIONS), "--server-cpu", run.SERVER_CPU,
                               *(["--fresh-connections"] if layout.worker_class == "sync" else [])]
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    with tempfile.TemporaryFile("w+") as out:
                        process = subprocess.Popen(command, stdout=out, text=True)
                        time.sleep(3)  # connections open, inside the measured window
                        spread = {pid: sockets(pid) for pid in server.worker_pids()}
                        process.wait()
                        out.seek(0)
                        match = re.search(r"BENCH_RESULT (\{.*\})", out.read())
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if not match:
                        raise SystemExit("the generator printed no result")
                    result = json.loads(match.group(1))
                    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                    lat = {k: round(v / 1000, 2) for k, v in result["latency_us"].items()}
                    busy = "not measured" if result["server_busy"] is None else f"{result['server_busy']:.0%}"
                    print(f"{args.target} @ {rate:.0f} req/s: latency ms {lat}, send lag ms {result['send_lag_ms']},"
                          f" errors {result['errors']}, generator CPU {cpu:.1f} s of {args.seconds + 2:.0f} s,"
                          f" server core busy {busy},"
                          f" sockets per worker {spread}", flush=True)
                    run._drain(server.base, lines[0])
            finally:
                requests.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
