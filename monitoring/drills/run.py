#!/usr/bin/env python3
"""Drills as code: cause each fault of a plan on a staging stack and check what pages.

    python3 monitoring/drills/run.py [--plan FILE] [--listen HOST:PORT] [--only NAME]...
                                     [--json FILE]

For each drill of the plan (monitoring/drills/staging.toml by default), in order:

1. wait until nothing fires in Alertmanager but the Watchdog (the stack is quiet);
2. start the fault (`start`, a command run once; `during`, a command kept running until the
   fault ends);
3. wait for the expected alert's page (a firing notification to a paging receiver), or, for a
   drill that expects none, hold the fault `hold` seconds; an alert Alertmanager cannot deliver
   while it is itself the fault (`page_after_stop`) is awaited once the fault has ended;
4. end the fault (`stop`, or the `during` command terminated) and wait for the alert's resolved
   notification;
5. keep listening `quiet_after` seconds: the symptoms' windows still hold the outage then, and
   nothing may page.

Notifications come to this program itself: it listens where the shipped alertmanager.yml's
placeholder receivers point (127.0.0.1:9095), so a staging Alertmanager with that file, or with
its webhook receivers pointed here, reports every page. One table is printed; the exit status is
0 when every drill passed (one page, of the expected cause, with a runbook link, resolved, and no
page after recovery; none at all for a drill that expects none), 1 otherwise, 2 for a bad plan.

Standard library only: it runs wherever Python 3.11 does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POLL_SECONDS = 0.5
QUIET_ALERTS = {"Watchdog"}


@dataclass
class Stack:
    alertmanager: str
    prometheus: str | None  # when given, its firing alerts count too before a drill starts
    paging_receivers: list[str]
    page_within: float  # seconds a drill waits for its page
    resolve_within: float  # and for its resolution
    quiet_after: float  # and listens after it
    settle_within: float  # for the stack to be quiet before a drill
    environment: dict[str, str]  # given to every command


@dataclass
class Drill:
    name: str
    expect: str | None  # the alert that must page; None: nothing may page
    start: str | None = None
    stop: str | None = None
    during: str | None = None
    hold: float = 0.0  # seconds the fault lasts when nothing is awaited meanwhile
    page_after_stop: bool = False


@dataclass
class Notification:
    at: float
    receiver: str
    status: str
    alerts: list[dict[str, Any]]


@dataclass
class Result:
    drill: str
    expected: str
    paged: list[str] = field(default_factory=list)  # alert names, once per page
    seconds_to_page: float | None = None
    runbook: str | None = None
    seconds_to_resolve: float | None = None
    paged_after_recovery: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def passed(self) -> bool:
        if self.problem is not None:
            return False
        if self.expected == "nothing":
            return not self.paged and not self.paged_after_recovery
        return (
            self.paged == [self.expected]
            and bool(self.runbook)
            and self.seconds_to_resolve is not None
            and not self.paged_after_recovery
        )


class Inbox:
    """Alertmanager's webhook notifications, as they arrive."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    payload = json.loads(body)
                    note = Notification(
                        time.monotonic(), payload["receiver"], payload["status"], payload["alerts"]
                    )
                except (ValueError, KeyError, TypeError):
                    self.send_response(400)
                else:
                    with inbox._lock:
                        inbox.notifications.append(note)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, int(port)), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def since(self, mark: int) -> list[Notification]:
        with self._lock:
            return self.notifications[mark:]

    def mark(self) -> int:
        with self._lock:
            return len(self.notifications)


class Fault:
    """A drill's fault: its commands, run in a shell with the plan's environment."""

    def __init__(self, drill: Drill, environment: dict[str, str]) -> None:
        self.drill = drill
        self.environment = {**os.environ, **environment}
        self._during: subprocess.Popen[bytes] | None = None

    def begin(self) -> None:
        if self.drill.start:
            self._run(self.drill.start)
        if self.drill.during:
            self._during = subprocess.Popen(
                ["sh", "-c", self.drill.during], env=self.environment, start_new_session=True
            )

    def check(self) -> None:
        """A `during` command that has exited is not causing its fault any more."""
        if self._during is not None and self._during.poll() is not None:
            raise RuntimeError(f"`{self.drill.during}` exited {self._during.returncode}")

    def end(self) -> None:
        if self._during is not None:
            if self._during.poll() is None:
                os.killpg(self._during.pid, signal.SIGTERM)
            try:
                self._during.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._during.pid, signal.SIGKILL)
                self._during.wait(timeout=30)
            self._during = None
        if self.drill.stop:
            self._run(self.drill.stop)

    def _run(self, command: str) -> None:
        done = subprocess.run(["sh", "-c", command], env=self.environment, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"`{command}` exited {done.returncode}")


def firing_now(stack: Stack) -> list[str]:
    """Alerts Alertmanager holds as active (not silenced or inhibited) and, when the plan names
    Prometheus, alerts firing or pending there (not delivered yet, or about to fire); but the
    Watchdog."""
    url = stack.alertmanager.rstrip("/") + "/api/v2/alerts?silenced=false&inhibited=false"
    with urllib.request.urlopen(url, timeout=10) as answer:
        alerts = json.load(answer)
    names = {a["labels"].get("alertname", "") for a in alerts if a["status"]["state"] == "active"}
    if stack.prometheus:
        with urllib.request.urlopen(
            stack.prometheus.rstrip("/") + "/api/v1/alerts", timeout=10
        ) as answer:
            rules = json.load(answer)["data"]["alerts"]
        # Pending too: an alert about to fire would page in the middle of the next drill.
        names |= {a["labels"].get("alertname", "") for a in rules if a["state"] != "inactive"}
    return sorted(names - QUIET_ALERTS)


def run_drill(drill: Drill, stack: Stack, inbox: Inbox) -> Result:
    result = Result(drill.name, drill.expect or "nothing")
    deadline = time.monotonic() + stack.settle_within
    while still := _quietly(firing_now, stack):
        if time.monotonic() > deadline:
            result.problem = f"not run: the stack was not quiet ({', '.join(still)})"
            return result
        time.sleep(POLL_SECONDS)
    fault = Fault(drill, stack.environment)
    mark = inbox.mark()
    began = time.monotonic()
    try:
        fault.begin()
        if drill.expect is None or drill.page_after_stop:
            time.sleep(drill.hold)
        elif _wait_for(inbox, mark, stack, drill.expect, "firing", stack.page_within) is None:
            result.problem = f"no {drill.expect} within {stack.page_within:g} s"
        fault.check()
    except RuntimeError as error:
        result.problem = str(error)
    finally:
        try:
            fault.end()
        except RuntimeError as error:
            result.problem = result.problem or f"could not end the fault: {error}"
    ended = time.monotonic()
    if drill.expect is not None and result.problem is None:
        if drill.page_after_stop and (
            _wait_for(inbox, mark, stack, drill.expect, "firing", stack.page_within) is None
        ):
            result.problem = f"no {drill.expect} within {stack.page_within:g} s of the fault's end"
        resolved = _wait_for(inbox, mark, stack, drill.expect, "resolved", stack.resolve_within)
        if resolved is not None:
            result.seconds_to_resolve = round(max(0.0, resolved - ended), 1)
        elif result.problem is None:
            result.problem = f"not resolved within {stack.resolve_within:g} s of the fault's end"
    # The symptoms' windows still hold the outage: nothing may page while they pass.
    recovered = inbox.mark()
    time.sleep(stack.quiet_after)
    for note, alert in _pages(inbox.since(mark), stack):
        name = alert["labels"].get("alertname", "?")
        if note.status == "firing" and alert["status"] == "firing":
            if result.seconds_to_page is None and name == drill.expect:
                result.seconds_to_page = round(note.at - began, 1)
                result.runbook = alert.get("annotations", {}).get("runbook_url")
            result.paged.append(name)
    for note, alert in _pages(inbox.since(recovered), stack):
        if note.status == "firing" and alert["status"] == "firing":
            result.paged_after_recovery.append(alert["labels"].get("alertname", "?"))
    return result


def _pages(notes: list[Notification], stack: Stack) -> list[tuple[Notification, dict[str, Any]]]:
    return [
        (note, alert)
        for note in notes
        if note.receiver in stack.paging_receivers
        for alert in note.alerts
        if alert["labels"].get("alertname") not in QUIET_ALERTS
    ]


def _wait_for(
    inbox: Inbox, mark: int, stack: Stack, alertname: str, status: str, within: float
) -> float | None:
    """When a notification said `alertname` is `status` (to any receiver); None if it did not."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for note in inbox.since(mark):
            for alert in note.alerts:
                if alert["labels"].get("alertname") == alertname and alert["status"] == status:
                    return note.at
        time.sleep(POLL_SECONDS)
    return None


def _quietly(check: Any, stack: Stack) -> list[str]:
    try:
        found: list[str] = check(stack)
    except OSError as error:  # Alertmanager not answering is not quiet
        return [f"Alertmanager: {error}"]
    return found


def load_plan(path: Path) -> tuple[Stack, list[Drill]]:
    plan = tomllib.loads(path.read_text())
    given = plan["stack"]
    stack = Stack(
        alertmanager=given["alertmanager"],
        prometheus=given.get("prometheus"),
        paging_receivers=list(given.get("paging_receivers", ["pager"])),
        page_within=float(given.get("page_within", 600)),
        resolve_within=float(given.get("resolve_within", 600)),
        quiet_after=float(given.get("quiet_after", 660)),
        settle_within=float(given.get("settle_within", 900)),
        environment={k: str(v) for k, v in given.get("environment", {}).items()},
    )
    drills = []
    for entry in plan["drill"]:
        unknown = set(entry) - {f for f in Drill.__dataclass_fields__}
        if unknown:
            raise ValueError(f"drill {entry.get('name')!r}: unknown keys {sorted(unknown)}")
        drill = Drill(**{**entry, "expect": entry.get("expect") or None})
        if not (drill.start or drill.during):
            raise ValueError(f"drill {drill.name!r}: give `start` or `during`")
        if (drill.expect is None or drill.page_after_stop) and drill.hold <= 0:
            raise ValueError(f"drill {drill.name!r}: give `hold`, how long the fault lasts")
        drills.append(drill)
    return stack, drills


def table(results: list[Result]) -> str:
    rows = [
        "| drill | expected | paged | first page s | runbook | resolved s | after recovery "
        "| verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rows.append(
            f"| {r.drill} | {r.expected} | {', '.join(r.paged) or 'nothing'} | "
            f"{_figure(r.seconds_to_page)} | {'yes' if r.runbook else '-'} | "
            f"{_figure(r.seconds_to_resolve)} | {', '.join(r.paged_after_recovery) or 'nothing'} | "
            f"{'pass' if r.passed else 'FAIL' + (f': {r.problem}' if r.problem else '')} |"
        )
    return "\n".join(rows)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plan", type=Path, default=HERE / "staging.toml")
    parser.add_argument("--listen", default="127.0.0.1:9095", help="where Alertmanager sends")
    parser.add_argument("--only", action="append", default=[], help="a drill's name (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        stack, drills = load_plan(args.plan)
    except (OSError, ValueError, KeyError, TypeError, tomllib.TOMLDecodeError) as error:
        print(f"drills: bad plan {args.plan}: {error}", file=sys.stderr)
        return 2
    if args.only:
        unknown = set(args.only) - {d.name for d in drills}
        if unknown:
            print(f"drills: no drill named {sorted(unknown)}", file=sys.stderr)
            return 2
        drills = [d for d in drills if d.name in args.only]
    inbox = Inbox(args.listen)
    results = []
    for drill in drills:
        print(f"drill: {drill.name} (expects {drill.expect or 'no page'})", flush=True)
        results.append(run_drill(drill, stack, inbox))
    print(table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "passed": r.passed} for r in results]))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
