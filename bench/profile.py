"""Profile one endpoint of the app under load with py-spy.

Starts the app on a throwaway SQLite (or ``--postgres``) database exactly as bench/run.py does, with
one gunicorn worker, drives it with wrk, samples the worker with ``py-spy record --format raw`` and
prints where the time goes: inclusive share per function (our code and the libraries we call) and
the hottest leaf frames. With ``--gil`` each line also says how many microseconds of the worker's
user CPU per request it stands for, so that two profiles compare in absolute terms. ``--path-kind a``
profiles baseline (a), bare Flask, the same way: side by side with ``get_304`` it shows what a 304
pays that the framework's ceiling does not.
docs/performance.md quotes this output when a target is missed.

Usage: ``python bench/profile.py [--path-kind get|get_304|put|list|a] [--seconds 10] [--postgres] [--gil]
[--raw stacks.txt]``
(py-spy is a development dependency in pyproject.toml: ``make venv`` installs it into .venv).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # sibling module: bench/ is not a package

#: py-spy's samples per second (``--rate``): what it asks for. Under load the GIL samples came to ~2.3
#: times fewer than this rate and the worker's user CPU imply (samples py-spy missed, or user CPU spent
#: with the GIL released, which GIL samples cannot see), which is why the µs column splits the CPU the
#: kernel counted instead of counting samples.
SAMPLE_RATE = 250
#: wrk runs this much longer than py-spy samples, so the sampling window (with py-spy's start-up) lies
#: inside the load.
LOAD_SLACK_S = 4


def summarize(raw: Path, top: int, us_per_request: float | None = None) -> str:
    """Collapsed stacks -> inclusive % per function and self % per leaf; with ``us_per_request`` (the
    CPU the samples stand for), each share also as µs per request."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        for name in set(frames):
            inclusive[name] += count
        leaf[frames[-1]] += count
    if not total:
        return "no samples"
    per_sample = us_per_request / total if us_per_request else None

    def cells(n: int, width: int) -> str:
        share = f"{100 * n / total:{width}.1f}%"
        return share if per_sample is None else f"{share} | {n * per_sample:7.1f}"

    unit = " | µs/request" if per_sample is not None else ""
    lines = [f"{total} samples" + (f", {total * per_sample:.0f} µs per request" if per_sample else ""), "",
             f"inclusive %{unit} | function (file)"]
    lines += [f"{cells(n, 10)} | {name}" for name, n in inclusive.most_common(top)]
    lines += ["", f"self %{unit} | leaf function (file)"]
    lines += [f"{cells(n, 6)} | {name}" for name, n in leaf.most_common(top // 2)]
    return "\n".join(lines)


def per_request_us(ticks: int, ticks_per_second: int, rps: float, seconds: float) -> float:
    """CPU microseconds per request: ``ticks`` of CPU (``/proc`` clock ticks) spent while ``rps``
    requests a second were answered for ``seconds``."""
    if rps <= 0 or seconds <= 0:
        raise ValueError(f"no requests to share the CPU among ({rps} req/s for {seconds} s)")
    return ticks * 1e6 / ticks_per_second / (rps * seconds)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """The process's user and system CPU so far, in clock ticks (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path-kind", choices=("get", "get_304", "list", "put", "a"), default="get",
                        help="an endpoint of the app, or baseline (a): bare Flask, fixed body")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--raw", type=Path,
                        help="keep py-spy's collapsed stacks (one line per stack and its count) here")
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL: where the worker's CPU goes, without waits")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(run.VENV_BIN / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    settings = run.Settings(**{**asdict(run.Settings()), "workers": 1, "threads": 2, "small_catalog": 1000})
    backend_cm = (run.postgres_backend(run.DEFAULT_PG_ADMIN) if args.postgres else run.sqlite_backend())
    with backend_cm as backend:
        prep = run.prepare_database(backend.url, settings.small_catalog)
        rows = run.catalog_rows(backend.url)
        auth = f"|Authorization: Bearer {prep['api_key']}" if prep["api_key"] else ""
        lines = {"get": [f"GET\t/v1/protocols/{p}\t" for p, _ in rows],
                 "get_304": [f"GET\t/v1/protocols/{p}\tIf-None-Match: {e}" for p, e in rows],
                 "list": [f"GET\t/v1/protocols?page_size={settings.page_size}\t"],
                 "put": [f"PUT\t/v1/protocols/{p}\tIf-Match: {e}|Content-Type: application/json{auth}"
                         for p, e in run.newest_etags(backend.url, [p for p, _ in rows])],
                 "a": [f"GET\t/a/{p}\t" for p, _ in rows]}[args.path_kind]
        requests = run.write_requests(lines)
        options: dict[str, Any] = {}
        if args.path_kind == "put":
            options = {"mode": "put", "body": run.write_put_body(backend.url, rows[0][0]),
                       "connections": run.WRITE_CONNECTIONS}
        serve = run.baseline_server if args.path_kind == "a" else run.app_server
        with serve(backend.url, settings) as server, tempfile.TemporaryDirectory() as tmp:
            if args.path_kind != "put":  # a PUT warm-up would leave the request list's ETags stale
                run.wrk(server.base, requests, settings, 2, **options)
            loads: list[run.Run] = []
            load = threading.Thread(target=lambda: loads.append(
                run.wrk(server.base, requests, settings, args.seconds + LOAD_SLACK_S, **options)))
            load.start()
            raw = Path(tmp) / "profile.txt"
            worker = server.worker_pids()[0]
            before, started = cpu_ticks(worker), time.monotonic()
            subprocess.run([py_spy, "record", "--pid", str(worker), "--duration", str(args.seconds),
                            "--rate", str(SAMPLE_RATE),
                            "--format", "raw", "--output", str(raw), "--nonblocking", *(["--gil"] if args.gil else [])],
                           check=True, capture_output=True)
            user, system = (b - a for a, b in zip(before, cpu_ticks(worker), strict=True))
            window = time.monotonic() - started  # py-spy's duration and its start-up: what the ticks cover
            load.join()
            if not loads:
                raise RuntimeError("the load generator did not finish")
            if window > args.seconds + LOAD_SLACK_S - 1:
                raise RuntimeError(f"sampling took {window:.1f} s: longer than the load lasted, so the CPU per"
                                   " request would count requests that were never sent")
            measured = loads[0]  # wrk's rate over its whole run stands for its rate in the window
            user_us, system_us = (per_request_us(ticks, os.sysconf("SC_CLK_TCK"), measured.rps, window)
                                  for ticks in (user, system))
            report = (f"{measured.rps:.0f} req/s; per request: the server's core {measured.server_cpu_us} µs of CPU,"
                      f" the worker {user_us:.0f} µs user + {system_us:.0f} µs system"
                      + ("\n(with --gil the µs column splits the worker's user CPU by the samples' shares)" if args.gil
                         else "") + "\n"
                      + summarize(raw, args.top, user_us if args.gil else None))
            if args.raw:
                shutil.copyfile(raw, args.raw)
        with contextlib.suppress(OSError):
            requests.unlink()
    print(report)
    if args.output:
        args.output.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
