"""The client's address behind a trusted reverse proxy.

gunicorn's ``forwarded_allow_ips`` only decides which peers may set the URL scheme; ``REMOTE_ADDR``
stays the proxy's address. Anonymous readers are rate-limited per client address
(api/ratelimit.py), so behind a proxy they all shared one budget: one client could use up the
anonymous quota of everyone (found by an adversarial probe). This middleware, outermost in the WSGI
stack (the read fast path and the Flask app see the same address), replaces ``REMOTE_ADDR`` with the
address the proxy saw — the last ``X-Forwarded-For`` entry — when, and only when, the request came
from a trusted proxy (``PROTOCOLS_FORWARDED_ALLOW_IPS``, the variable gunicorn.conf.py reads too;
``*`` trusts every peer). Anyone else's ``X-Forwarded-For`` is ignored: it could name any address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

#: Where the peer's own address is kept once ``REMOTE_ADDR`` names the client.
PROXY_ADDR_KEY = "protocols.proxy_addr"


def trusted_proxies(setting: str) -> frozenset[str]:
    """``"10.0.0.1, 10.0.0.2"`` → the addresses; ``"*"`` → every peer."""
    return frozenset(part.strip() for part in setting.split(",") if part.strip())


class TrustedProxy:
    """WSGI middleware: ``REMOTE_ADDR`` is the client's when a trusted proxy forwarded the request."""

    def __init__(self, app: Callable[..., Iterable[bytes]], trusted: frozenset[str]) -> None:
        self.app = app
        self.trusted = trusted
        self.trust_all = "*" in trusted

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        peer = environ.get("REMOTE_ADDR")
        if forwarded and (self.trust_all or peer in self.trusted):
            client = client_address(forwarded)
            if client is not None:
                environ[PROXY_ADDR_KEY] = peer
                environ["REMOTE_ADDR"] = client
        return self.app(environ, start_response)


def client_address(forwarded_for: str) -> str | None:
    """The last hop of ``X-Forwarded-For`` (the one the trusted proxy appended), if it is an IP address."""
    last = forwarded_for.rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return None
