"""Headless Chromium (Debian's package) driven over the DevTools protocol, for browser tests."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.support.server import stop
from tests.support.tools import require

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--remote-debugging-port=0",
]


class Page:
    """One tab, attached with a flat session; `send` waits for the command's answer."""

    def __init__(self, socket: ClientConnection, session_id: str) -> None:
        self.socket = socket
        self.session_id = session_id
        self._ids = itertools.count(1000)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return _call(self.socket, next(self._ids), method, params, self.session_id, self.events)

    def wait_for(self, method: str, seconds: float) -> dict[str, Any]:
        """The next `method` event of this tab (events of other tabs are dropped)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event.get("sessionId") != self.session_id:
                    self.events.remove(event)
                elif event.get("method") == method:
                    self.events.remove(event)
                    return event
            try:
                self.events.append(json.loads(self.socket.recv(timeout=0.5)))
            except TimeoutError:
                continue
        raise AssertionError(f"no {method} within {seconds} s")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def load(self, url: str) -> None:
        """Navigate and wait for the page's load event."""
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired", 30)

    def click(self, selector: str) -> None:
        """A real (trusted) mouse click in the middle of the element, held for 0.1 s."""
        box = self.evaluate(
            f"(({{x, y, width, height}}) => ({{x, y, width, height}}))"
            f"(document.querySelector({json.dumps(selector)}).getBoundingClientRect())"
        )
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)
            # Held as a person would, past the next frame. Pressed and released within one
            # frame, Chromium reports the pointerdown as the interaction, and without a target.
            time.sleep(0.1)


@contextmanager
def chromium(tmp_path: Path) -> Iterator[ClientConnection]:
    command = [
        require("chromium"),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'chromium'}",
        "about:blank",
    ]
    log = tmp_path / "chromium.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stderr=sink, stdout=sink, start_new_session=True)
    try:
        url = _devtools_url(log, process)
        with connect(url, max_size=None, open_timeout=30) as socket:
            yield socket
            # The browser may close the socket before it answers.
            with suppress(Exception):
                _call(socket, 1, "Browser.close", {}, None, [])
    finally:
        stop(process)


def open_page(socket: ClientConnection, url: str) -> Page:
    """A new tab; it starts loading `url` (about:blank: set the tab up, then `load`)."""
    events: list[dict[str, Any]] = []
    target = _call(socket, 2, "Target.createTarget", {"url": "about:blank"}, None, events)
    attached = _call(
        socket, 3, "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
        None, events,
    )  # fmt: skip
    page = Page(socket, attached["sessionId"])
    page.send("Page.enable")
    if url != "about:blank":
        page.send("Page.navigate", url=url)
    return page


def _call(
    socket: ClientConnection,
    call_id: int,
    method: str,
    params: dict[str, Any],
    session_id: str | None,
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    message: dict[str, Any] = {"id": call_id, "method": method, "params": params}
    if session_id is not None:
        message["sessionId"] = session_id
    socket.send(json.dumps(message))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = json.loads(socket.recv(timeout=30))
        if reply.get("id") == call_id:
            if "error" in reply:
                raise AssertionError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply.get("result", {})
            return result
        events.append(reply)
    raise AssertionError(f"{method}: no answer")


def _devtools_url(log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"DevTools listening on (ws://\S+)", log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"chromium did not start:\n{log.read_text(errors='replace')}")
