"""api/proxy.py: which X-Forwarded-For address is believed, and from which peers."""

from __future__ import annotations

import pytest

from api.proxy import TrustedProxies, TrustedProxy, client_address


@pytest.mark.parametrize(("setting", "header", "expected"), [
    ("127.0.0.1", "203.0.113.5", "203.0.113.5"),
    # a client's own header is kept by a proxy that appends: only the rightmost untrusted entry counts
    ("127.0.0.1", "1.2.3.4, 203.0.113.5", "203.0.113.5"),
    # CDN -> load balancer -> app: trusted hops are skipped, CIDR ranges included
    ("127.0.0.1, 10.0.0.0/8", "203.0.113.5, 10.1.2.3", "203.0.113.5"),
    ("::1, 10.0.0.0/8", "2001:db8::7, 10.9.9.9", "2001:db8::7"),
    ("10.0.0.0/8", "10.1.1.1, 10.2.2.2", None),  # nothing but proxies: keep the peer
    ("127.0.0.1", "not-an-ip, 203.0.113.5", "203.0.113.5"),
    ("127.0.0.1", "203.0.113.5, garbage", None),  # unreadable where it matters: keep the peer
])
def test_the_client_is_the_rightmost_address_no_trusted_proxy_owns(setting, header, expected):
    assert client_address(header, TrustedProxies(setting)) == expected


def _seen(setting: str, peer: str, header: str | None) -> str:
    seen: dict[str, str] = {}

    def app(environ, start_response):
        seen["addr"] = environ["REMOTE_ADDR"]
        return [b""]

    environ = {"REMOTE_ADDR": peer, **({"HTTP_X_FORWARDED_FOR": header} if header else {})}
    TrustedProxy(app, TrustedProxies(setting))(environ, lambda *_: None)
    return seen["addr"]


def test_only_a_trusted_peer_may_name_the_client():
    assert _seen("10.0.0.0/8", "10.0.0.5", "203.0.113.5") == "203.0.113.5"
    assert _seen("10.0.0.0/8", "192.0.2.1", "203.0.113.5") == "192.0.2.1"  # not a proxy of ours
    assert _seen("", "127.0.0.1", "203.0.113.5") == "127.0.0.1"  # unset: no peer is trusted
    assert _seen("*", "192.0.2.1", "203.0.113.5") == "203.0.113.5"
    assert _seen("127.0.0.1", "127.0.0.1", None) == "127.0.0.1"


def test_an_ipv4_proxy_seen_by_a_dual_stack_listener_is_trusted():
    """Listening on [::], the server sees an IPv4 proxy as ::ffff:127.0.0.1, which 127.0.0.1 (or a
    range) did not match: X-Forwarded-For was ignored and every client shared the proxy's rate-limit
    budget (adversarial probe). Mapped addresses in the header read as their IPv4 address too."""
    assert _seen("127.0.0.1", "::ffff:127.0.0.1", "203.0.113.5") == "203.0.113.5"
    assert _seen("10.0.0.0/8", "::ffff:10.1.2.3", "203.0.113.5") == "203.0.113.5"
    assert _seen("10.0.0.0/8", "::ffff:192.0.2.1", "203.0.113.5") == "::ffff:192.0.2.1"  # still not ours
    assert client_address("::ffff:203.0.113.5, ::ffff:10.1.2.3", TrustedProxies("10.0.0.0/8")) == "203.0.113.5"
    # a setting written for the mapped form still trusts the proxy
    assert _seen("::ffff:127.0.0.1", "::ffff:127.0.0.1", "203.0.113.5") == "203.0.113.5"
    assert _seen("::ffff:10.0.0.0/104", "10.2.3.4", "203.0.113.5") == "203.0.113.5"
