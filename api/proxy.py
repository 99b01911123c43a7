"""The client's address behind trusted reverse proxies.

gunicorn's ``forwarded_allow_ips`` only decides which peers may set the URL scheme; ``REMOTE_ADDR``
stays the proxy's address. Anonymous readers are rate-limited per client address
(api/ratelimit.py), so behind a proxy they all shared one budget: one client could use up the
anonymous quota of everyone (found by an adversarial probe). This middleware, outermost in the WSGI
stack (the read fast path and the Flask app see the same address), replaces ``REMOTE_ADDR`` with the
client's address from ``X-Forwarded-For`` when, and only when, the request came from a trusted
proxy (``PROTOCOLS_FORWARDED_ALLOW_IPS``: addresses or CIDR ranges, ``*`` for every peer; unset, no
peer is trusted). The header is read from the right, skipping trusted proxies (CDN -> load balancer
-> app): the first address no trusted proxy owns is the one a trusted proxy saw connect, and nothing
left of it can be believed. Each trusted proxy must append to the header (nginx:
``proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for``), not pass the client's through.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """``"10.0.0.1, 10.1.0.0/16, ::1"`` (or ``"*"``): which peers' ``X-Forwarded-For`` is believed."""

    def __init__(self, setting: str) -> None:
        parts = [part.strip() for part in setting.split(",") if part.strip()]
        self.everyone = "*" in parts
        self.networks: list[Network] = [_ipv4_if_mapped(ipaddress.ip_network(part, strict=False))
                                        for part in parts if part != "*"]

    def __bool__(self) -> bool:
        return self.everyone or bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        if self.everyone:
            return True
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self.networks)


class TrustedProxy:
    """WSGI middleware: ``REMOTE_ADDR`` is the client's when trusted proxies forwarded the request."""

    def __init__(self, app: Callable[..., Iterable[bytes]], trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        peer = environ.get("REMOTE_ADDR")
        if forwarded and self.trusted and self.trusted.trusts(peer):
            client = client_address(forwarded, self.trusted)
            if client is not None:
                environ["REMOTE_ADDR"] = client
        return self.app(environ, start_response)


def client_address(forwarded_for: str, trusted: TrustedProxies) -> str | None:
    """The rightmost ``X-Forwarded-For`` address that is not a trusted proxy; None when an entry on the
    way is not an IP address (the header cannot be read) or every entry is a trusted proxy."""
    for entry in reversed(forwarded_for.split(",")):
        ip = _ip(entry.strip())
        if ip is None:
            return None
        if not trusted.everyone and trusted.trusts(str(ip)):
            continue
        return str(ip)
    return None


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _ipv4_if_mapped(network: Network) -> Network:
    """A configured ``::ffff:10.0.0.1`` (the work-around for peers seen as mapped addresses) is the IPv4
    network it names, as peers now are (review: it stopped matching once peers were read as IPv4)."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, an IPv4 one for an IPv4-mapped IPv6 address: a server listening on ``[::]`` sees an
    IPv4 proxy as ``::ffff:127.0.0.1``, which ``127.0.0.1`` (or ``10.0.0.0/8``) did not match, so every
    client behind it shared the proxy's rate-limit budget (found by an adversarial probe)."""
    try:
        ip = ipaddress.ip_address(text or "")
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
