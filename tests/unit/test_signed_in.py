"""A worker's copies of signed-in reads (service/auth/signed_in.py): which ones a message ends,
which fills are refused, and which requests the edge leaves to Quart. The invalidation channel
is a stand-in here (proven or not at the test's word); the integration tier runs the real one."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
from aioprometheus.collectors import Counter, Registry

from service.auth.active_users import ActiveUsers
from service.auth.signed_in import PATH, SCOPE_KEY, Copy, LocalSessions, SignedInEdge
from service.backends.invalidations import InvalidationChannel

COOKIE = "scene_packer_session"


class _Channel:
    def __init__(self) -> None:
        self.connected = True
        self.proven = True

    def trusted(self) -> bool:
        return self.proven


def _local() -> tuple[LocalSessions, _Channel]:
    local = LocalSessions()
    channel = _Channel()
    local.channel = cast(InvalidationChannel, channel)
    return local, channel


# Signed tokens are URL-safe base64 parts without padding (itsdangerous): "tok.en", spelt so.
TOKEN = "dG9r.ZW4"
LONG = "A" * 600  # canonical, but longer than any token of ours


def _copy(session_id: str = "s1", user_id: int = 1, seconds: float = 60, fresh: float = 60) -> Copy:
    return Copy(session_id, user_id, b'{"id":1}\n', time.time() + seconds, time.monotonic() + fresh)


def _fill(local: LocalSessions, cookie: str, copy: Copy) -> None:
    local.remember({SCOPE_KEY: (cookie, local.generation)}, cookie, copy)


def test_a_message_ends_the_copies_it_names_and_no_other() -> None:
    local, _ = _local()
    _fill(local, "YQ", _copy("s1", 1))
    _fill(local, "Yg", _copy("s2", 1))
    _fill(local, "Yw", _copy("s3", 2))
    local.heard("session s1 s9")
    assert local.answer("YQ") is None and local.answer("Yg") is not None
    local.heard("user 1")
    assert local.answer("Yg") is None and local.answer("Yw") is not None
    local.heard(None)  # the channel was lost (or has just subscribed again)
    assert len(local) == 0
    _fill(local, "ZA", _copy("s4", 3))
    local.heard("something new")  # not understood: forget everything rather than guess
    assert len(local) == 0


def test_a_read_that_began_before_its_ending_is_not_kept_and_others_are() -> None:
    local, channel = _local()
    mine = {SCOPE_KEY: ("YQ", local.generation)}
    theirs = {SCOPE_KEY: ("Yg", local.generation)}
    local.heard("session s1")  # arrived while both reads were on their way: it ends mine
    local.remember(mine, "YQ", _copy("s1", 1))
    local.remember(theirs, "Yg", _copy("s2", 2))
    assert local.answer("YQ") is None and local.answer("Yg") is not None
    # A change of the user, or a loss of the channel, meanwhile: not kept either.
    began = {SCOPE_KEY: ("Yw", local.generation)}
    local.heard("user 3")
    local.remember(began, "Yw", _copy("s3", 3))
    began = {SCOPE_KEY: ("ZA", local.generation)}
    local.heard(None)
    local.remember(began, "ZA", _copy("s4", 4))
    assert local.answer("Yw") is None and local.answer("ZA") is None
    # Nor one the edge did not see, nor one made while the channel is down.
    local.remember({}, "YQ", _copy())
    channel.connected = False
    _fill(local, "YQ", _copy())
    assert len(local) == 0


def test_a_cookie_spelt_otherwise_than_its_signature_is_not_kept() -> None:
    """`ZW5` decodes as `ZW4` does (the last character's unused bits): a copy under each
    spelling would let one outlive the ending that drops the other."""
    local, _ = _local()
    for spelling in ("dG9r.ZW5", "dG9r.ZW4=", "dG9r.Z", "dG9r.ZW4!"):
        _fill(local, spelling, _copy())
    assert len(local) == 0
    _fill(local, TOKEN, _copy())
    assert local.answer(TOKEN) is not None


def test_a_copy_is_used_only_while_proven_and_unexpired() -> None:
    local, channel = _local()
    _fill(local, "YQ", _copy())
    _fill(local, "Yg", _copy("s2", 2, seconds=-1))  # its session expired
    _fill(local, "Yw", _copy("s3", 3, fresh=-1))  # kept as long as a copy may be
    assert local.answer("YQ") is not None
    channel.proven = False
    assert local.answer("YQ") is None
    channel.proven = True
    assert local.answer("Yg") is None and local.answer("Yw") is None and len(local) == 1


class _Users:
    def due(self, user_id: int) -> bool:
        return False


class _Recorder:
    def __init__(self) -> None:
        self.passed_on: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        self.passed_on.append(scope)

    async def send(self, message: Any) -> None:
        self.sent.append(message)


async def _through_edge(headers: list[tuple[bytes, bytes]], **scope: Any) -> _Recorder:
    local, _ = _local()
    _fill(local, TOKEN, _copy())
    _fill(local, LONG, _copy("s2", 2))
    recorder = _Recorder()
    edge = SignedInEdge(
        recorder.app,  # type: ignore[arg-type]
        local,
        cast(ActiveUsers, _Users()),
        COOKIE,
        Counter("c", "c", registry=Registry()),
    )
    request = {"type": "http", "path": PATH, "method": "GET", "headers": headers, **scope}
    await edge(request, None, recorder.send)  # type: ignore[arg-type]
    return recorder


@pytest.mark.parametrize(
    "headers",
    [
        [(b"cookie", b"theme=dark; scene_packer_session=dG9r.ZW4")],
        [(b"cookie", b"theme=dark"), (b"cookie", b"scene_packer_session=dG9r.ZW4")],  # HTTP/2
    ],
    ids=["one header", "a header per cookie"],
)
async def test_the_edge_answers_a_plain_read_from_the_copy(
    headers: list[tuple[bytes, bytes]],
) -> None:
    recorder = await _through_edge(headers)
    assert recorder.passed_on == []
    assert recorder.sent[0]["status"] == 200
    assert recorder.sent[1]["body"] == b'{"id":1}\n'


@pytest.mark.parametrize(
    ("headers", "scope"),
    [
        ([(b"cookie", b"scene_packer_session=unknown")], {}),
        (
            [
                (b"cookie", b"scene_packer_session=dG9r.ZW4"),
                (b"cookie", b"scene_packer_session=x"),
            ],
            {},
        ),
        ([(b"cookie", b"scene_packer_session=dG9r.ZW4; scene_packer_session=x")], {}),
        ([(b"cookie", b'scene_packer_session="dG9r.ZW4"')], {}),
        ([(b"cookie", b'other="a;scene_packer_session=dG9r.ZW4;b"')], {}),
        ([(b"cookie", b"scene_packer_session=" + LONG.encode())], {}),
        ([(b"cookie", b"xscene_packer_session=dG9r.ZW4")], {}),
        ([(b"cookie", b"scene_packer_session=dG9r.ZW4"), (b"content-length", b"3")], {}),
        ([(b"cookie", b"scene_packer_session=dG9r.ZW4"), (b"transfer-encoding", b"chunked")], {}),
        ([(b"cookie", b"scene_packer_session=dG9r.ZW4")], {"method": "HEAD"}),
        ([(b"cookie", b"scene_packer_session=dG9r.ZW4")], {"path": PATH + "/"}),
        ([(b"cookie", b"scene_packer_session=dG9r.ZW4")], {"root_path": "/app"}),
    ],
    ids=[
        "no copy",
        "the cookie in two headers",
        "the cookie twice",
        "quoted",
        "inside another's quoted value",
        "too long",
        "another name",
        "a body",
        "a chunked body",
        "HEAD",
        "another path",
        "mounted under a root path",
    ],
)
async def test_the_edge_leaves_anything_else_to_quart(
    headers: list[tuple[bytes, bytes]], scope: dict[str, Any]
) -> None:
    recorder = await _through_edge(headers, **scope)
    assert recorder.sent == [] and len(recorder.passed_on) == 1


def test_past_its_memory_of_endings_it_refuses_fills_in_flight_and_keeps_its_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.auth.signed_in.MAX_HEARD", 3)
    local, _ = _local()
    _fill(local, "YQ", _copy("s1", 1))
    in_flight = {SCOPE_KEY: ("Yg", local.generation)}
    for n in range(4):  # endings of other sessions, past what it remembers one by one
        local.heard(f"session other{n}")
    local.remember(in_flight, "Yg", _copy("s2", 2))
    assert local.answer("YQ") is not None and local.answer("Yg") is None
