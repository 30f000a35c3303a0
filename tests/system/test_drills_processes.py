"""The drills of monitoring/drills/staging.toml on the service's own processes and machine
(killed workers, a filling disk) and on the alerting path (Alertmanager stopped), run by
monitoring/drills/run.py against a real stack (tests/support/drills.py): for each, one page of
the expected cause with its runbook link, resolved, and nothing paging after recovery."""

from __future__ import annotations

from pathlib import Path

from tests.support.drills import PROCESS_DRILLS, run_drills


def test_each_process_drill_pages_once_for_its_cause_and_never_after(
    tmp_path: Path, postgres_url: str
) -> None:
    run_drills(tmp_path, postgres_url, PROCESS_DRILLS)
