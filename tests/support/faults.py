"""Real faults: on loopback, a proxy that can be cut, hung and restored, a server that hangs; on
disk, a small file system that fills up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.server import free_port
from tests.support.tools import missing


class TcpProxy:
    """Forwards 127.0.0.1:port to a real service; `cut()` refuses and drops connections,
    `hang()` leaves the open ones open and silent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.hung = False
        self._clients: set[asyncio.StreamWriter] = set()  # not yet closed on the client's side
        self._hung_open: set[asyncio.StreamWriter] = set()

    @property
    def open_since_hang(self) -> int:
        """How many of the connections open at `hang()` their clients have not closed yet."""
        return len(self._hung_open)

    def hang(self) -> int:
        """From now on nothing more passes either way on the open connections (a server stuck
        mid-query, or a network path that went dark); they stay open. How many there are."""
        self.hung = True
        self._hung_open = set(self._clients)
        return len(self._hung_open)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, upstream_writer})
        self._clients.add(writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer, client=writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )
        self._writers.difference_update({writer, upstream_writer})

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter | None = None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if not self.hung:
                    writer.write(data)
                    await writer.drain()
        finally:
            if client is not None:  # the client closed its side
                self._clients.discard(client)
                self._hung_open.discard(client)
            with contextlib.suppress(Exception):
                writer.close()


class HungServer:
    """Accepts TCP connections and never answers: a dependency that is up but stuck."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    @property
    def connections(self) -> int:
        """How many connections it has accepted (and left hanging)."""
        return len(self._writers)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _handle(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path`: a disk that really fills up."""
    if os.geteuid() != 0:
        missing("root, to mount a small tmpfs (run scripts/test as root)")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill(path: Path) -> None:
    """Write `path/filler` until the disk has no room left; removing it makes room again."""
    with (path / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:  # until ENOSPC
            filler.write(b"\0" * 4096)
