"""The drills of monitoring/drills/staging.toml that cut, hang or lock a dependency, and the slow
clients', run by monitoring/drills/run.py against a real stack (tests/support/drills.py): for
each, one page of the expected cause with its runbook link (none for slow clients), resolved,
and nothing paging after recovery. The other half: test_drills_processes.py (two files, so that
they run side by side)."""

from __future__ import annotations

from pathlib import Path

from tests.support.drills import DEPENDENCY_DRILLS, PROCESS_DRILLS, run_drills, shipped_names


def test_the_two_halves_are_every_drill_of_the_plan() -> None:
    assert sorted(DEPENDENCY_DRILLS + PROCESS_DRILLS) == sorted(shipped_names())


def test_each_dependency_and_client_drill_pages_once_for_its_cause_and_never_after(
    tmp_path: Path, postgres_url: str
) -> None:
    run_drills(tmp_path, postgres_url, DEPENDENCY_DRILLS)
