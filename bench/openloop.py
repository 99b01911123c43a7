"""Open-loop, constant-rate HTTP/1.1 load generator for the "p99 at 70 % of peak" target.

Why not wrk: wrk is closed-loop. Its only pacing is the Lua ``delay()`` think time, and
bench/pacing_check.py shows that this pacing alone puts a 300 ms p99 on a bare Flask endpoint
serving 6 ms p99 to plain client threads at the same load. wrk2 (constant rate, latency corrected
for coordinated omission) is the tool made for this and is not packaged for Debian, so this is its
method in ~150 lines of asyncio:

* requests are *scheduled* at a constant rate, request ``i`` at ``t0 + i / rate``, whatever the
  server is doing (open loop: a slow response does not slow the arrivals down);
* a scheduled request goes out on an idle keep-alive connection; when all ``--connections`` are
  busy it waits in a queue, and that wait is charged to the server. With ``--fresh-connections``
  each request opens its own connection instead (at most ``--connections`` at a time), as a client
  of gunicorn's ``sync`` workers must: they answer ``Connection: close``. The connect is then part
  of the request's latency;
* latency is measured from the *scheduled* time to the last byte of the response (wrk2's
  coordinated-omission correction), so a stall shows in the tail instead of hiding in a pause of
  the generator. The generator's own lag (its timer granularity is 1 ms) is charged to the server
  too; ``send_lag_ms`` reports it so a reader can see it is small.

Requests come from the same TSV file the wrk driver reads (``METHOD <TAB> PATH <TAB> H: v|H: v``),
taken round-robin; only bodiless requests are supported. Prints one line, ``BENCH_RESULT {json}``,
like the wrk driver, so bench/run.py parses both the same way. The result carries the measured
window on ``time.monotonic()``'s clock, and ``--spans FILE`` writes each measured request's scheduled
and answered times there: bench/run.py lines them up with the stall probes (bench/stall_probe.c). With
``--server-cpu N`` the result carries ``server_busy``, CPU N's busy share over the measured window
(/proc/stat, read as the window opens and closes): how loaded the server's core was at this rate.

Usage: ``python bench/openloop.py --base http://127.0.0.1:PORT --requests FILE --rate 1000
--duration 10 --warmup 2 --connections 64`` (bench/run.py pins it to the load-generator CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import sys
from urllib.parse import urlsplit

HEADER_END = b"\r\n\r\n"
DEBUG = bool(os.environ.get("BENCH_OPENLOOP_DEBUG"))  # print each request slower than 50 ms


def load_requests(path: str, host: str) -> list[bytes]:
    """Each line of the request file as the bytes of one HTTP/1.1 request."""
    out = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            method, target, *rest = line.rstrip("\n").split("\t")
            headers = [h for h in (rest[0].split("|") if rest else []) if h]
            lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers, "", ""]
            out.append("\r\n".join(lines).encode("latin-1"))
    if not out:
        raise SystemExit("no requests in " + path)
    return out


def cpu_counters(stat: str, cpu: str) -> tuple[int, int] | None:
    """(busy, total) clock ticks of one CPU from /proc/stat's text. Idle and iowait are not busy;
    guest time is already counted in user time, so it is not added again."""
    for line in stat.splitlines():
        name, *values = line.split()
        if name == f"cpu{cpu}":
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            idle = ticks[3] + ticks[4]
            return sum(ticks) - idle, sum(ticks)
    return None


def read_cpu(cpu: str | None) -> tuple[int, int] | None:
    """``cpu_counters`` of the live /proc/stat (None without a CPU to watch or off Linux)."""
    if cpu is None:
        return None
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            return cpu_counters(handle.read(), cpu)
    except OSError:
        return None


class Connection(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time (no pipelining)."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scheduled = 0.0
        self.sent = 0.0
        self.closed = asyncio.get_running_loop().create_future()
        self.answered = False  # its one response is in (--fresh-connections: the close that follows is expected)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, scheduled: float, request: bytes) -> None:
        assert self.transport is not None
        self.scheduled = scheduled
        self.sent = self.generator.loop.time()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(HEADER_END)
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = 0
        for header in head[1:]:
            name, _, value = header.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding":
                raise RuntimeError("chunked responses are not supported by this generator")
        total = end + len(HEADER_END) + length
        if len(self.buffer) < total:
            return
        del self.buffer[:total]
        self.generator.completed(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.generator.lost(self)


class Generator:
    def __init__(self, requests: list[bytes], rate: float, duration: float, warmup: float,
                 keep_spans: bool = False, watch_cpu: str | None = None, fresh: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.requests = requests
        self.interval = 1.0 / rate
        self.duration, self.warmup = duration, warmup
        # Idle keep-alive connections, or with ``fresh`` free slots (None): a request takes a slot and
        # opens its own connection, so at most as many are in flight as there were connections.
        self.fresh = fresh
        self.address: tuple[str, int] = ("127.0.0.1", 0)  # set by run()
        self.idle: collections.deque[Connection | None] = collections.deque()
        self.queue: collections.deque[float] = collections.deque()
        self.next_request = 0
        self.latencies: list[float] = []
        # (scheduled, answered) of each measured request, on time.monotonic()'s clock, for --spans
        self.spans: list[tuple[float, float]] | None = [] if keep_spans else None
        self.send_lags: list[float] = []
        self.errors = {"status": 0, "connect": 0, "lost": 0}
        self.measure_from = self.measure_until = 0.0
        self.open_connections = 0
        self.in_window = 0  # requests scheduled inside the measured window, counted as they are scheduled
        # The server CPU's /proc/stat counters as the measured window opened and closed (--server-cpu).
        self.watch_cpu = watch_cpu
        self.cpu_window: list[tuple[int, int] | None] = []

    def _request(self) -> bytes:
        request = self.requests[self.next_request % len(self.requests)]
        self.next_request += 1
        return request

    def dispatch(self, conn: Connection | None, scheduled: float) -> None:
        if conn is None:  # a free slot: the lag is measured once the connection is open
            self.loop.create_task(self._send_fresh(scheduled))
            return
        if scheduled >= self.measure_from:
            self.send_lags.append(self.loop.time() - scheduled)
        conn.send(scheduled, self._request())

    async def _send_fresh(self, scheduled: float) -> None:
        """--fresh-connections: open a connection for this one request and send it."""
        try:
            _, conn = await self.loop.create_connection(lambda: Connection(self), *self.address)
        except OSError:
            self.errors["connect"] += 1
            self._free(None)
            return
        self.dispatch(conn, scheduled)

    def _free(self, conn: Connection | None) -> None:
        """A connection or slot is free again: take the oldest queued request, or wait idle."""
        if self.queue:
            self.dispatch(conn, self.queue.popleft())
        else:
            self.idle.append(conn)

    def completed(self, conn: Connection, status: int) -> None:
        now = self.loop.time()
        if self.measure_from <= conn.scheduled < self.measure_until:
            self.latencies.append(now - conn.scheduled)
            if self.spans is not None:
                self.spans.append((conn.scheduled, now))
            if DEBUG and now - conn.scheduled > 0.05:
                print(f"slow {now - conn.scheduled:.3f}s lag {conn.sent - conn.scheduled:.4f} conn {id(conn) % 10000}"
                      f" at {conn.scheduled - self.measure_from:.3f}", file=sys.stderr)
            if status >= 400:
                self.errors["status"] += 1
        conn.answered = True
        if self.fresh:
            assert conn.transport is not None
            conn.transport.close()
            self._free(None)
        else:
            self._free(conn)

    def lost(self, conn: Connection) -> None:
        """A connection closed. Idle: the server's keep-alive timeout, not a failed request (it just
        leaves the pool). Busy inside the window: its request never got an answer, an error.
        --fresh-connections: the close after the answer is expected; a close before it frees the slot."""
        if self.fresh:
            if not conn.answered:
                if self.measure_from <= conn.scheduled < self.measure_until:
                    self.errors["lost"] += 1
                self._free(None)
            return
        self.open_connections -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        elif self.measure_from <= conn.scheduled < self.measure_until:
            self.errors["lost"] += 1

    async def run(self, host: str, port: int, connections: int) -> dict[str, object]:
        self.address = (host, port)
        conns: list[Connection] = []
        for _ in range(0 if self.fresh else connections):
            try:
                _, conn = await self.loop.create_connection(lambda: Connection(self), host, port)
            except OSError:
                self.errors["connect"] += 1
                continue
            conns.append(conn)
        if not conns and not self.fresh:
            raise SystemExit(f"could not connect to {host}:{port}")
        self.idle = collections.deque(conns) if conns else collections.deque([None] * connections)
        self.open_connections = len(self.idle)
        start = self.loop.time() + 0.05
        self.measure_from = start + self.warmup
        self.measure_until = self.measure_from + self.duration
        tick = 0
        while True:
            scheduled = start + tick * self.interval
            now = self.loop.time()
            if scheduled >= self.measure_until:
                self.cpu_window.append(read_cpu(self.watch_cpu))
                break
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
                continue
            tick += 1
            if self.measure_from <= scheduled:
                if not self.in_window:
                    self.cpu_window.append(read_cpu(self.watch_cpu))
                self.in_window += 1
            if self.idle:
                self.dispatch(self.idle.popleft(), scheduled)  # oldest idle first, as wrk does
            else:
                self.queue.append(scheduled)
        # Let the requests scheduled inside the window finish (bounded: a stuck server is an error).
        deadline = self.loop.time() + 10.0
        while (self.queue or len(self.idle) < self.open_connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.005)
        # Counted, not computed as duration x rate: how many ticks fall inside the window depends on
        # where the window starts between two ticks, so the product is off by one as often as not (a
        # request that was never scheduled was once reported as unfinished, an error).
        scheduled_in_window = self.in_window
        unfinished = scheduled_in_window - len(self.latencies) - self.errors["lost"]
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        return summarize(self, scheduled_in_window, max(unfinished, 0))


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(fraction * len(values)) - 1))]


def summarize(gen: Generator, scheduled: int, unfinished: int) -> dict[str, object]:
    latencies = sorted(gen.latencies)
    lags = sorted(gen.send_lags)
    errors = dict(gen.errors, unfinished=unfinished)
    return {
        "requests": len(latencies),
        "scheduled": scheduled,
        "duration_us": round(gen.duration * 1e6),
        "latency_us": {"p50": round(percentile(latencies, 0.50) * 1e6),
                       "p90": round(percentile(latencies, 0.90) * 1e6),
                       "p99": round(percentile(latencies, 0.99) * 1e6),
                       "max": round((latencies[-1] if latencies else 0.0) * 1e6)},
        "send_lag_ms": {"p50": round(percentile(lags, 0.50) * 1e3, 3),
                        "p99": round(percentile(lags, 0.99) * 1e3, 3)},
        "errors": errors,
        "window_monotonic": [gen.measure_from, gen.measure_until],
        "server_busy": busy_share(gen.cpu_window),
    }


def busy_share(window: list[tuple[int, int] | None]) -> float | None:
    """The watched CPU's busy share between the window's two readings (None: not watched)."""
    if len(window) != 2 or window[0] is None or window[1] is None or window[1][1] <= window[0][1]:
        return None
    return (window[1][0] - window[0][0]) / (window[1][1] - window[0][1])


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    generator = Generator(load_requests(args.requests, f"{host}:{port}"), args.rate, args.duration, args.warmup,
                          keep_spans=bool(args.spans), watch_cpu=args.server_cpu, fresh=args.fresh_connections)
    result = await generator.run(host, port, args.connections)
    if args.spans:
        with open(args.spans, "w", encoding="utf-8") as handle:
            json.dump([[round(a, 6), round(b, 6)] for a, b in generator.spans or []], handle)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--requests", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second, constant")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds at the same rate, not measured")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--fresh-connections", action="store_true",
                        help="one connection per request (for servers that close after each response)")
    parser.add_argument("--spans", help="write [scheduled, answered] of each measured request (time.monotonic"
                                        " seconds) to this JSON file, for bench/run.py's stall accounting")
    parser.add_argument("--server-cpu", help="report how busy this CPU (the one the server is pinned to) was"
                                              " during the measured window, from /proc/stat")
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
