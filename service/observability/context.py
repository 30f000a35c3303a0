"""The request context: request id and client address, bound through contextvars."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Sequence
from functools import lru_cache

import structlog

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def accept_request_id(incoming: str | None) -> str:
    """Keep a caller's id when it is safe to log and echo, otherwise make a new one."""
    if incoming is not None and _SAFE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def client_ip(remote_addr: str | None, forwarded_for: str | None, trusted: Sequence[str]) -> str:
    """The client's address: `X-Forwarded-For` is believed only when sent by a trusted proxy.

    Walks the forwarded chain from the right and returns the first hop that is not itself a
    trusted proxy, so a client cannot choose its own address by sending the header.
    """
    address = remote_addr or "unknown"
    if not forwarded_for or not trusted or not _is_trusted(address, tuple(trusted)):
        return address
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_valid_ip(hop):
            return address
        if not _is_trusted(hop, tuple(trusted)):
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
