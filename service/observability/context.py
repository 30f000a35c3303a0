"""The request context: request id, route, user and client address, bound through contextvars.

The ASGI middleware binds the request's fields at its start. Quart runs the handler in a child
task, which sees those bindings but whose own bindings (route, user) the middleware would not;
`RequestState` is the one mutable object both share, so the request's last log line knows them.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

import structlog

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")


@dataclass(slots=True)
class RequestState:
    request_id: str
    route: str | None = None
    user_id: int | None = None


_request_state: ContextVar[RequestState | None] = ContextVar("request_state", default=None)


def start_request(request_id: str, method: str, path: str, client: str) -> RequestState:
    """Forget whatever the context held and bind this request's fields."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=request_id, method=method, path=path, client_ip=client
    )
    state = RequestState(request_id)
    _request_state.set(state)
    return state


def bind_route(route: str) -> None:
    state = _request_state.get()
    if state is not None:
        state.route = route
    structlog.contextvars.bind_contextvars(route=route)


def bind_user(user_id: int) -> None:
    state = _request_state.get()
    if state is not None:
        state.user_id = user_id
    structlog.contextvars.bind_contextvars(user_id=user_id)


def current_request_id() -> str | None:
    state = _request_state.get()
    return state.request_id if state is not None else None


def accept_request_id(incoming: str | None) -> str:
    """Keep a caller's id when it is safe to log and echo, otherwise make a new one."""
    if incoming is not None and _SAFE_REQUEST_ID.fullmatch(incoming):
        return incoming
    # 128 random bits, like uuid4, without uuid4's urandom system call on every request:
    # a request id needs to be unique, not unguessable.
    return f"{random.getrandbits(128):032x}"


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
