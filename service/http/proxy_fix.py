"""The client's address, decided once at the edge (as hypercorn's `ProxyFixMiddleware` does).

Behind a load balancer every connection comes from the proxy; the client is named in
`X-Forwarded-For`. That header is believed only when the connection comes from a trusted proxy
(`TRUSTED_PROXIES`), and the chain is walked from the right, so a client cannot choose its own
address by sending the header. The answer is written into the ASGI scope's `client`: the request
log, the rate limits and the beacon limits all read it through `client_address`, and nothing
downstream parses the header again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
    WebsocketScope,
)

_FORWARDED_FOR = b"x-forwarded-for"


class ProxyFix:
    """ASGI middleware: `scope["client"]` becomes the client behind the trusted proxies."""

    def __init__(self, app: ASGIFramework, trusted: Sequence[str]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http" or scope["type"] == "websocket":
            forwarded = [value for name, value in scope["headers"] if name == _FORWARDED_FOR]
            peer = scope.get("client")
            if forwarded and peer is not None:
                chain = b",".join(forwarded).decode("latin-1")
                address = client_ip(peer[0], chain, self.trusted)
                if address != peer[0]:
                    scope = scope.copy()  # the server's own scope stays as it received it
                    scope["client"] = (address, 0)
        await self.app(scope, receive, send)


def client_address(scope: HTTPScope | WebsocketScope) -> str:
    """The client's address as every part reads it (after ProxyFix, when it is installed), in
    one spelling: IPv6 compressed and without a zone (`fe80::1%eth0` is `fe80::1`), an IPv4 client
    of a dual-stack socket as IPv4 (`::ffff:192.0.2.1` is `192.0.2.1`)."""
    client = scope.get("client")
    return _normal_address(client[0]) if client else "unknown"


def address_key(address: str, ipv6_prefix: int) -> str:
    """What a per-address limit counts: an IPv4 address, or the IPv6 network of `ipv6_prefix`
    bits around the address (one host is usually given a whole /64 to choose from)."""
    if ":" not in address:
        return address
    try:
        network = ipaddress.IPv6Network((address, ipv6_prefix), strict=False)
    except ValueError:
        return address
    return str(network)


def client_ip(remote_addr: str, forwarded_for: str, trusted: tuple[str, ...]) -> str:
    """The first hop from the right of `forwarded_for` that is not a trusted proxy, when the
    connection itself comes from one; else the connection's own address."""
    address = remote_addr
    if not _is_trusted(address, trusted):
        return address
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_valid_ip(hop):
            return address
        if not _is_trusted(hop, trusted):
            return hop
        address = hop
    return address


def _is_valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1024)
def _is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(network, strict=False) for network in trusted)


@lru_cache(maxsize=4096)
def _normal_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address  # a unix socket's path, or hypercorn's placeholder: left as it is
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
