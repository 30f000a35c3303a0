"""The memory reading: a container's cgroup (v2 or v1) when it limits the service, the host's
otherwise. Cgroup files are laid out in a temporary directory as the kernel shows them."""

from __future__ import annotations

from pathlib import Path

import psutil

from service.health.memory import memory_use

GIB = 1024**3


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _proc(tmp_path: Path, group: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(f"0::{group}\n")
    return path


def test_cgroup_v2_limit_counts_the_working_set(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _files(
        root,
        {
            "cgroup.controllers": "cpu memory pids",
            "app/memory.max": str(GIB),
            "app/memory.current": str(GIB // 2 + 100 * 1024**2),
            "app/memory.stat": "anon 1\ninactive_file 104857600\nactive_file 5\n",
        },
    )
    use = memory_use(root, _proc(tmp_path, "/app"))
    assert (use.source, use.limit_bytes, use.used_bytes) == ("cgroup", GIB, GIB // 2)
    assert use.used_ratio == 0.5


def test_cgroup_v2_limit_set_on_a_parent_group(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _files(
        root,
        {
            "cgroup.controllers": "memory",
            "pod/memory.max": str(2 * GIB),
            "pod/memory.current": str(GIB),
            "pod/app/memory.max": "max",
            "pod/app/memory.current": str(GIB // 4),
        },
    )
    use = memory_use(root, _proc(tmp_path, "/pod/app"))
    assert (use.source, use.limit_bytes, use.used_bytes) == ("cgroup", 2 * GIB, GIB)


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _files(
        root,
        {
            "memory/memory.limit_in_bytes": str(GIB),
            "memory/memory.usage_in_bytes": str(GIB // 4),
            "memory/memory.stat": "cache 9\ntotal_inactive_file 0\n",
        },
    )
    use = memory_use(root, _proc(tmp_path, "/"))
    assert (use.source, use.limit_bytes, use.used_bytes) == ("cgroup", GIB, GIB // 4)


def test_no_limit_reads_the_host(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _files(
        root,
        {
            "cgroup.controllers": "memory",
            "app/memory.max": "max",
            "app/memory.current": str(GIB),
            # cgroup v1 reports "no limit" as a huge number: not a limit either.
            "memory/memory.limit_in_bytes": "9223372036854771712",
            "memory/memory.usage_in_bytes": str(GIB),
        },
    )
    use = memory_use(root, _proc(tmp_path, "/app"))
    assert use.source == "host"
    assert use.limit_bytes == psutil.virtual_memory().total
    assert memory_use(tmp_path / "absent", tmp_path / "absent-proc").source == "host"


def test_this_machine_reads_without_error() -> None:
    use = memory_use()
    assert use.source in ("cgroup", "host")
    assert 0 < use.used_ratio < 1
