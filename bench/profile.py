"""Profile one endpoint of the app under load with py-spy (``make bench-profile`` or by hand).

Starts the app on a throwaway SQLite (or ``--postgres``) database exactly as bench/run.py does, with
one gunicorn worker, drives it with wrk, samples the worker with ``py-spy record --format raw`` and
prints where the time goes: inclusive share per function (our code and the libraries we call) and
the hottest leaf frames, each also in microseconds per request answered while sampling, so that two
profiles compare in absolute terms. ``--path-kind a`` profiles baseline (a), bare Flask, the same way:
side by side with ``get_304`` it shows what a 304 pays that the framework's ceiling does not.
docs/performance.md quotes this output when a target is missed.

Usage: ``python bench/profile.py [--path-kind get|get_304|put|list|a] [--seconds 10] [--postgres] [--gil]
[--raw stacks.txt]``
(py-spy comes from ``pip install py-spy``; ``make bench`` installs it into .venv).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # sibling module: bench/ is not a package

#: py-spy's samples per second (``--rate``).
SAMPLE_RATE = 250


def summarize(raw: Path, top: int, requests: float | None = None) -> str:
    """Collapsed stacks -> inclusive % per function and self % per leaf; with ``requests`` (how many
    were answered while sampling), each also as the sampled thread's µs per request it stands for."""
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
    per_sample = 1e6 / SAMPLE_RATE / requests if requests else None

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
        options: dict[str, object] = {}
        if args.path_kind == "put":
            options = {"mode": "put", "body": run.write_put_body(backend.url, rows[0][0]),
                       "connections": run.WRITE_CONNECTIONS}
        serve = run.baseline_server if args.path_kind == "a" else run.app_server
        with serve(backend.url, settings) as server, tempfile.TemporaryDirectory() as tmp:
            if args.path_kind != "put":  # a PUT warm-up would leave the request list's ETags stale
                run.wrk(server.base, requests, settings, 2, **options)  # type: ignore[arg-type]
            loads: list[run.Run] = []
            load = threading.Thread(target=lambda: loads.append(
                run.wrk(server.base, requests, settings, args.seconds + 2, **options)))  # type: ignore[arg-type]
            load.start()
            raw = Path(tmp) / "profile.txt"
            worker = server.worker_pids()[0]
            subprocess.run([py_spy, "record", "--pid", str(worker), "--duration", str(args.seconds),
                            "--rate", str(SAMPLE_RATE),
                            "--format", "raw", "--output", str(raw), "--nonblocking", *(["--gil"] if args.gil else [])],
                           check=True, capture_output=True)
            load.join()
            if not loads:
                raise RuntimeError("the load generator did not finish")
            measured = loads[0]  # its rate while py-spy sampled (wrk ran a second longer on each side)
            report = (f"{measured.rps:.0f} req/s; the server's core: {measured.server_cpu_us} µs of CPU per request\n"
                      + summarize(raw, args.top, measured.rps * args.seconds))
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
