"""Per-key rate limiting (fixed window) with RateLimit headers and 429 + ``Retry-After``.

``PROTOCOLS_RATE_LIMIT`` is ``<count>/<second|minute|hour|day>`` (or ``off``). The counters live in
Redis when ``PROTOCOLS_REDIS_URL`` is set, so every worker process and every instance shares them.
Without Redis the counters live in this process: correct for a single process (``make run``), but
with N gunicorn workers a key gets up to N times the limit — configure Redis for production. If
Redis becomes unreachable, counting falls back to the process (logged) rather than failing requests:
the limit protects capacity; it must not take clinical reads down with it.

Callers are identified by API key id; anonymous readers by client address.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, request

from api.errors import ApiError

log = logging.getLogger("api.ratelimit")

RATELIMITER_KEY = "protocols_ratelimiter"
_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT = re.compile(r"^\s*([0-9]+)\s*/\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)
REDIS_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Limit:
    count: int
    period: int


def parse_limit(text: str) -> Limit | None:
    """``"600/minute"`` -> ``Limit(600, 60)``; ``"off"`` -> None (no limit). ``0``, ``none`` and an empty
    value are refused, not read as "off": set to ``0``, a limit reads as "no requests" as easily as "no
    limit", and it silently turned limiting off (an adversarial probe); the environment's blank value is
    the default (``api.config``)."""
    if text.strip().lower() == "off":
        return None
    match = _LIMIT.match(text)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"PROTOCOLS_RATE_LIMIT must look like '600/minute' or 'off', got {text!r}")
    return Limit(int(match.group(1)), _PERIODS[match.group(2).lower()])


class MemoryCounter:
    """Window counters in this process (thread-safe), pruned as windows pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}
        self._pruned_window = -1

    def hit(self, identity: str, window: int, period: int) -> int:
        with self._lock:
            # Past windows are dropped once per window, not on every hit: with more than 10,000 callers
            # in one window the dict was rebuilt under the lock on each request (an adversarial probe
            # measured 0.6 ms per hit at 12,000 callers, growing with every new one).
            if len(self._counts) > 10_000 and window > self._pruned_window:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
                self._pruned_window = window
            key = (identity, window)
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]


class RedisCounter:
    """Window counters in Redis: ``INCR`` + ``EXPIRE`` in one round trip, shared by all workers."""

    def __init__(self, url: str) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: one failed attempt switches to in-process counting (see RateLimiter._count),
        # so an outage costs one short timeout per retry period, not one per request.
        self.client: Any = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                                retry=Retry(NoBackoff(), 0))

    def hit(self, identity: str, window: int, period: int) -> int:
        key = f"protocols:ratelimit:{identity}:{window}"
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, period + 1)
        count, _ = pipe.execute()
        return int(count)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: int


class RateLimiter:
    def __init__(self, limit: Limit, redis_url: str | None = None) -> None:
        self.limit = limit
        self.memory = MemoryCounter()
        self.redis = RedisCounter(redis_url) if redis_url else None
        self._redis_down_until = 0.0

    def hit(self, identity: str, now: float | None = None) -> Verdict:
        now = time.time() if now is None else now
        period = self.limit.period
        window = int(now // period)
        count = self._count(identity, window, period, now)
        reset = max(1, math.ceil((window + 1) * period - now))
        remaining = max(0, self.limit.count - count)
        return Verdict(count <= self.limit.count, self.limit.count, remaining, reset)

    def _count(self, identity: str, window: int, period: int, now: float) -> int:
        if self.redis is not None and now >= self._redis_down_until:
            try:
                return self.redis.hit(identity, window, period)
            except Exception as exc:  # redis.RedisError, OSError: fall back, retry Redis later
                self._redis_down_until = now + REDIS_RETRY_SECONDS
                log.warning("rate-limit store unreachable (%s); counting in-process for %ss",
                            type(exc).__name__, int(REDIS_RETRY_SECONDS))
        return self.memory.hit(identity, window, period)


#: WSGI environ key under which a request's already-counted :class:`Verdict` travels.
COUNTED_VERDICT = "protocols.rate_limit_verdict"


def identity(api_key_id: str | None, remote_addr: str | None) -> str:
    """Who a request is counted against: its API key, or for anonymous reads its client address (an
    IPv6 client's /64: :func:`client_network`)."""
    if api_key_id:
        return f"key:{api_key_id}"
    if remote_addr and ":" in remote_addr:
        return f"addr:{client_network(remote_addr)}"
    return f"addr:{remote_addr or 'unknown'}"


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: IPv4-compatible addresses (deprecated) and the loopback: one client each, not one /64.
_PER_ADDRESS = ipaddress.IPv6Network("::/96")


@functools.lru_cache(maxsize=4096)
def client_network(address: str) -> str:
    """An IPv6 client counts by its /64, the smallest network a site or a SLAAC host is given (RFC 6177,
    RFC 4291): one client holds all of it, and counted per address it could rotate through 2**64 budgets
    (found by a probe). An IPv4-mapped address counts as the IPv4 address it is."""
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    # Addresses that carry an IPv4 client count as that client (found in review: behind NAT64 every IPv4
    # reader shared 64:ff9b::/64's budget): IPv4-mapped, NAT64's well-known prefix (RFC 6052), Teredo.
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip in _NAT64:
        return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.teredo is not None:
        return str(ip.teredo[1])
    if ip in _PER_ADDRESS or ip.is_link_local:
        return str(ip)  # ::a.b.c.d and ::1 share ::/64, and link-local /64s are every link's
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def headers(verdict: Verdict) -> dict[str, str]:
    return {"RateLimit-Limit": str(verdict.limit), "RateLimit-Remaining": str(verdict.remaining),
            "RateLimit-Reset": str(verdict.reset)}


def check_rate_limit() -> None:
    """``before_request`` (after authentication): count this request against its caller."""
    if g.get("required_scope") is None:
        return
    count(g.get("api_key_id"))


def count(api_key_id: str | None) -> None:
    """Count this request against its caller (its key, else its client address); 429 past the limit.

    Also called by authentication for a request it refuses (401/403) before raising: refused requests
    went uncounted, so a caller without any key could send them without limit, each one adding a
    permanent denied-write row to the audit trail (found by an adversarial probe)."""
    limiter: RateLimiter | None = current_app.extensions.get(RATELIMITER_KEY)
    if limiter is None:
        return
    # A request the read fast path (api/fastpath.py) counted and then handed on is not counted twice.
    verdict = request.environ.pop(COUNTED_VERDICT, None)
    if verdict is None:
        verdict = limiter.hit(identity(api_key_id, request.remote_addr))
    g.rate_limit = verdict
    if not verdict.allowed:
        raise ApiError(429, f"Rate limit exceeded ({verdict.limit} requests per {limiter.limit.period}s); "
                            f"retry after {verdict.reset}s.",
                       headers={"Retry-After": str(verdict.reset), **headers(verdict)})


def add_headers(response: Response) -> Response:
    verdict: Verdict | None = g.get("rate_limit")
    if verdict is not None:
        for name, value in headers(verdict).items():
            response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    limit = parse_limit(str(app.config.get("PROTOCOLS_RATE_LIMIT", "")))
    if limit is not None:
        app.extensions[RATELIMITER_KEY] = RateLimiter(limit, app.config.get("PROTOCOLS_REDIS_URL"))
    app.before_request(check_rate_limit)
    app.after_request(add_headers)
